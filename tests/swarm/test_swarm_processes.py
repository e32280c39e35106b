"""End to end: real peer processes on 127.0.0.1, real SIGKILL, a joiner, a resync."""

from __future__ import annotations

import signal

import pytest



def hashes_by_round(report: dict) -> dict[int, str]:
    return {row["round"]: row["hash"] for row in report["state_hashes"]}

ROUNDS = 10
FAST = {"GOSSAMER_TEST_STEP_SLEEP": "0.02"}


@pytest.mark.timeout(300)
def test_crash_mid_collective_and_join_mid_run(procs):
    port = procs.coordinator("--min-peers", "4")
    common = ["--inner-steps", "5", "--rounds", str(ROUNDS)]
    for i in range(4):
        env = dict(FAST)
        if i == 3:
            env["GOSSAMER_TEST_KILL_IN_ROUND"] = "2"  # SIGKILLs itself after its first reduce-scatter chunk
        procs.peer(f"p{i}", port, *common, env=env)
    procs.peer("joiner", port, *common, env={**FAST, "GOSSAMER_TEST_JOIN_AT_ROUND": "4"})

    assert procs.wait("p3", 240) == -signal.SIGKILL
    for name in ("p0", "p1", "p2", "joiner"):
        assert procs.wait(name, 240) == 0, procs.log(name)

    survivors = [procs.report(f"p{i}") for i in range(3)]
    joiner = procs.report("joiner")
    for rep in survivors:
        assert rep["rounds_completed"] == ROUNDS
        assert sorted(hashes_by_round(rep)) == list(range(ROUNDS))
    reference = hashes_by_round(survivors[0])
    for rep in survivors[1:]:
        assert hashes_by_round(rep) == reference  # bit parity in every round
    # the joiner matches from its first round on
    first = joiner["joined_round"]
    assert 4 <= first < ROUNDS
    assert hashes_by_round(joiner) == {r: reference[r] for r in range(first, ROUNDS)}
    # the crash aborted round 2 and the survivors retried it
    aborts = procs.events("abort")
    assert any(ev["round"] == 2 for ev in aborts), procs.events()
    assert any(ev["event"] == "lost" for ev in procs.events())
    commit2 = [ev for ev in procs.events("commit") if ev["round"] == 2]
    assert len(commit2) == 1 and len(commit2[0]["group"]) == 3
    assert not procs.events("resync")
    groups = {ev["round"]: len(ev["group"]) for ev in procs.events("commit")}
    assert groups[0] == 4 and groups[ROUNDS - 1] == 4  # three survivors plus the joiner


@pytest.mark.timeout(240)
def test_corrupted_peer_is_resynced_and_logged_and_sigterm_leaves_cleanly(procs):
    port = procs.coordinator("--min-peers", "3")
    for i in range(3):
        env = dict(FAST)
        if i == 1:
            env["GOSSAMER_TEST_CORRUPT_ROUND"] = "2"
        rounds = ["--rounds", "6"] if i < 2 else []  # p2 trains on until SIGTERM
        procs.peer(f"p{i}", port, "--inner-steps", "5", *rounds, env=env)
    for i in range(2):
        assert procs.wait(f"p{i}", 200) == 0, procs.log(f"p{i}")
    procs.wait_event(lambda ev: ev["event"] == "commit" and ev["round"] >= 8, 60)  # p2 alone now
    procs.procs["p2"].send_signal(signal.SIGTERM)
    assert procs.wait("p2", 60) == 0, procs.log("p2")

    reports = [procs.report(f"p{i}") for i in range(3)]
    ref = hashes_by_round(reports[0])
    assert sorted(ref) == list(range(6))
    assert hashes_by_round(reports[1]) == ref
    last = hashes_by_round(reports[2])
    assert {r: last[r] for r in range(6)} == ref and max(last) >= 8
    assert reports[1]["resyncs"] == 1 and reports[0]["resyncs"] == 0
    resyncs = procs.events("resync")
    assert len(resyncs) == 1
    assert resyncs[0]["peer"] == reports[1]["peer_id"] and resyncs[0]["round"] == 2
    assert resyncs[0]["hash"] != resyncs[0]["agreed"] == ref[2]
    assert "WARNING gossamer.swarm.coordinator: resync" in (procs.root / "coordinator.err").read_text()
    left = [ev for ev in procs.events("leave") if ev["peer"] == reports[2]["peer_id"]]
    assert left and left[0]["reason"] == "left"  # a clean leave, not a lost connection


@pytest.mark.timeout(240)
def test_stalled_peer_aborts_the_collective_and_is_dropped(procs):
    port = procs.coordinator("--min-peers", "3", "--heartbeat-timeout", "3")
    common = ["--inner-steps", "5", "--rounds", "5"]
    for i in range(3):
        env = dict(FAST)
        if i == 2:  # stops itself (SIGSTOP) after its first reduce-scatter chunk of round 1
            env.update(GOSSAMER_TEST_KILL_IN_ROUND="1", GOSSAMER_TEST_KILL_SIGNAL="SIGSTOP")
        procs.peer(f"p{i}", port, *common, env=env)
    for i in range(2):
        assert procs.wait(f"p{i}", 200) == 0, procs.log(f"p{i}")
    reports = [procs.report(f"p{i}") for i in range(2)]
    assert hashes_by_round(reports[0]) == hashes_by_round(reports[1])
    assert sorted(hashes_by_round(reports[0])) == list(range(5))
    aborts = [ev for ev in procs.events("abort") if ev["round"] == 1]
    assert aborts and "deadline" in aborts[0]["reason"]  # the link-derived deadline fired, not a hang
    lost = procs.events("lost")
    assert any("no heartbeat" in ev["reason"] for ev in lost)
    commit1 = [ev for ev in procs.events("commit") if ev["round"] == 1]
    assert len(commit1) == 1 and len(commit1[0]["group"]) == 2


@pytest.mark.timeout(180)
def test_peer_started_before_its_coordinator_waits_for_it(procs):
    """Issue 10.9: a peer started while its coordinator is down used to exit at
    once, while running peers retry for 60 s. Now both have the same patience."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs.peer("early", port, "--inner-steps", "3", "--rounds", "2", env=FAST)
    time.sleep(4)
    assert procs.procs["early"].poll() is None, procs.log("early")
    procs.coordinator("--listen", f"127.0.0.1:{port}")
    assert procs.wait("early", 120) == 0
    assert procs.report("early")["rounds_completed"] == 2


@pytest.mark.timeout(180)
def test_save_writes_the_trained_model_loadable_with_plain_torch(procs):
    """Issue 13.5: --save PATH writes the swarm's shared parameters as safetensors; plain torch
    loads them into a fresh model, and every peer saved the same model."""
    import torch
    from safetensors.torch import load_file

    from gossamer.tasks import make_task

    port = procs.coordinator("--min-peers", "2")
    out = [procs.root / f"model{i}.safetensors" for i in range(2)]
    for i in range(2):
        procs.peer(f"p{i}", port, "--inner-steps", "5", "--rounds", "3", "--save", str(out[i]))
    for i in range(2):
        assert procs.wait(f"p{i}", 150) == 0, procs.log(f"p{i}")
    task = make_task("digits")
    fresh = task.make_model(0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(load_file(str(out[0])))  # strict: every key, every shape
    saved = [load_file(str(p)) for p in out]
    assert saved[0].keys() == saved[1].keys() == before.keys()
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])  # bit parity
    assert any(not torch.equal(before[k], fresh.state_dict()[k]) for k in before)  # it trained

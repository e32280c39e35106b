"""Churn soak: random SIGKILLs and restarts while the swarm trains a fixed
number of rounds. Pass criteria: every peer process ends (no hang), and every
round that two reports share has one hash (no divergence)."""

from __future__ import annotations

import random
import signal
import time

import pytest

ROUNDS = 30
PEERS = 5


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_churn_soak(procs):
    rng = random.Random(1234)  # the test's own generator; never the global one
    port = procs.coordinator("--min-peers", "3", "--heartbeat-timeout", "5")
    env = {"GOSSAMER_TEST_STEP_SLEEP": "0.2"}
    args = ["--inner-steps", "5", "--rounds", str(ROUNDS)]
    incarnation = {i: 0 for i in range(PEERS)}

    def start(i: int, extra: dict[str, str] | None = None) -> None:
        name = f"p{i}-{incarnation[i]}"
        # same key file on every restart: the peer comes back under the same identity
        procs.start(name, ["peer", "--coordinator", f"127.0.0.1:{port}", "--task", "digits", "--algorithm", "diloco",
                           "--key", str(procs.root / f"p{i}.pem"), "--json", str(procs.root / f"{name}.json"), *args],
                    {**env, **(extra or {})})

    for i in range(PEERS):
        # p1's first life also dies in the middle of an all-reduce (round 4), besides the random kills
        start(i, {"GOSSAMER_TEST_KILL_IN_ROUND": "4"} if i == 1 else None)
    procs.wait_event(lambda ev: ev["event"] == "commit" and ev["round"] >= 2, 120)
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 4 and time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 3.0))
        commits = procs.events("commit")
        if commits and commits[-1]["round"] >= ROUNDS - 12:
            break
        for i in range(PEERS):  # restart whoever died by its own hook
            if procs.procs[f"p{i}-{incarnation[i]}"].poll() == -signal.SIGKILL:
                incarnation[i] += 1
                start(i)
        live = [i for i in range(PEERS) if procs.procs[f"p{i}-{incarnation[i]}"].poll() is None]
        if len(live) <= 2:
            continue
        victim = rng.choice(live)
        procs.procs[f"p{victim}-{incarnation[victim]}"].send_signal(signal.SIGKILL)
        kills += 1
        incarnation[victim] += 1
        start(victim)
    assert kills >= 2, "the swarm finished before the soak could kill anyone"
    assert any(ev["round"] == 4 for ev in procs.events("abort"))  # the mid-collective death was survived

    finished = []
    for name, proc in list(procs.procs.items()):
        if name == "coordinator":
            continue
        code = procs.wait(name, 150)  # 0 hangs: every process ends
        if code == 0:
            finished.append(name)
        else:
            assert code == -signal.SIGKILL, f"{name} exited with {code}: {procs.log(name)}"
    by_round: dict[int, set[str]] = {}
    for name in finished:
        for row in procs.report(name)["state_hashes"]:
            by_round.setdefault(row["round"], set()).add(row["hash"])
    divergent = {r: h for r, h in by_round.items() if len(h) > 1}
    assert not divergent  # 0 divergent hashes
    assert sorted(by_round) == list(range(ROUNDS))
    rejoined = [n for n in finished if not n.endswith("-0") and procs.report(n)["rounds_completed"] > 0]
    print(f"soak: {kills} kills, restarted peers that trained again: {rejoined}, "
          f"aborts: {len(procs.events('abort'))}")
    commits = procs.events("commit")
    assert [ev["round"] for ev in commits] == list(range(ROUNDS))  # each round committed exactly once
    for ev in commits:
        assert by_round[ev["round"]] == {ev["hash"]}

"""Committed work is never lost (issue 10.1 and 10.5): a coordinator restart,
an empty swarm, a whole swarm that died and resumes from checkpoints, and a
configuration that belongs to the members present. Real processes and real
SIGKILLs where the fault is a process dying."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from gossamer.errors import ConfigError
from gossamer.swarm import Coordinator, Peer
from gossamer.tasks import make_task
from gossamer.transport.identity import Identity

FAST = {"GOSSAMER_TEST_STEP_SLEEP": "0.02"}


def rounds_of(report: dict) -> list[int]:
    return [row["round"] for row in report["state_hashes"]]


def hashes(report: dict) -> dict[int, str]:
    return {row["round"]: row["hash"] for row in report["state_hashes"]}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("durable", [False, True])
def test_coordinator_sigkill_and_restart_resumes_where_the_swarm_was(procs, durable):
    """Coordinator on a fixed port, 2 diloco peers. After round 6 commits the
    coordinator is SIGKILLed and restarted on the same port and key. The peers
    used to restart at round 0 from their initial weights (rounds 0..6 twice).
    Now they resume at round 7: from the restarted coordinator's SQLite state
    (durable) or by adoption of the peers' committed (round, hash)."""
    state = ["--state", str(procs.root / "coord.sqlite")] if durable else []
    port = procs.coordinator("--min-peers", "2", *state)
    R = 14
    for i in range(2):
        procs.peer(f"p{i}", port, "--inner-steps", "5", "--rounds", str(R), env=FAST)
    procs.wait_event(lambda ev: ev["event"] == "commit" and ev["round"] == 6, 120)
    procs.procs["coordinator"].send_signal(signal.SIGKILL)
    procs.procs["coordinator"].wait(10)
    procs.coordinator("--listen", f"127.0.0.1:{port}", "--min-peers", "2", *state)
    for i in range(2):
        assert procs.wait(f"p{i}", 200) == 0, procs.log(f"p{i}")
    reps = [procs.report(f"p{i}") for i in range(2)]
    for rep in reps:
        assert rounds_of(rep) == list(range(R)), rounds_of(rep)  # every round exactly once, none redone
        assert rep["rejoins"] >= 1
    assert hashes(reps[0]) == hashes(reps[1])
    commits = [ev["round"] for ev in procs.events("commit")]
    if durable:
        assert sorted(commits) == list(range(R))  # no round committed twice across the restart
    else:
        # without --state, a round the dead coordinator decided but no peer heard of is redone (at most that one)
        assert sorted(set(commits)) == list(range(R)) and len(commits) - len(set(commits)) <= 1
        assert procs.events("adopt")


@pytest.mark.timeout(240)
def test_whole_swarm_dies_and_resumes_from_checkpoints_bit_identical(procs):
    """Every process SIGKILLed after round 5; a fresh coordinator (no state) and
    the peers restarted with --resume: they continue from their checkpoint's
    round, from exactly the checkpointed state, and never redo a round."""
    port = procs.coordinator("--min-peers", "2")
    ck = [procs.root / f"ck{i}" for i in range(2)]
    R = 12
    for i in range(2):
        procs.peer(f"p{i}", port, "--inner-steps", "5", "--rounds", str(R), "--checkpoint", str(ck[i]),
                   "--checkpoint-every", "1", env=FAST)
    procs.wait_event(lambda ev: ev["event"] == "commit" and ev["round"] == 5, 120)
    for name in ("p0", "p1", "coordinator"):
        procs.procs[name].send_signal(signal.SIGKILL)
        procs.procs[name].wait(10)
    import json

    saved = [json.loads((d / "state.json").read_text())["meta"] for d in ck]
    committed_before = max(ev["round"] for ev in procs.events("commit"))
    procs.events_path.rename(procs.root / "events-before.jsonl")
    (procs.root / "coordinator.out").rename(procs.root / "coordinator-before.out")
    port = procs.coordinator("--min-peers", "2")
    # the newest checkpoint resumes first, the other once the fresh coordinator adopted it: a
    # coordinator without --state adopts what the first peer brings, and when the older peer came
    # first and was already a member, the newer one was served the older state (a known limitation,
    # see the issue 12 note; it flaked a 2-core CI run that started the newer peer second)
    newest_first = sorted(range(2), key=lambda i: -saved[i]["round"])
    for k, i in enumerate(newest_first):
        (procs.root / f"p{i}.json").unlink(missing_ok=True)
        procs.peer(f"p{i}", port, "--inner-steps", "5", "--rounds", str(R), "--resume", str(ck[i]),
                   "--checkpoint", str(ck[i]), env=FAST)
        if k == 0:
            procs.wait_event(lambda ev: ev["event"] == "adopt", 120)
    for i in range(2):
        assert procs.wait(f"p{i}", 200) == 0, procs.log(f"p{i}")
    after = [procs.report(f"p{i}") for i in range(2)]
    start = max(m["round"] for m in saved) + 1
    for i in range(2):
        assert after[i]["resumed_round"] == saved[i]["round"]
        assert rounds_of(after[i]) == list(range(start, R))
    # a checkpoint is written right after its round commits: a SIGKILL in between can cost
    # that one round (redone from the checkpoint before it), never more, never an older state
    assert committed_before <= start <= committed_before + 1
    assert hashes(after[0]) == hashes(after[1])
    adopted = procs.events("adopt")
    assert adopted and adopted[0]["hash"] in {m["hash"] for m in saved}


@pytest.mark.timeout(120)
def test_empty_swarm_refuses_fresh_weights_and_a_typo_does_not_lock_the_configuration():
    """When every peer has left, a fresh peer used to be admitted at the old
    round with fresh, unchecked weights; and the first peer's configuration
    (even a typo, even after it left) locked out every correct peer."""
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "empty", "127.0.0.1", 0, min_peers=2)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            # a typo joins first, alone (min_peers=2 holds it at the barrier), then leaves
            typo = Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="empty", identity=Identity.generate(),
                        algorithm="diloco", inner_steps=7)
            t = asyncio.ensure_future(typo.run(batches(task.shard(0, 2, seed=0)), rounds=3))
            while not coord.members:
                await asyncio.sleep(0.02)
            typo.request_stop()
            await t
            # the correct configuration now trains: nobody is locked out
            good = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="empty", identity=Identity.generate(),
                         algorithm="diloco", inner_steps=3) for _ in range(2)]
            reports = await asyncio.gather(*(p.run(batches(task.shard(i, 2, seed=0)), rounds=3) for i, p in enumerate(good)))
            assert [r.rounds_completed for r in reports] == [3, 3]
            agreed = coord.agreed[2]
            # the swarm is empty now: a fresh peer is not admitted with fresh weights
            fresh = Peer(task.make_model(1), task.loss, coordinator=addr, swarm_id="empty", identity=Identity.generate(),
                         algorithm="diloco", inner_steps=3)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(fresh.run(batches(task.shard(0, 2, seed=0)), rounds=5), 4)
            assert coord.round == 3 and coord.agreed[2] == agreed and not coord.members
            return True
        finally:
            await coord.close()

    assert asyncio.run(main())


def batches(shard):
    return iter(shard.next_batch, None)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    task = make_task("digits")
    with pytest.raises(ConfigError, match="no checkpoint"):
        Peer(task.make_model(0), task.loss, coordinator="127.0.0.1:1", resume=tmp_path / "nothing")


@pytest.mark.timeout(240)
def test_resume_from_a_checkpoint_behind_the_swarm_goes_back_to_it(procs):
    """Review finding: with checkpoints every 3 rounds, both peers SIGKILLed after
    round 7 (the coordinator lives on, at round 8). Resumed peers were refused
    forever ("waiting for a member that holds it"). Now --resume is the
    operator's consent: the swarm goes back to the checkpoint and redoes the rest."""
    import json

    port = procs.coordinator("--min-peers", "2", "--rollback-grace", "2")
    ck = [procs.root / f"ck{i}" for i in range(2)]
    R = 12
    # checkpoints after rounds 3, 7, 11; both peers are frozen (SIGSTOP, at once) as soon as round 5 is
    # seen, so the swarm is ahead of the last checkpoint unless two whole rounds of >= 0.5 s (steps of
    # 0.1 s) slipped through: a SIGKILL of one peer at a time let the other commit alone in between
    slow = {"GOSSAMER_TEST_STEP_SLEEP": "0.1"}
    for i in range(2):
        procs.peer(f"p{i}", port, "--inner-steps", "5", "--rounds", str(R), "--checkpoint", str(ck[i]),
                   "--checkpoint-every", "4", env=slow)
    procs.wait_event(lambda ev: ev["event"] == "commit" and ev["round"] == 5, 120)
    for name in ("p0", "p1"):
        procs.procs[name].send_signal(signal.SIGSTOP)
    for name in ("p0", "p1"):
        procs.procs[name].send_signal(signal.SIGKILL)
        procs.procs[name].wait(10)
    saved = [json.loads((d / "state.json").read_text())["meta"]["round"] for d in ck]
    # the peer with the newest checkpoint resumes first and the other once the swarm went back to
    # it: with both started at once, a slow start of the newer one past --rollback-grace made the
    # swarm go back to the older checkpoint (a flake on a 2-core CI machine)
    newest_first = sorted(range(2), key=lambda i: -saved[i])
    for k, i in enumerate(newest_first):
        procs.peer(f"p{i}", port, "--inner-steps", "5", "--rounds", str(R), "--resume", str(ck[i]), env=FAST)
        if k == 0:
            procs.wait_event(lambda ev: ev["event"] == "rollback", 120)
    for i in range(2):
        assert procs.wait(f"p{i}", 200) == 0, procs.log(f"p{i}")
    rollback = procs.events("rollback")
    assert rollback and rollback[0]["round"] == max(saved) and rollback[0]["was"] > max(saved)
    after = [procs.report(f"p{i}") for i in range(2)]
    assert hashes(after[0]) == hashes(after[1])
    assert max(rounds_of(after[0])) == R - 1


@pytest.mark.timeout(120)
def test_a_first_peer_with_another_initial_state_does_not_lock_out_the_swarm():
    """Review finding: a first peer with the wrong --seed, admitted at round 0 and
    gone before anything committed, left its initial-state hash as the swarm's
    genesis: every correct peer was refused."""
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "seed", "127.0.0.1", 0, min_peers=2)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            wrong = Peer(task.make_model(1), task.loss, coordinator=addr, swarm_id="seed", identity=Identity.generate(),
                         algorithm="diloco", inner_steps=3, seed=1)
            t = asyncio.ensure_future(wrong.run(batches(task.shard(0, 2, seed=0)), rounds=3))
            while not coord.members:
                await asyncio.sleep(0.02)
            wrong.request_stop()
            await t
            good = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="seed", identity=Identity.generate(),
                         algorithm="diloco", inner_steps=3) for _ in range(2)]
            return await asyncio.gather(*(p.run(batches(task.shard(i, 2, seed=0)), rounds=3) for i, p in enumerate(good)))
        finally:
            await coord.close()

    reports = asyncio.run(main())
    assert [r.rounds_completed for r in reports] == [3, 3]

"""Byzantine peers over real TCP: the audited all-reduce, the coordinator's verdicts and exclusion."""

from __future__ import annotations

import asyncio

import pytest

from gossamer.swarm import Coordinator, Peer
from gossamer.tasks import make_task
from gossamer.transport.identity import Identity


def batches(shard):
    return iter(shard.next_batch, None)


def run_swarm(attack, *, n=5, rounds=8, aggregator="mean", tolerate=0, attackers=1, state=None):
    """n in-process peers over TCP (digits, ddp, --audit 1), the last `attackers` attack."""
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "trust", "127.0.0.1", 0, min_peers=n, state_path=state)
        addr = f"127.0.0.1:{coord.address[1]}"
        ids = sorted((Identity.generate() for _ in range(n)), key=lambda i: i.peer_id)
        bad = {i.peer_id for i in ids[n - attackers:]}
        peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="trust", identity=ident,
                      algorithm="ddp", aggregator=aggregator, tolerate=tolerate, audit=1,
                      deadline_floor=4.0 if attack == "withhold" else 10.0,  # a withholder costs two deadlines
                      attack=attack if ident.peer_id in bad else None) for ident in ids]

        async def one(k, p):
            try:
                return await p.run(batches(task.shard(k, n, seed=0)), rounds=rounds)
            except Exception as exc:  # an excluded attacker ends with the coordinator's refusal
                return exc

        try:
            reports = await asyncio.gather(*(one(k, p) for k, p in enumerate(peers)))
            return reports, coord, bad, ids
        finally:
            await coord.close()

    return asyncio.run(main())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("attack", ["tamper", "equivocate", "withhold", "ipm", "freerider:stale", "hashlie", "scorelie"])
def test_an_attacker_is_excluded_and_the_honest_peers_finish_in_agreement(attack):
    reports, coord, bad, ids = run_swarm(attack)
    honest = [r for ident, r in zip(ids, reports) if ident.peer_id not in bad]
    excluded = {d["peer"]: d for d in coord.trust.decisions}
    assert set(excluded) == bad, coord.trust.decisions
    for d in excluded.values():
        assert d["round"] <= 4 and d["evidence"]
    for r in honest:
        assert not isinstance(r, Exception), r
        assert r.rounds_completed == 8
        assert r.state_hashes == honest[0].state_hashes
    attacker = reports[-1]
    assert isinstance(attacker, Exception) and "excluded" in str(attacker)


@pytest.mark.timeout(240)
def test_new_identities_queue_on_probation_beside_established_members():
    """3 established members: at most max(1, floor(0.25 * 3)) = 1 new peer is on probation at a time;
    the others wait for a place (Sybils cannot flood the swarm), and all get in eventually."""
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "prob", "127.0.0.1", 0, min_peers=3)
        addr = f"127.0.0.1:{coord.address[1]}"

        def peer():
            p = Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="prob", identity=Identity.generate(),
                     algorithm="ddp", audit=1, deadline_floor=10.0)
            p.step_sleep = 0.02
            return p

        first = [peer() for _ in range(3)]
        late = [peer() for _ in range(3)]
        most = 0

        async def watch():
            nonlocal most
            while True:
                rep = coord.trust.reputation
                established = [m for m in coord.members if not rep.on_probation(m)]
                if established:
                    most = max(most, sum(1 for m in coord.members if rep.on_probation(m)))
                if all(p.report is not None and p.report.joined_round is not None for p in late):
                    for p in first + late:  # everyone got in: the test is over
                        p.request_stop()
                    return
                await asyncio.sleep(0.005)

        async def join_later(k, p):
            while coord.round < 7:
                await asyncio.sleep(0.02)
            return await p.run(batches(task.shard(3 + k, 6, seed=0)), rounds=10_000)

        w = asyncio.ensure_future(watch())
        try:
            reports = await asyncio.gather(*(p.run(batches(task.shard(k, 6, seed=0)), rounds=10_000)
                                             for k, p in enumerate(first)),
                                           *(join_later(k, p) for k, p in enumerate(late)))
        finally:
            w.cancel()
            await coord.close()
        return reports, most

    reports, most = asyncio.run(main())
    assert most == 1
    joined = sorted(r.joined_round for r in reports[3:])
    assert all(j is not None for j in joined) and joined[0] < joined[1] < joined[2]


@pytest.mark.timeout(120)
def test_a_restarted_coordinator_still_refuses_an_excluded_key(tmp_path):
    state = tmp_path / "coord.sqlite"
    reports, coord, bad, ids = run_swarm("tamper", rounds=3, state=state)
    (liar,) = bad
    task = make_task("digits")

    async def rejoin():
        again = await Coordinator.start(Identity.generate(), "trust", "127.0.0.1", 0, state_path=state)
        try:
            ident = next(i for i in ids if i.peer_id == liar)
            p = Peer(task.make_model(0), task.loss, coordinator=f"127.0.0.1:{again.address[1]}", swarm_id="trust",
                     identity=ident, algorithm="ddp", audit=1)
            with pytest.raises(Exception, match="excluded") as info:
                await p.run(batches(task.shard(0, 5, seed=0)), rounds=1)
            return str(info.value), again.trust.reputation.is_excluded(liar)
        finally:
            await again.close()

    message, remembered = asyncio.run(rejoin())
    assert remembered and "tampered" in message

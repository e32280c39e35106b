"""The library API and the coordinator protocol, in one process (no subprocess start-up)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.errors import ConfigError
from gossamer.swarm import Coordinator, Peer
from gossamer.swarm.protocol import CoordinatorClient, SwarmError
from gossamer.tasks import make_task
from gossamer.transport.identity import Identity


def batches(shard):
    return iter(shard.next_batch, None)


@pytest.mark.timeout(120)
def test_library_peers_train_together_and_agree():
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "lib", "127.0.0.1", 0, min_peers=2)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="lib", identity=Identity.generate(),
                          algorithm="diloco", inner_steps=3) for _ in range(2)]
            for p in peers:
                p.step_sleep = 0.05

            async def odd_peer():
                # while the swarm has members, a peer with other options is refused with a clear error
                while coord.round < 1:
                    await asyncio.sleep(0.02)
                odd = Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="lib", identity=Identity.generate(),
                           algorithm="diloco", inner_steps=7)
                with pytest.raises(ConfigError, match="different configuration") as info:
                    await odd.run(batches(task.shard(0, 2, seed=0)), rounds=5)
                assert "option inner_steps: 7 (swarm: 3)" in str(info.value)  # it names what differs

            *reports, _ = await asyncio.gather(*(p.run(batches(task.shard(i, 2, seed=0)), rounds=4)
                                                 for i, p in enumerate(peers)), odd_peer())
            return reports, coord.stats
        finally:
            await coord.close()

    reports, stats = asyncio.run(main())
    assert [r.rounds_completed for r in reports] == [4, 4]
    assert reports[0].state_hashes == reports[1].state_hashes
    assert stats["commits"] == 4 and stats["aborts"] == 0


@pytest.mark.timeout(60)
def test_coordinator_answers_bad_requests_with_errors():
    async def main():
        coord = await Coordinator.start(Identity.generate(), "t", "127.0.0.1", 0)
        try:
            client = await CoordinatorClient.connect(Identity.generate(), "t", *coord.address)
            with pytest.raises(SwarmError) as info:
                await client.request("ready", round=0)
            assert info.value.code == "evicted"  # not a member
            with pytest.raises(SwarmError) as info:
                await client.request("ready", round="zero")
            assert info.value.code == "bad_request" and "must be int" in str(info.value)
            with pytest.raises(SwarmError) as info:
                await client.request("launch")
            assert info.value.code == "bad_request" and "unknown op" in str(info.value)
            assert (await client.request("hb"))["round"] == 0  # the connection survived all that
            # wrong swarm id: the handshake fails
            with pytest.raises(Exception):
                await CoordinatorClient.connect(Identity.generate(), "other", *coord.address)
            await client.close()
        finally:
            await coord.close()

    asyncio.run(main())


@pytest.mark.timeout(180)
def test_joiner_runs_the_swarms_learning_rate_schedule():
    """A peer that joins a diloco swarm with a cosine schedule at round 3 takes
    the swarm's schedule position with the state (it used to restart its
    schedule at step 0: 1.3x to 2.8x the others' learning rate)."""
    task = make_task("digits")
    H, R = 3, 16
    opts = dict(algorithm="diloco", inner_steps=H, schedule="cosine", total_steps=H * R, lr=1e-3)
    lrs: dict[int, dict[int, float]] = {}

    async def main():
        coord = await Coordinator.start(Identity.generate(), "sched", "127.0.0.1", 0, min_peers=2)
        addr = f"127.0.0.1:{coord.address[1]}"
        peers = []

        def watch(k):
            def progress(event):
                if event.get("event") == "commit":
                    lrs.setdefault(event["round"], {})[k] = peers[k].algo.inner.param_groups[0]["lr"]
            return progress

        for k in range(3):
            peers.append(Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="sched",
                              identity=Identity.generate(), progress=watch(k), **opts))
            peers[-1].step_sleep = 0.05  # rounds slow enough for the joiner to get in well before the end

        async def late():
            while coord.round < 3:
                await asyncio.sleep(0.02)
            return await peers[2].run(batches(task.shard(2, 3, seed=0)), steps=H * R)

        try:
            return await asyncio.gather(*(peers[k].run(batches(task.shard(k, 3, seed=0)), steps=H * R)
                                          for k in range(2)), late())
        finally:
            await coord.close()

    reports = asyncio.run(main())
    joined = reports[2].joined_round
    assert joined is not None and joined >= 3 and reports[2].rounds_completed >= 3
    shared = [r for r in sorted(lrs) if len(lrs[r]) == 3]
    assert len(shared) >= 3 and shared[0] == joined
    for r in shared:
        assert lrs[r][2] == lrs[r][0] == lrs[r][1], (r, lrs[r])
    # the schedule really moves: the rate falls over the shared rounds
    assert lrs[shared[-1]][0] < lrs[shared[0]][0]
    # and the joiner's state hashes equal the others' from its first round on
    first = {h["round"]: h["hash"] for h in reports[0].state_hashes}
    assert all(first[h["round"]] == h["hash"] for h in reports[2].state_hashes)
    assert reports[0].final_state_hash == reports[1].final_state_hash == reports[2].final_state_hash


@pytest.mark.timeout(180)
@pytest.mark.parametrize("algorithm,options", [("gossip", {"inner_steps": 2, "final_merge_at": 8}),
                                               ("streaming_diloco", {"inner_steps": 4, "fragments": 2, "tau": 1})])
def test_library_api_runs_non_diloco_algorithms(algorithm, options):
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "lib2", "127.0.0.1", 0, min_peers=3)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="lib2", identity=Identity.generate(),
                          algorithm=algorithm, **options) for _ in range(3)]
            return await asyncio.gather(*(p.run(batches(task.shard(i, 3, seed=0)), steps=8) for i, p in enumerate(peers)))
        finally:
            await coord.close()

    reports = asyncio.run(main())
    assert all(r.steps == 8 and r.aborts == 0 for r in reports)
    # gossip ends with its final merge and streaming_diloco has bit parity: every peer ends on one state
    assert len({r.final_state_hash for r in reports}) == 1
    assert all(r.payload_bytes_sent > 0 for r in reports)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("codec", ["int4", "none"])
def test_one_peers_infinite_gradient_costs_its_contribution_not_the_run(codec):
    """Issue 10.2: one of 3 diloco peers gets +inf in its gradient in round 2.
    int4 used to raise in encode and retry round 2 thousands of times a minute;
    raw fp32 put the NaN in the mean and everyone committed NaN. Now its
    contribution is withheld, every round commits, the state stays finite,
    and the peer contributes again from the next round."""
    task = make_task("digits")
    H, R = 3, 6
    step_of = {"n": 0}

    def poisoned(model, batch):
        loss = task.loss(model, batch)
        step_of["n"] += 1
        if step_of["n"] == 2 * H + 2:  # a step inside round 2
            loss = loss * float("inf")
        return loss

    async def main():
        coord = await Coordinator.start(Identity.generate(), "inf", "127.0.0.1", 0, min_peers=3)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), poisoned if k == 2 else task.loss, coordinator=addr, swarm_id="inf",
                          identity=Identity.generate(), algorithm="diloco", inner_steps=H, codec=codec)
                     for k in range(3)]
            reports = await asyncio.gather(*(p.run(batches(task.shard(k, 3, seed=0)), steps=H * R)
                                             for k, p in enumerate(peers)))
            return reports, coord.stats, [p.algo for p in peers]
        finally:
            await coord.close()

    reports, stats, algos = asyncio.run(asyncio.wait_for(main(), 150))
    assert stats["commits"] == R  # (a spurious deadline abort on a loaded machine is retried, not a failure)
    assert all(r.rounds_completed == R for r in reports)
    assert len({r.final_state_hash for r in reports}) == 1
    assert all(bool(torch.isfinite(t).all()) for t in algos[0].shared_state())
    # the poisoned peer took part again after round 2: its pseudo-gradient in the last round was finite
    assert all(bool(torch.isfinite(p).all()) for p in algos[2].params)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("aggregator,tolerate", [("krum", 0), ("median", 1), ("nnm+cclip", 1)])
def test_robust_aggregators_run_over_tcp(aggregator, tolerate):
    """A peer starts alone, so its aggregator used to be checked against a group
    of one (krum: n > 2f + 2, got n=1) and every peer exited. Now the coordinator
    starts no round smaller than the aggregator needs."""
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "agg", "127.0.0.1", 0, min_peers=1)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="agg", identity=Identity.generate(),
                          algorithm="ddp", aggregator=aggregator, tolerate=tolerate) for _ in range(3)]
            return await asyncio.gather(*(p.run(batches(task.shard(i, 3, seed=0)), steps=4) for i, p in enumerate(peers))), coord.stats
        finally:
            await coord.close()

    reports, stats = asyncio.run(main())
    assert all(r.rounds_completed == 4 and r.aggregator == aggregator for r in reports)
    assert len({r.final_state_hash for r in reports}) == 1
    assert stats["commits"] == 4


@pytest.mark.timeout(180)
def test_a_straggler_misses_the_round_and_rejoins_instead_of_stalling_everyone():
    """Issue 10.3: a peer whose training thread blocks in round 2 (heartbeats
    still alive) used to keep every other peer waiting forever. Now, once a
    majority is ready, the barrier waits the straggler deadline and starts
    without it; it rejoins from the committed state afterwards."""
    import time

    task = make_task("digits")
    H, R = 3, 14
    calls = {"n": 0}

    def stuck(model, batch):
        calls["n"] += 1
        if calls["n"] == 2 * H + 1:
            time.sleep(6.0)  # the worker thread blocks; the event loop (heartbeats) does not
        return task.loss(model, batch)

    async def main():
        coord = await Coordinator.start(Identity.generate(), "strag", "127.0.0.1", 0, min_peers=3, straggler_grace=2.0)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), stuck if k == 2 else task.loss, coordinator=addr, swarm_id="strag",
                          identity=Identity.generate(), algorithm="diloco", inner_steps=H) for k in range(3)]
            for p in peers:
                p.step_sleep = 0.1  # rounds of ~0.3 s: the stall spans several of them
            t0 = time.monotonic()
            reports = await asyncio.gather(*(p.run(batches(task.shard(k, 3, seed=0)), steps=H * R)
                                             for k, p in enumerate(peers)))
            return reports, coord, time.monotonic() - t0
        finally:
            await coord.close()

    reports, coord, wall = asyncio.run(main())
    assert coord.round == R
    # the healthy peers did not wait out the 6 s stall: rounds went on without the straggler
    assert min(reports[0].rounds_completed, reports[1].rounds_completed) >= R - 3
    assert reports[2].rejoins >= 1 and 0 < reports[2].rounds_completed < R
    assert len({r.final_state_hash for r in reports}) == 1
    assert wall < 60


class _FailsFrom:
    """A fault plan: every sync of this peer from round ``r`` on raises a local error."""

    def __init__(self, r):
        self.r = r

    def before_sync(self, round_):
        if round_ >= self.r:
            raise RuntimeError("disk on fire")


@pytest.mark.timeout(180)
def test_a_member_failing_for_a_local_reason_is_evicted_not_retried_forever():
    """Issue 10.2: local, deterministic failures were retried thousands of times a
    minute. Now K failures in a row for the same local reason evict the member
    (it exits with that reason) and the others go on."""
    from gossamer.errors import PeerError

    task = make_task("digits")
    H, R = 3, 6

    async def main():
        coord = await Coordinator.start(Identity.generate(), "evict", "127.0.0.1", 0, min_peers=3, max_failures=3)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="evict", identity=Identity.generate(),
                          algorithm="diloco", inner_steps=H, faults=_FailsFrom(2) if k == 2 else None) for k in range(3)]
            results = await asyncio.gather(*(p.run(batches(task.shard(k, 3, seed=0)), steps=H * R)
                                             for k, p in enumerate(peers)), return_exceptions=True)
            return results, coord
        finally:
            await coord.close()

    results, coord = asyncio.run(main())
    bad = results[2]
    assert isinstance(bad, PeerError) and "evicted after 3 failed attempts in a row" in str(bad) and "disk on fire" in str(bad)
    assert [r.rounds_completed for r in results[:2]] == [R, R]
    assert coord.stats["aborts"] >= 3  # the three failed attempts (a loaded machine may add deadline aborts)
    assert results[0].final_state_hash == results[1].final_state_hash


class _SlowServer:
    """A fault plan: every state upload of this peer starts ``serve_delay`` seconds late."""

    serve_delay = 1.5


@pytest.mark.timeout(180)
def test_a_slow_joiner_gets_in_within_a_bounded_number_of_rounds():
    """Issue 10.4: when fetching the state took longer than a round (rounds of
    about 0.3 s, each upload delayed 1.5 s), the joiner was refused every round
    for the whole run. Now the next round waits for a fetching joiner."""
    task = make_task("digits")
    H, R = 3, 16

    async def main():
        coord = await Coordinator.start(Identity.generate(), "slowjoin", "127.0.0.1", 0, min_peers=2)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="slowjoin", identity=Identity.generate(),
                          algorithm="diloco", inner_steps=H, faults=_SlowServer() if k < 2 else None) for k in range(3)]
            for p in peers:
                p.step_sleep = 0.05

            async def late():
                while coord.round < 2:
                    await asyncio.sleep(0.02)
                return await peers[2].run(batches(task.shard(2, 3, seed=0)), steps=H * R)

            return await asyncio.gather(*(peers[k].run(batches(task.shard(k, 3, seed=0)), steps=H * R) for k in range(2)),
                                        late())
        finally:
            await coord.close()

    reports = asyncio.run(main())
    joined = reports[2].joined_round
    assert joined is not None and joined <= 4, joined  # in within two rounds of asking
    assert reports[2].rounds_completed == R - joined
    assert len({r.final_state_hash for r in reports}) == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("codec", ["int8+ef", "int8+ef21", "int8+econtrol"])
def test_error_feedback_codec_survives_a_join_and_a_crash(codec):
    """Issue 10.2: with an error-feedback codec, 3 peers, a fourth joining (or
    one dying) used to stop every commit for good ("sender state ... has shape
    (1604,)"): the memory was keyed by chunk and chunks follow the group size."""
    task = make_task("digits")
    H, R = 3, 10

    async def main():
        coord = await Coordinator.start(Identity.generate(), "efchurn", "127.0.0.1", 0, min_peers=3)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="efchurn", identity=Identity.generate(),
                          algorithm="diloco", inner_steps=H, codec=codec) for _ in range(4)]
            for p in peers:
                p.step_sleep = 0.05

            async def joiner():
                while coord.round < 2:
                    await asyncio.sleep(0.02)
                return await peers[3].run(batches(task.shard(3, 4, seed=0)), steps=H * R)

            async def crasher():
                run = asyncio.ensure_future(peers[2].run(batches(task.shard(2, 4, seed=0)), steps=H * R))
                while coord.round < 5:
                    await asyncio.sleep(0.02)
                run.cancel()  # its connections drop mid-run, as in a crash
                with pytest.raises(asyncio.CancelledError):
                    await run

            results = await asyncio.gather(*(peers[k].run(batches(task.shard(k, 4, seed=0)), steps=H * R)
                                             for k in range(2)), joiner(), crasher())
            return results, coord
        finally:
            await coord.close()

    (r0, r1, r3, _), coord = asyncio.run(main())
    assert coord.round == R and r0.rounds_completed == r1.rounds_completed == R
    assert r0.final_state_hash == r1.final_state_hash == r3.final_state_hash
    assert r3.joined_round is not None and r3.rounds_completed == R - r3.joined_round


class _NeverReports:
    """A fault plan: from round ``r`` on, the sync finishes but its result is never reported
    (the peer stays alive and heartbeats)."""

    def __init__(self, r: int) -> None:
        self.r = r

    async def before_report(self, round_: int) -> None:
        if round_ >= self.r:
            await asyncio.Event().wait()


@pytest.mark.timeout(180)
def test_a_member_that_never_reports_is_blamed_and_evicted_not_waited_for_forever():
    """A member that finished the collective but never sent its report (alive and
    heartbeating) held the round for ever: the coordinator had no deadline after the
    barrier. Now the others' reports start a report deadline; the silent member is
    blamed, charged a failure, and evicted after max_failures; the rest go on."""
    from gossamer.errors import PeerError

    task = make_task("digits")
    H, R = 3, 5

    async def main():
        coord = await Coordinator.start(Identity.generate(), "silent", "127.0.0.1", 0, min_peers=3, max_failures=2,
                                        report_grace=1.0)
        addr = f"127.0.0.1:{coord.address[1]}"
        try:
            peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="silent", identity=Identity.generate(),
                          algorithm="diloco", inner_steps=H, faults=_NeverReports(2) if k == 2 else None)
                     for k in range(3)]
            results = await asyncio.wait_for(asyncio.gather(*(p.run(batches(task.shard(k, 3, seed=0)), steps=H * R)
                                                              for k, p in enumerate(peers)), return_exceptions=True), 150)
            return results, coord, peers[2].report.peer_id
        finally:
            await coord.close()

    results, coord, silent = asyncio.run(main())
    bad = results[2]
    assert isinstance(bad, PeerError) and "evicted after 2 failed attempts in a row" in str(bad), bad
    assert "no report in time" in str(bad)
    assert [r.rounds_completed for r in results[:2]] == [R, R]
    assert results[0].final_state_hash == results[1].final_state_hash
    assert coord.stats["aborts"] >= 2

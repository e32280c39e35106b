"""The library API and the coordinator protocol, in one process (no subprocess start-up)."""

from __future__ import annotations

import asyncio

import pytest

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
            reports = await asyncio.gather(*(p.run(batches(task.shard(i, 2, seed=0)), rounds=4)
                                             for i, p in enumerate(peers)))
            # a peer with other options is refused with a clear error
            odd = Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="lib", identity=Identity.generate(),
                       algorithm="diloco", inner_steps=7)
            with pytest.raises(ConfigError, match="different configuration"):
                await odd.run(batches(task.shard(0, 2, seed=0)), rounds=5)
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

"""Strangers cannot hurt a swarm (issue 10.6): authenticated connections from
keys that are not members, announcing huge frames and trickling their bytes,
cost a peer a bounded amount of memory and the members no service."""

from __future__ import annotations

import asyncio
import struct

import pytest

from gossamer.swarm import Coordinator, Peer
from gossamer.tasks import make_task
from gossamer.transport.base import Tag
from gossamer.transport.frame import MAC_BYTES, encode_header
from gossamer.transport.identity import Identity
from gossamer.transport.tcp import handshake


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def batches(shard):
    return iter(shard.next_batch, None)


async def hostile(addr: tuple[str, int], swarm: str, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """A stranger with a valid key of the swarm: announce a 256 MiB frame, then trickle."""
    try:
        reader, writer = await asyncio.open_connection(*addr)
        await handshake(reader, writer, Identity.generate(), swarm, initiator=True, io_timeout=5)
    except Exception:
        stats["refused"] += 1
        return
    header = encode_header(Tag(1, 2, 3))
    body = 2 + len(header) + MAC_BYTES + (256 << 20) - 64
    writer.write(struct.pack("<IH", body, len(header)) + header + b"\0" * MAC_BYTES)
    stats["announced"] += 1
    try:
        while not stop.is_set():
            writer.write(b"\0" * 1024)
            await writer.drain()
            await asyncio.sleep(0.05)
    except (ConnectionError, OSError):
        stats["cut"] += 1
    finally:
        writer.transport.abort()


@pytest.mark.timeout(180)
def test_many_hostile_strangers_while_the_swarm_trains():
    task = make_task("digits")
    H, R = 3, 12
    swarm = "strangers"

    async def main():
        coord = await Coordinator.start(Identity.generate(), swarm, "127.0.0.1", 0, min_peers=2)
        addr = f"127.0.0.1:{coord.address[1]}"
        stop = asyncio.Event()
        stats = {"refused": 0, "announced": 0, "cut": 0}
        peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id=swarm, identity=Identity.generate(),
                      algorithm="diloco", inner_steps=H) for _ in range(2)]
        for p in peers:
            p.step_sleep = 0.1

        async def attack():
            while coord.round < 2:
                await asyncio.sleep(0.02)
            base = rss_mb()
            target = peers[0].tcp.address
            tasks = [asyncio.ensure_future(hostile(target, swarm, stop, stats)) for _ in range(24)]
            await asyncio.sleep(3.0)
            peak = rss_mb()
            stop.set()
            await asyncio.gather(*tasks)
            return base, peak

        try:
            *reports, (base, peak) = await asyncio.gather(
                *(p.run(batches(task.shard(k, 2, seed=0)), steps=H * R) for k, p in enumerate(peers)), attack())
            return reports, base, peak, stats, [p.tcp for p in peers]
        finally:
            stop.set()
            await coord.close()

    reports, base, peak, stats, transports = asyncio.run(main())
    assert stats["announced"] >= 20
    # 24 frames of 256 MiB were announced; a stranger may hold 1 MiB and all strangers 4 MiB
    assert peak - base < 64, (base, peak)
    assert [r.rounds_completed for r in reports] == [R, R] and reports[0].final_state_hash == reports[1].final_state_hash
    assert stats["cut"] >= 20  # their connections were dropped

"""Communicator.all_reduce over real TCP on 127.0.0.1: the plain-mean fast
path (views on send, bytearray payloads wrapped without copies, in-place
rank-order accumulation) is bit-identical to the rank-order reference, leaves
its inputs alone, and a malformed contribution costs only that contribution."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from gossamer.comm import Communicator, chunk_bounds
from gossamer.transport.identity import Identity
from gossamer.transport.tcp import TcpTransport

pytestmark = pytest.mark.timeout(60)


async def _group(n: int, **kw: object) -> tuple[list[TcpTransport], list[Communicator]]:
    ts = [await TcpTransport.start(Identity.generate(), "ar-swarm", **kw) for _ in range(n)]
    for t in ts:
        for u in ts:
            if u is not t:
                t.add_peer(u.peer_id, *u.address)
    ids = [t.peer_id for t in ts]
    return ts, [Communicator(t, ids) for t in ts]


def _reference(xs: list[torch.Tensor], skip: frozenset[int] = frozenset()) -> torch.Tensor:
    """The general path's rule: per chunk, clone the first row, add the others in rank order, divide."""
    flat = [x.reshape(-1).to(torch.float32) for x in xs]
    out = torch.empty_like(flat[0])
    for lo, hi in chunk_bounds(flat[0].numel(), len(xs)):
        rows = [f[lo:hi] for i, f in enumerate(flat) if i not in skip]
        acc = rows[0].clone()
        for r in rows[1:]:
            acc += r
        out[lo:hi] = acc / len(rows)
    return out


@pytest.mark.parametrize("n, shapes", [(2, [(1000,)]), (3, [(333, 7)]), (4, [(17, 5), (1001,), (3,)])])
def test_plain_mean_bit_identical_to_rank_order_reference(n, shapes):
    async def main() -> None:
        ts, comms = await _group(n)
        try:
            gen = torch.Generator().manual_seed(n)
            inputs = [[torch.randn(*s, generator=gen) * 1e3 for s in shapes] for _ in range(n)]
            before = [[t.clone() for t in x] for x in inputs]
            outs = await asyncio.gather(*(c.all_reduce(x if len(x) > 1 else x[0]) for c, x in zip(comms, inputs)))
            truth = _reference([torch.cat([t.reshape(-1) for t in x]) for x in inputs])
            for out, x, b in zip(outs, inputs, before):
                got = torch.cat([t.reshape(-1) for t in out])
                assert torch.equal(got, truth)  # bit-identical on every peer and to the reference
                assert all(torch.equal(t, u) for t, u in zip(x, b))  # inputs untouched
                assert [t.shape for t in out] == [t.shape for t in x]
        finally:
            await asyncio.gather(*(t.close() for t in ts))

    asyncio.run(asyncio.wait_for(main(), 45))


def test_malformed_contribution_over_tcp_costs_only_that_contribution(caplog):
    async def main() -> None:
        ts, comms = await _group(3)
        try:
            real_send = ts[2].send

            async def corrupt_send(dst, tag, payload):  # p2 sends a short chunk in the reduce-scatter
                await real_send(dst, tag, bytes(payload)[:-4] if tag.phase == 0 else payload)

            ts[2].send = corrupt_send  # type: ignore[method-assign]
            xs = [torch.full((300,), float(i + 1)) for i in range(3)]
            with caplog.at_level(logging.WARNING):
                outs = await asyncio.gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
            assert all(torch.equal(o[0], outs[0][0]) for o in outs)
            lo, hi = chunk_bounds(300, 3)[2]
            # chunks owned by p0 and p1 lost p2's contribution; p2's own chunk has all three
            expected = torch.full((300,), 1.5)
            expected[lo:hi] = 2.0
            assert torch.equal(outs[0][0], expected)
            assert "rejected the contribution of peer" in caplog.text
            assert comms[0].history[-1].dropped == (ts[2].peer_id,)
            # an all-NaN row is skipped as before (a first-value check, then a full scan)
            ys = [torch.full((30,), 2.0), torch.full((30,), float("nan")), torch.full((30,), 4.0)]
            ts[2].send = real_send  # type: ignore[method-assign]
            outs = await asyncio.gather(*(c.all_reduce(y) for c, y in zip(comms, ys)))
            assert all(torch.equal(o[0], torch.full((30,), 3.0)) for o in outs)
        finally:
            await asyncio.gather(*(t.close() for t in ts))

    asyncio.run(asyncio.wait_for(main(), 45))


@pytest.mark.parametrize("codec", [None, "int8"])
def test_all_reduce_with_chunks_larger_than_the_frame_limit(codec):
    """Issue 10.2: with a scaled-down frame limit (4 KiB; the real one is 256 MiB)
    every chunk of this all-reduce is several frames: the result is still
    bit-identical to the simulator's, byte counts included."""
    from gossamer.codecs import make_codec
    from gossamer.transport.sim import LinkSpec, SimNetwork

    n, numel = 3, 12_000  # 16 KB of fp32 per chunk
    gen = torch.Generator().manual_seed(7)
    inputs = [torch.randn(numel, generator=gen) for _ in range(n)]

    async def tcp() -> tuple[list[torch.Tensor], list[int]]:
        ts, comms = await _group(n, max_frame=4096)
        for c in comms:
            c.codec = make_codec(codec) if codec else None
        try:
            outs = await asyncio.gather(*(c.all_reduce([x]) for c, x in zip(comms, inputs)))
            return [o[0] for o in outs], [t.counters.sent.total - t.handshake_counters.sent.framing for t in ts]
        finally:
            await asyncio.gather(*(t.close() for t in ts))

    async def sim(ids: list[str]) -> list[torch.Tensor]:
        net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
        comms = [Communicator(net.add_peer(p), ids, codec=make_codec(codec) if codec else None) for p in ids]
        outs = await asyncio.gather(*(c.all_reduce([x]) for c, x in zip(comms, inputs)))
        return [o[0] for o in outs]

    got, _ = asyncio.run(tcp())
    assert all(torch.equal(g, got[0]) for g in got)
    ref = asyncio.run(sim([f"p{i}" for i in range(n)]))
    assert torch.equal(got[0], ref[0])

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


def test_non_finite_rows_and_overflow_match_the_general_rule(caplog):
    """The owner checks one sum instead of every row; a row with a single NaN
    or inf is still rejected (and only that row), and finite rows whose sum
    overflows are all kept, as in the rank-order reference."""

    async def main() -> None:
        ts, comms = await _group(4)
        try:
            gen = torch.Generator().manual_seed(3)
            xs = [torch.randn(4000, generator=gen) for _ in range(4)]
            xs[2][5] = float("inf")  # in chunk 0 only
            with caplog.at_level(logging.WARNING):
                outs = await asyncio.gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
            # p2 withholds its whole contribution (its own check), so every chunk is the mean of the other three
            truth = _reference(xs, skip=frozenset({2}))
            assert all(torch.equal(o[0], truth) for o in outs)
            assert comms[0].history[-1].dropped == (ts[2].peer_id,)
            caplog.clear()

            real_send = ts[1].send

            async def nan_send(dst, tag, payload):  # p1 slips a NaN into the row it sends to p3
                if tag.phase == 0 and dst == ts[3].peer_id:
                    row = torch.frombuffer(bytearray(payload), dtype=torch.float32)
                    row[7] = float("nan")
                    payload = row.numpy().tobytes()
                await real_send(dst, tag, payload)

            ts[1].send = nan_send  # type: ignore[method-assign]
            ys = [torch.randn(4000, generator=gen) for _ in range(4)]
            with caplog.at_level(logging.WARNING):
                outs = await asyncio.gather(*(c.all_reduce(y) for c, y in zip(comms, ys)))
            ts[1].send = real_send  # type: ignore[method-assign]
            lo, hi = chunk_bounds(4000, 4)[3]
            truth = _reference(ys)
            truth[lo:hi] = _reference(ys, skip=frozenset({1}))[lo:hi]
            assert all(torch.equal(o[0], truth) for o in outs)
            assert f"peer {ts[1].peer_id!r} sent non-finite values" in caplog.text
            assert comms[3].history[-1].dropped == (ts[1].peer_id,)
            assert comms[0].history[-1].dropped == ()

            big = [torch.full((400,), 3e38) for _ in range(4)]  # finite rows, the sum overflows
            outs = await asyncio.gather(*(c.all_reduce(b) for c, b in zip(comms, big)))
            assert all(torch.equal(o[0], _reference(big)) for o in outs)
            assert torch.isinf(outs[0][0]).all() and comms[0].history[-1].dropped == ()
        finally:
            await asyncio.gather(*(t.close() for t in ts))

    asyncio.run(asyncio.wait_for(main(), 45))


def test_reused_buffers_never_touch_a_result_the_caller_still_holds():
    async def main() -> None:
        ts, comms = await _group(3)
        try:
            gen = torch.Generator().manual_seed(11)
            held = []
            for step in range(4):
                xs = [torch.randn(900_000, generator=gen) for _ in range(3)]  # pooled: rows and results >= 1 MiB
                outs = await asyncio.gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
                truth = _reference(xs)
                assert all(torch.equal(o[0], truth) for o in outs)
                if step % 2 == 0:
                    held.append((outs[0][0], truth.clone()))  # kept: its buffer must not be reused
                del outs  # dropped: its buffers may serve the next call
            for result, truth in held:
                assert torch.equal(result, truth)
        finally:
            await asyncio.gather(*(t.close() for t in ts))

    asyncio.run(asyncio.wait_for(main(), 45))

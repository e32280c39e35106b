"""All-reduce in groups larger than ``MIN_OWNERS``: a small vector has fewer
chunk owners than members (``owner_count``), the result is still the mean and
bit-identical on every member, and far fewer messages travel."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.comm import Communicator, make_run_codec
from gossamer.comm.collectives import MIN_CHUNK_ELEMENTS, MIN_OWNERS, owner_count
from gossamer.transport.sim import LinkSpec, SimNetwork


def test_owner_count():
    assert owner_count(MIN_OWNERS, 1) == MIN_OWNERS  # small groups: every member owns a chunk, as always
    assert owner_count(8, 10) == 8
    assert owner_count(1000, 4810) == max(MIN_OWNERS, -(-4810 // MIN_CHUNK_ELEMENTS)) == 19
    assert owner_count(1000, 10**7) == 1000  # big vectors: every member
    assert owner_count(40, 100) == MIN_OWNERS


def _run(n: int, d: int, codec: str | None):
    net = SimNetwork(LinkSpec.parse("100mbit,10ms"))
    ids = [f"p{i}" for i in range(n)]
    comms = [Communicator(net.add_peer(p), ids, codec=make_run_codec(codec) if codec else None, seed=3) for p in ids]
    gen = torch.Generator().manual_seed(n)
    xs = [torch.randn(d, generator=gen) for _ in range(n)]

    async def main():
        return await asyncio.gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))

    return comms, xs, asyncio.run(main())


@pytest.mark.parametrize("codec", [None, "int8"])
def test_fewer_owners_than_members_still_give_the_bit_identical_mean(codec):
    n, d = 40, 1000
    owners = owner_count(n, d)
    assert owners == MIN_OWNERS < n
    comms, xs, outs = _run(n, d, codec)
    truth = torch.stack(xs).double().mean(0)
    for out in outs:
        assert torch.equal(out[0], outs[0][0])  # bit-identical on every member
        assert torch.allclose(out[0].double(), truth, atol=1e-6 if codec is None else 0.05)
    # phase 0: every member sends to every owner but itself; phase 1: every owner to every other member
    for c in comms:
        expected = (owners - (c.rank < owners)) + (n - 1 if c.rank < owners else 0)
        assert c.transport.counters.sent.messages == expected, c.rank
    assert sum(c.transport.counters.sent.messages for c in comms) == 2 * owners * (n - 1) < 2 * n * (n - 1)

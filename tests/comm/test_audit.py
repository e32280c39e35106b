"""The audited all-reduce: correct, bit-identical, and every owner-side lie is caught and attributed."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.aggregate import make_aggregator
from gossamer.comm import Communicator
from gossamer.comm.audit import AuditFailed, KeyBook
from gossamer.comm.byzantine import make_behaviour
from gossamer.transport.sim import LinkSpec, SimNetwork


def make_group(n, *, aggregator=None, codec=None, shadows=1, seed=0):
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    comms = []
    for p in ids:
        agg = make_aggregator(aggregator, 1) if aggregator else None
        c = Communicator(net.add_peer(p), ids, aggregator=agg, codec=codec, seed=seed)
        c.keybook = KeyBook.simulated(p, ids, seed)
        c.audit_shadows = shadows
        comms.append(c)
    return comms


def run_all(comms, inputs):
    async def one(c, x):
        try:
            return await c.all_reduce(x)
        except AuditFailed as exc:
            return exc

    async def main():
        return await asyncio.gather(*(one(c, x) for c, x in zip(comms, inputs)))

    return asyncio.run(main())


def inputs_for(n, d=103, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=g) for _ in range(n)]


@pytest.mark.parametrize("aggregator", [None, "cclip", "median"])
def test_audited_all_reduce_equals_plain_and_is_bit_identical(aggregator):
    n = 6
    xs = inputs_for(n)
    outs = run_all(make_group(n, aggregator=aggregator), xs)
    plain_net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    plain = [Communicator(plain_net.add_peer(p), ids, aggregator=make_aggregator(aggregator, 1) if aggregator else None)
             for p in ids]

    async def main():
        return await asyncio.gather(*(c.all_reduce(x) for c, x in zip(plain, xs)))

    ref = asyncio.run(main())
    for out in outs:
        assert not isinstance(out, Exception), out
        assert torch.equal(out[0], outs[0][0])
        assert torch.allclose(out[0], ref[0][0], atol=1e-6)


@pytest.mark.parametrize("attack", ["tamper", "statlie", "falseaccuse"])
def test_an_owner_side_lie_is_proven_by_every_honest_member(attack):
    n, liar = 6, "p2"
    comms = make_group(n, aggregator="cclip")
    comms[2].behaviour = make_behaviour(attack)
    # the liar is caught as soon as it is drawn: try a few rounds (auditors are random)
    for r in range(6):
        for c in comms:
            c.round = r
        outs = run_all(comms, inputs_for(n, seed=r))
        honest = [o for i, o in enumerate(outs) if i != 2]
        if attack == "falseaccuse" and all(liar not in (o.outcome.shadows if hasattr(o, "outcome") else {}) for o in honest):
            pass
        failed = [o for o in honest if isinstance(o, AuditFailed)]
        if failed:
            assert len(failed) == len(honest)  # every honest member reaches the same verdict
            for o in failed:
                assert set(o.outcome.proven) == {liar}, o.outcome.proven
            return
        for o in honest:
            assert torch.equal(o[0], honest[0][0])
    pytest.fail(f"{attack} was never caught in 6 rounds")

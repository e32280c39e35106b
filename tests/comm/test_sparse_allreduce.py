"""Sparse pseudo-gradient codecs inside the all-reduce: robust rules still apply, the audit still checks.

The chunk owner decodes every contribution to a dense row, so a robust
aggregator sees exactly what it sees with any other codec; it then
re-sparsifies the aggregate (``codec_for_mean``). The audited all-reduce uses
the exact re-encoding instead (an auditor must reproduce the owner's bytes,
and the owner's error memory is private): it pays ``n K`` per chunk in the
gather phase, the stated limitation.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.aggregate import make_aggregator
from gossamer.codecs import make_codec
from gossamer.comm import Communicator
from gossamer.comm.audit import AuditFailed, KeyBook
from gossamer.comm.byzantine import make_behaviour
from gossamer.transport.sim import LinkSpec, SimNetwork


def group(n, spec, *, aggregator=None, audit=False):
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    comms = []
    for p in ids:
        c = Communicator(net.add_peer(p), ids, codec=make_codec(spec),
                         aggregator=make_aggregator(aggregator, 1) if aggregator else None)
        if audit:
            c.keybook = KeyBook.simulated(p, ids, 0)
        comms.append(c)
    return comms


def run(comms, xs):
    async def one(c, x):
        try:
            return await c.all_reduce(x)
        except AuditFailed as exc:
            return exc

    async def main():
        return await asyncio.gather(*(one(c, x) for c, x in zip(comms, xs)))

    return asyncio.run(main())


@pytest.mark.parametrize("spec", ["ctopk:16:256:fp32+ef", "crandk:64:256:fp32+ef"])
@pytest.mark.parametrize("aggregator", ["median", "nnm+cclip", "trimmed_mean"])
def test_a_robust_rule_still_bounds_an_outlier_under_sparse_codecs(spec, aggregator):
    n, d = 7, 256 * 7
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(d, generator=gen) for _ in range(n)]
    xs[3] = xs[3] * 1e4  # one huge contribution
    outs = run(group(n, spec, aggregator=aggregator), xs)
    assert all(torch.equal(o[0], outs[0][0]) for o in outs)  # bit parity
    assert float(outs[0][0].abs().max()) < 50.0  # the 1e4-scaled row did not get through
    plain = run(group(n, spec), xs)[0][0]  # the plain mean lets it through
    assert float(plain.abs().max()) > 100.0


@pytest.mark.parametrize("spec", ["ctopk:16:256:2bit+ef:0.9", "crandk:64:256:1bit+ef"])
def test_the_audited_all_reduce_runs_sparse_codecs_and_catches_a_tampering_owner(spec):
    n, d = 5, 256 * 5
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(d, generator=gen) for _ in range(n)]
    honest = run(group(n, spec, audit=True), xs)
    assert all(isinstance(o, list) for o in honest)
    assert all(torch.equal(o[0], honest[0][0]) for o in honest)
    comms = group(n, spec, audit=True)
    comms[1].behaviour = make_behaviour("tamper")
    outs = run(comms, xs)
    failed = [o for i, o in enumerate(outs) if i != 1]
    assert all(isinstance(o, AuditFailed) for o in failed)
    assert all("p1" in o.outcome.proven for o in failed)

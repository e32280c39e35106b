"""Error-feedback memory in the all-reduce (issue 10, item 2, second case).

The memory of ``+ef`` / ``+ef21`` / ``+econtrol`` must survive every regroup
(a member dies, a member joins, the order changes), and it is data: a
communicator's ``state_dict()`` restored after an aborted attempt makes the
retried collective repeat exactly."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from gossamer.codecs import make_codec
from gossamer.comm import Communicator
from gossamer.transport.sim import LinkSpec, SimNetwork

SPECS = ["int8+ef", "topk:0.1+ef21", "int8+econtrol", "int8+ef21", "topk:0.1+ef", "sign+ef", "powersgd:2:warm+ef21", "ctopk:4:16+ef:0.9"]
NAME = "pseudo_gradient"


def _inputs(gen, n, like):
    return [[torch.randn(*shape, generator=gen) for shape in like] for _ in range(n)]


async def _round(comms, xs, r):
    for c in comms:
        c.round = r
    outs = await asyncio.gather(*(c.all_reduce(x, name=NAME) for c, x in zip(comms, xs)))
    for out in outs:  # every member decodes the same bytes to the same values
        for t, t0 in zip(out, outs[0]):
            assert torch.equal(t, t0)
    return outs[0]


def _close_to_mean(out, xs, tol):
    for k, t in enumerate(out):
        truth = torch.stack([x[k] for x in xs]).mean(0)
        assert (t - truth).abs().max() < tol


@pytest.mark.parametrize("spec", SPECS)
def test_feedback_codecs_survive_a_member_leaving_and_joining(spec):
    """3 members, then 2 (p2 died: a new epoch), then 4 (p3 joined with a fresh
    communicator), then 3 in another order: no error, bit-identical results."""
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    like = [(16, 12), (37,)]
    ids = ["p0", "p1", "p2"]
    comms = {p: Communicator(net.add_peer(p), ids, codec=make_codec(spec), seed=7) for p in ids}
    gen = torch.Generator().manual_seed(0)
    tol = 3.0 if "topk" in spec or "sign" in spec or "powersgd" in spec else 0.1

    async def main():
        r = 0
        for group, epoch in [(("p0", "p1", "p2"), 0), (("p0", "p1"), 1), (("p0", "p1", "p2", "p3"), 2),
                             (("p3", "p1", "p0"), 3)]:
            if "p3" in group and "p3" not in comms:
                comms["p3"] = Communicator(net.add_peer("p3"), group, codec=make_codec(spec), seed=7)
            members = [comms[p] for p in group]
            if epoch:
                for c in members:
                    c.regroup(group, epoch=epoch)
            for _ in range(3):
                xs = _inputs(gen, len(group), like)
                out = await _round(members, xs, r)
                _close_to_mean(out, xs, tol)
                r += 1

    asyncio.run(main())


@pytest.mark.parametrize("spec", ["int8+ef", "int8+econtrol", "sign+ef"])
def test_the_error_memory_is_delivered_after_a_regroup(spec):
    """What the sender still owes (its error memory) is not dropped when the
    group changes: survivors that contribute zeros after the regroup still
    deliver their memory (a reset memory would deliver exactly zero)."""
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = ["p0", "p1", "p2"]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec(spec), seed=1) for p in ids]
    gen = torch.Generator().manual_seed(3)

    async def main():
        for r in range(3):
            await _round(comms, _inputs(gen, 3, [(101,)]), r)
        survivors = comms[:2]
        for c in survivors:
            c.regroup(("p0", "p1"), epoch=1)
        return await _round(survivors, [[torch.zeros(101)] for _ in survivors], 3)

    out = asyncio.run(main())
    assert float(out[0].abs().max()) > 0


@pytest.mark.parametrize("spec", SPECS)
def test_a_restored_state_dict_repeats_the_all_reduce_exactly(spec):
    """Snapshot every member's state_dict, all-reduce (an attempt that aborts
    after advancing the codec memory), restore, all-reduce again: the same
    result and the same codec state. Without the restore the retry differs."""
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = ["p0", "p1", "p2"]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec(spec), seed=2) for p in ids]
    gen = torch.Generator().manual_seed(5)
    like = [(16, 12), (37,)]

    async def main():
        for r in range(3):
            await _round(comms, _inputs(gen, 3, like), r)
        xs = _inputs(gen, 3, like)
        snaps = [c.state_dict() for c in comms]
        # the snapshot is plain data: tensors, and JSON values elsewhere
        for sd in snaps:
            json.dumps(sd, default=lambda t: t.tolist())
        for c in comms:
            c.regroup(ids, epoch=1)
        first = await _round(comms, xs, 3)
        after_first = [c.state_dict() for c in comms]
        for c, sd in zip(comms, snaps):
            c.load_state_dict(sd)
            c.regroup(ids, epoch=2)
        again = await _round(comms, xs, 3)
        for c in comms:
            c.regroup(ids, epoch=3)
        unrestored = await _round(comms, xs, 3)  # the memory advanced twice now
        return first, again, unrestored, after_first

    first, again, unrestored, after_first = asyncio.run(main())
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, unrestored))


def test_a_fresh_member_and_a_reset_one_agree():
    """``reset_state()`` (what a joiner's algorithm does) leaves a communicator
    equal to a fresh one."""
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = ["p0", "p1"]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec("int8+ef21"), seed=2) for p in ids]
    gen = torch.Generator().manual_seed(5)

    async def main():
        await _round(comms, _inputs(gen, 2, [(50,)]), 0)

    asyncio.run(main())
    fresh = Communicator(SimNetwork(LinkSpec.parse("1gbit,1ms")).add_peer("p0"), ids, codec=make_codec("int8+ef21"))
    comms[0].reset_state()
    assert json.dumps(comms[0].state_dict()) == json.dumps(fresh.state_dict())


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("spec", ["int8+ef", "int8+ef21"])
def test_a_background_all_reduce_not_collected_yet_is_recorded_as_not_started(spec):
    """A restored algorithm runs a collective whose handle it had not collected
    again (Streaming DiLoCo), so ``state_dict`` records that collective's name
    as it was before the collective started, even when it already encoded."""
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = ["p0", "p1", "p2"]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec(spec), seed=2) for p in ids]
    gen = torch.Generator().manual_seed(9)

    async def main():
        for r in range(2):
            await _round(comms, _inputs(gen, 3, [(60,)]), r)
        xs = _inputs(gen, 3, [(60,)])
        before = [c.state_dict() for c in comms]
        for c in comms:
            c.regroup(ids, epoch=1)
            c.round = 2
        handles = [c.start_all_reduce(x, name=NAME) for c, x in zip(comms, xs)]
        for _ in range(10_000):
            if all(h.done() for h in handles):
                break
            await asyncio.sleep(0)
        assert all(h.done() for h in handles)
        mid = [c.state_dict() for c in comms]
        first = [await h.wait() for h in handles]
        assert not all(_same(a, c.state_dict()) for a, c in zip(before, comms))  # the memory advanced
        for c, sd, b in zip(comms, mid, before):
            c.load_state_dict(sd)
            assert _same(c.state_dict(), b)  # ... but the snapshot holds it as before the start
            c.regroup(ids, epoch=2)
        again = await _round(comms, xs, 2)
        return first, again

    first, again = asyncio.run(main())
    assert all(torch.equal(f[0], again[0]) for f in first)

"""Fast checks of the swarm's pure parts: parity vote, protocol parsing,
deadlines and attempt namespaces in the collectives, state transfer layout."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.comm.collectives import CollectiveAborted, Communicator, LinkEstimator
from gossamer.errors import ConfigError, ProtocolError
from gossamer.swarm.protocol import address, decode_message, field, parse_hostport
from gossamer.swarm.state import pack_state, recv_state, send_state
from gossamer.transport.base import Tag
from gossamer.transport.sim import LinkSpec, SimNetwork
from gossamer.verify.hashing import state_hash
from gossamer.verify.parity import majority


def test_majority_picks_the_most_reported_hash_and_names_dissenters():
    v = majority({"a": "h1", "b": "h2", "c": "h1"}, ["c", "b", "a"])
    assert v.agreed == "h1" and v.agreeing == ("c", "a") and v.dissenters == ("b",) and not v.tie


def test_majority_tie_goes_to_seniority():
    v = majority({"a": "h1", "b": "h2"}, ["b", "a"])
    assert v.agreed == "h2" and v.dissenters == ("a",) and v.tie
    assert majority({}).agreed is None


def test_deadline_formula_and_measurements():
    link = LinkEstimator(k=4.0, floor=2.0)
    assert link.deadline(0, 2) == 2.0  # floor
    link.observe_rtt(0.05)
    link.observe_transfer(10_000_000, 1.0 + 2 * 0.05, phases=2)  # 10 MB/s once the round trips are taken out
    assert link.bandwidth == pytest.approx(10e6)
    assert link.deadline(100_000_000, 2) == pytest.approx(4 * (2 * 0.05 + 10.0))


def _group(n):
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    return net, [Communicator(net.add_peer(p), ids) for p in ids]


def test_epoch_namespaces_tags_and_regroup_restarts_op_ids():
    _, comms = _group(3)
    c = comms[0]
    assert c.tag(0, 1) == Tag(0, 0, 1)  # no epoch: the simulator's tags are unchanged
    c.round = 7
    c.skip()
    c.regroup(["p0", "p2"], epoch=5)
    assert c.group == ("p0", "p2") and c.rank == 0 and c._op == 0
    assert c.tag(0, 0) == Tag((5 << 32) | 7, 0, 0)
    assert c.skip() == 0 and c.skip() == 1
    with pytest.raises(ConfigError):
        c.regroup(["p1", "p2"], epoch=6)


def test_all_reduce_in_a_new_epoch_after_regroup_is_correct():
    _, comms = _group(3)
    for c in comms[:2]:
        c.regroup(["p0", "p1"], epoch=9)

    async def main():
        return await asyncio.gather(comms[0].all_reduce(torch.ones(10)), comms[1].all_reduce(3 * torch.ones(10)))

    a, b = asyncio.run(main())
    assert torch.equal(a[0], torch.full((10,), 2.0)) and torch.equal(a[0], b[0])


def test_stalled_member_aborts_the_all_reduce_within_the_deadline():
    _, comms = _group(3)
    for c in comms:
        c.link = LinkEstimator(floor=0.3)

    async def main():
        # p2 never calls all_reduce: it stalls
        return await asyncio.gather(*(c.all_reduce(torch.ones(100)) for c in comms[:2]), return_exceptions=True)

    loop_t0 = asyncio.run(_timed(main))
    results, elapsed = loop_t0
    assert all(isinstance(r, CollectiveAborted) for r in results)
    assert "missed its deadline" in str(results[0])
    assert elapsed < 3.0


def test_dead_member_aborts_the_all_reduce_at_once():
    net, comms = _group(3)
    for c in comms:
        c.link = LinkEstimator(floor=30.0)
    net.kill("p2")

    async def main():
        return await asyncio.gather(*(c.all_reduce(torch.ones(100)) for c in comms[:2]), return_exceptions=True)

    results, elapsed = asyncio.run(_timed(main))
    assert all(isinstance(r, CollectiveAborted) for r in results) and "lost a member" in str(results[0])
    assert elapsed < 5.0


async def _timed(fn):
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = await fn()
    return out, loop.time() - t0


def test_state_transfer_round_trip_and_layout_check():
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    a, b = net.add_peer("a"), net.add_peer("b")
    src = [torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.arange(5, dtype=torch.float32)]
    dst = [torch.zeros(4, 3), torch.zeros(5)]
    blob = pack_state(src, 3, state_hash(src))

    async def main():
        await send_state(a, "b", 77, blob)
        return await recv_state(b, "a", 77, dst, timeout=5)

    assert asyncio.run(main()) == (3, state_hash(src), {})
    assert state_hash(dst) == state_hash(src)

    wrong = [torch.zeros(4, 4), torch.zeros(5)]
    before = state_hash(wrong)

    async def bad():
        await send_state(a, "b", 78, blob)
        return await recv_state(b, "a", 78, wrong, timeout=5)

    with pytest.raises(ProtocolError, match="layout"):
        asyncio.run(bad())
    assert state_hash(wrong) == before  # untouched on error


def test_protocol_fields_are_checked():
    msg = decode_message(msgpack.packb({"op": "ready", "round": 3}), "x")
    assert field(msg, "round", int, "x") == 3
    with pytest.raises(ProtocolError, match="must be int"):
        field({"round": True}, "round", int, "x")
    with pytest.raises(ProtocolError, match="lacks"):
        field({}, "round", int, "x")
    with pytest.raises(ProtocolError):
        decode_message(msgpack.packb([1, 2]), "x")
    with pytest.raises(ProtocolError):
        address(["h", 70000], "x")
    assert parse_hostport("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_hostport(":0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError):
        parse_hostport("nohost")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_message_never_raises_anything_but_protocol_error(data):
    try:
        decode_message(data, "fuzz")
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4), st.integers()),
                       st.one_of(st.none(), st.integers(), st.text(max_size=4), st.binary(max_size=4)), max_size=6))
def test_protocol_messages_with_any_keys_are_protocol_errors_or_maps(obj):
    """Issue 10.7: a map that mixes text and bytes (or int) keys is a ProtocolError, never a TypeError."""
    import msgpack

    from gossamer.errors import ProtocolError
    from gossamer.swarm.protocol import decode_message

    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except Exception:
        return
    try:
        msg = decode_message(data, "fuzz")
    except ProtocolError:
        return
    assert all(isinstance(k, str) for k in msg)

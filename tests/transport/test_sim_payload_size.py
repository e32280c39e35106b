"""``SimNetwork(payload_size=...)``: a message modelled (and counted) as another size, as the planner uses it."""

from __future__ import annotations

import asyncio

import pytest

from gossamer.transport.base import Tag
from gossamer.transport.frame import message_overhead
from gossamer.transport.sim import LinkSpec, SimNetwork


def _deliver(payload_size):
    async def main():
        net = SimNetwork(LinkSpec.parse("8mbit,10ms"), payload_size=payload_size)
        a, b = net.add_peer("a"), net.add_peer("b")
        tag = Tag(0, 0, 0)
        await a.send("b", tag, b"x" * 1_000)
        got = await b.recv("a", tag)
        return got, b.now(), a.counters, b.counters
    return asyncio.run(main())


def test_a_message_modelled_as_its_full_size_takes_that_time_and_is_counted_so():
    seen = []

    def size(src, dst, tag, nbytes):
        seen.append((src, dst, tag, nbytes))
        return 999_000

    got, t, sent, received = _deliver(size)
    assert got == b"x" * 1_000  # what travels is still the real payload
    assert seen == [("a", "b", Tag(0, 0, 0), 1_000)]
    tag = Tag(0, 0, 0)
    full = 999_000 + message_overhead(tag, 999_000)
    segments = -(-full // 1448)
    assert t == pytest.approx((full + (66 + 56) * segments) * 8 / 8e6 + 0.010, rel=1e-12)
    assert sent.sent.payload == 999_000 and sent.sent.framing == message_overhead(tag, 999_000)
    assert received.received.payload == 999_000 and received.received.framing == message_overhead(tag, 999_000)
    # without the hook: the bytes it carries
    _, t_plain, sent_plain, _ = _deliver(None)
    assert sent_plain.sent.payload == 1_000 and t_plain < 0.012 < 1.0 < t

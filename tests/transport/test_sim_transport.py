"""Simulated network: delivery times and byte counts against hand-computed values."""

from __future__ import annotations

import asyncio

import pytest

from gossamer.errors import ConfigError, PeerError
from gossamer.transport.base import Tag
from gossamer.transport.frame import frame_overhead
from gossamer.transport.sim import TCP_IPV4, LinkSpec, SimNetwork


def run(coro):
    return asyncio.run(coro)


def test_link_spec_parse_and_format():
    spec = LinkSpec.parse("100mbit,50ms")
    assert spec.bandwidth_bps == 100e6 and spec.latency_s == pytest.approx(0.05) and spec.loss == 0
    assert LinkSpec.parse("1gbit,5ms,0.01") == LinkSpec(1e9, 0.005, 0.01)
    assert LinkSpec.parse("2.5 Mbit, 120ms").bandwidth_bps == 2.5e6
    assert str(LinkSpec.parse("100mbit,50ms")) == "100mbit,50ms"


@pytest.mark.parametrize("bad", ["100mbit", "fast,50ms", "100mbps,50ms", "100mbit,50", "100mbit,50ms,x", "0mbit,1ms", "1mbit,1ms,1.5", ""])
def test_link_spec_rejects_bad_text(bad):
    with pytest.raises(ConfigError) as err:
        LinkSpec.parse(bad)
    assert "link" in str(err.value) or "bandwidth" in str(err.value)


def test_delivery_time_and_counters_match_hand_computation():
    async def main():
        net = SimNetwork(LinkSpec.parse("8mbit,10ms"))  # 1 byte per microsecond
        a, b = net.add_peer("a"), net.add_peer("b")
        tag = Tag(0, 0, 0)
        payload = b"x" * 999_000
        size = len(payload) + frame_overhead(tag)
        await a.send("b", tag, payload)
        assert a.now() == 0.0  # sends do not block the sender's clock
        got = await b.recv("a", tag)
        assert got == payload
        # TCP segments of at most 1448 bytes, 66 header bytes each on the wire and 56 of acknowledgements
        segments = -(-size // 1448)
        expected = (size + (66 + 56) * segments) * 8 / 8e6 + 0.010
        assert b.now() == pytest.approx(expected, rel=1e-12)
        assert a.counters.sent.payload == 999_000 and a.counters.sent.framing == frame_overhead(tag)
        assert b.counters.received.payload == 999_000 and b.counters.received.framing == frame_overhead(tag)
        assert a.counters.sent_to["b"].messages == 1 and b.counters.received_from["a"].messages == 1

    run(main())


def test_uplink_is_shared_by_messages_sent_at_once_and_serializes_later_ones():
    async def main():
        net = SimNetwork(LinkSpec(8e6, 0.001))
        a, b, c, d = (net.add_peer(x) for x in "abcd")
        t1, t2, t3 = Tag(0, 0, 0), Tag(0, 0, 1), Tag(0, 0, 2)
        n = 10_000
        await a.send("b", t1, b"\0" * n)
        await a.send("c", t2, b"\0" * (2 * n))
        a.compute(0.001)  # a later instant: waits for the uplink
        await a.send("d", t3, b"\0" * n)
        await b.recv("a", t1)
        await c.recv("a", t2)
        await d.recv("a", t3)
        s1, s2, s3 = (TCP_IPV4.wire_bytes(k * n + frame_overhead(t)) for k, t in ((1, t1), (2, t2), (1, t3)))
        assert b.now() == pytest.approx(2 * s1 * 1e-6 + 0.001)  # half the uplink until it is out
        assert c.now() == pytest.approx((s1 + s2) * 1e-6 + 0.001)  # then all of it
        assert d.now() == pytest.approx((s1 + s2 + s3) * 1e-6 + 0.001)  # after both left

    run(main())


def test_receiver_clock_never_goes_back_and_compute_advances_clock():
    async def main():
        net = SimNetwork(LinkSpec(1e9, 0.002))
        a, b = net.add_peer("a"), net.add_peer("b")
        b.compute(5.0)
        await a.send("b", Tag(0, 0, 0), b"hi")
        await b.recv("a", Tag(0, 0, 0))
        assert b.now() == 5.0
        a.compute(1.0)
        await a.send("b", Tag(0, 1, 0), b"hi")
        await b.recv("a", Tag(0, 1, 0))
        assert b.now() == 5.0

    run(main())


def test_out_of_order_tags_are_matched():
    async def main():
        net = SimNetwork(LinkSpec(1e6, 0.0))
        a, b = net.add_peer("a"), net.add_peer("b")
        await a.send("b", Tag(0, 0, 1), b"second")
        await a.send("b", Tag(0, 0, 0), b"first")
        assert await b.recv("a", Tag(0, 0, 0)) == b"first"
        assert await b.recv("a", Tag(0, 0, 1)) == b"second"

    run(main())


def test_recv_waits_for_a_later_send():
    async def main():
        net = SimNetwork(LinkSpec(1e6, 0.0))
        a, b = net.add_peer("a"), net.add_peer("b")

        async def late():
            await asyncio.sleep(0.01)
            await a.send("b", Tag(1, 2, 3), b"late")

        task = asyncio.create_task(late())
        assert await b.recv("a", Tag(1, 2, 3)) == b"late"
        await task

    run(main())


def test_loss_costs_retransmissions_deterministically():
    async def main(seed):
        net = SimNetwork(LinkSpec(8e6, 0.01, loss=0.5), seed=seed)
        a, b = net.add_peer("a"), net.add_peer("b")
        times = []
        for i in range(20):
            await a.send("b", Tag(0, i, 0), b"\0" * 1000)
            await b.recv("a", Tag(0, i, 0))
            times.append(b.now())
        return times

    t1, t2 = run(main(1)), run(main(1))
    assert t1 == t2
    lossless_per_msg = TCP_IPV4.wire_bytes(1000 + frame_overhead(Tag(0, 0, 0))) * 1e-6 + 0.01
    assert t1[-1] > 20 * lossless_per_msg * 1.2  # some attempts were lost and retried


def test_dead_peer_fails_waiters():
    async def main():
        net = SimNetwork(LinkSpec(1e6, 0.0))
        a, b = net.add_peer("a"), net.add_peer("b")
        waiter = asyncio.create_task(b.recv("a", Tag(0, 0, 0)))
        await asyncio.sleep(0)
        net.kill("a")
        with pytest.raises(PeerError, match="'a' is gone"):
            await waiter
        with pytest.raises(PeerError):
            await b.recv("a", Tag(0, 1, 0))

    run(main())


def test_virtual_timeout():
    async def main():
        net = SimNetwork(LinkSpec(8e3, 0.0))  # 1 byte per ms
        a, b = net.add_peer("a"), net.add_peer("b")
        await a.send("b", Tag(0, 0, 0), b"\0" * 1000)
        with pytest.raises(TimeoutError):
            await b.recv("a", Tag(0, 0, 0), timeout=0.5)
        assert b.now() == pytest.approx(0.5)
        assert len(await b.recv("a", Tag(0, 0, 0), timeout=10)) == 1000

    run(main())

"""The simulated link model: downlink contention, asymmetric and per-peer links,
TCP/IP wire bytes, the coordinator's round trips, link spec parsing."""

from __future__ import annotations

import asyncio

import pytest

from gossamer.errors import ConfigError
from gossamer.transport.base import Tag
from gossamer.transport.frame import frame_overhead
from gossamer.transport.sim import TCP_IPV4, LinkSpec, SimNetwork, WireOverhead

TAG = Tag(0, 0, 0)
SIZE = 100_000  # payload bytes


def seconds(rate_bps: float, payload: int = SIZE) -> float:
    """Time one message of ``payload`` bytes takes on a link of ``rate_bps``."""
    return TCP_IPV4.wire_bytes(payload + frame_overhead(TAG)) * 8 / rate_bps


def arrivals(net: SimNetwork, sends: list[tuple[str, str]], payload: int = SIZE) -> dict[tuple[str, str], float]:
    """Send ``payload`` bytes for each (src, dst) at t=0 in this order; the receivers' clocks after each recv."""

    async def main() -> dict[tuple[str, str], float]:
        for src, dst in sends:
            await net.transports()[src].send(dst, TAG, b"\0" * payload)
        out = {}
        for src, dst in sends:
            t = net.transports()[dst]
            lane = t.lane()  # a fresh clock at 0 for each recv: the arrival time itself
            await lane.recv(src, TAG)
            out[(src, dst)] = lane.now()
        return out

    return asyncio.run(main())


def test_wire_bytes_are_tcp_segments_with_headers_and_acknowledgements():
    per = 66 + 56
    assert TCP_IPV4.wire_bytes(1) == 1 + per
    assert TCP_IPV4.wire_bytes(1448) == 1448 + per
    assert TCP_IPV4.wire_bytes(1449) == 1449 + 2 * per
    assert WireOverhead(mss=1000, per_segment=10).wire_bytes(2500) == 2530
    assert WireOverhead(mss=1000, per_segment=10, acks=5).wire_bytes(2500) == 2545


@pytest.mark.parametrize("n", [2, 4, 8])
def test_incast_n_senders_to_one_receiver_takes_n_transfers(n):
    net = SimNetwork(LinkSpec.parse("10mbit,10ms"))
    for i in range(n + 1):
        net.add_peer(f"p{i}")
    got = arrivals(net, [(f"p{i}", f"p{n}") for i in range(n)])
    one = seconds(10e6)
    assert max(got.values()) == pytest.approx(0.010 + n * one, rel=1e-9)
    # work-conserving: the receiver's downlink was busy all the time, one transfer after the other
    assert sorted(got.values()) == pytest.approx([0.010 + k * one for k in range(1, n + 1)], rel=1e-9)


def test_a_fast_downlink_absorbs_slow_senders_until_their_sum_exceeds_it():
    # 4 senders at 10 Mbit/s up into a 100 Mbit/s downlink: no contention
    net = SimNetwork(LinkSpec.parse("10mbit/100mbit,5ms"))
    for i in range(5):
        net.add_peer(f"p{i}")
    got = arrivals(net, [(f"p{i}", "p4") for i in range(4)])
    assert max(got.values()) == pytest.approx(0.005 + seconds(10e6), rel=1e-9)
    # 20 senders at 10 Mbit/s: 200 Mbit/s into 100, twice one transfer
    net = SimNetwork(LinkSpec.parse("10mbit/100mbit,5ms"))
    for i in range(21):
        net.add_peer(f"p{i}")
    got = arrivals(net, [(f"p{i}", "p20") for i in range(20)])
    assert max(got.values()) == pytest.approx(0.005 + 2 * seconds(10e6), rel=1e-6)


def test_asymmetric_link_up_and_down():
    up, down = 10e6, 100e6
    net = SimNetwork(LinkSpec.parse("10mbit/100mbit,20ms"))
    a, b = net.add_peer("a"), net.add_peer("b")
    # a -> b: limited by a's 10 Mbit/s uplink, b's downlink is faster
    assert arrivals(net, [("a", "b")])[("a", "b")] == pytest.approx(0.020 + seconds(up), rel=1e-9)
    # a peer that sends slowly receives fast: a server on 100 Mbit/s up sends to b's 100 Mbit/s downlink
    net = SimNetwork(LinkSpec.parse("10mbit/100mbit,20ms"))
    net.add_peer("server", link=LinkSpec.parse("1gbit,20ms"))
    net.add_peer("home")
    assert arrivals(net, [("server", "home")])[("server", "home")] == pytest.approx(0.020 + seconds(down), rel=1e-9)
    # ... and uploads at a tenth of that
    assert arrivals(net, [("home", "server")])[("home", "server")] == pytest.approx(0.020 + seconds(up), rel=1e-9)
    assert a.peer_id == "a" and b.peer_id == "b"


def test_per_peer_links_latency_is_the_mean_and_loss_the_larger():
    net = SimNetwork(LinkSpec.parse("100mbit,10ms"))
    net.add_peer("near")
    net.add_peer("far", link=LinkSpec.parse("100mbit,90ms,0.01"))
    assert net.link("near", "far").latency_s == pytest.approx(0.050)
    assert net.link("near", "far").loss == 0.01
    assert net.link("near", "near").latency_s == pytest.approx(0.010)
    assert net.access_link("far") == LinkSpec.parse("100mbit,90ms,0.01")
    lossless = SimNetwork(LinkSpec.parse("100mbit,10ms"))
    lossless.add_peer("near")
    lossless.add_peer("far", link=LinkSpec.parse("50mbit/20mbit,90ms"))
    # near's 100 Mbit/s uplink, far's 20 Mbit/s downlink, 50 ms: far's downlink decides
    assert arrivals(lossless, [("near", "far")])[("near", "far")] == pytest.approx(0.050 + seconds(20e6), rel=1e-9)
    # far's 50 Mbit/s uplink decides the other way
    assert arrivals(lossless, [("far", "near")])[("far", "near")] == pytest.approx(0.050 + seconds(50e6), rel=1e-9)


def test_same_link_everywhere_keeps_the_old_meaning():
    spec = LinkSpec.parse("100mbit,50ms,0.02")
    net = SimNetwork(spec)
    net.add_peer("a")
    net.add_peer("b")
    assert net.link("a", "b") == spec


def test_times_are_deterministic():
    def run():
        net = SimNetwork(LinkSpec.parse("20mbit/50mbit,15ms,0.1"), seed=3)
        for i in range(6):
            net.add_peer(f"p{i}")
        return arrivals(net, [(f"p{i}", f"p{j}") for i in range(6) for j in range(6) if i != j])

    assert run() == run()


def test_parse_asymmetric_and_format_round_trip():
    spec = LinkSpec.parse("10mbit/100mbit,20ms")
    assert (spec.up_bps, spec.down_bps, spec.latency_s, spec.loss) == (10e6, 100e6, pytest.approx(0.02), 0.0)
    assert not spec.symmetric and str(spec) == "10mbit/100mbit,20ms"
    sym = LinkSpec.parse("100mbit,50ms")
    assert sym.symmetric and sym.down_bps == sym.up_bps == sym.bandwidth_bps == 100e6 and str(sym) == "100mbit,50ms"
    assert LinkSpec.parse("1gbit/1gbit,5ms") == LinkSpec.parse("1gbit,5ms")
    assert str(LinkSpec.parse("2.5mbit/50mbit,1ms,0.01")) == "2.5mbit/50mbit,1ms,0.01"
    assert LinkSpec(1e6, 0.0, 0.0, 5e6) == LinkSpec.parse("1mbit/5mbit,0ms")


@pytest.mark.parametrize("bad, words", [
    ("10mbit/,20ms", "downlink bandwidth"),
    ("/100mbit,20ms", "uplink bandwidth"),
    ("10mbit/100mbit/1gbit,20ms", "one '/'"),
    ("10mbit/fast,20ms", "downlink bandwidth"),
    ("10mbit/0mbit,20ms", "downlink bandwidth must be > 0"),
    ("10mbps/100mbit,20ms", "uplink bandwidth"),
    ("10mbit/100mbit", "expected UP[/DOWN],LATENCY"),
    ("10mbit/100mbit,-1ms", "latency"),
    ("10mbit,20ms,2", "loss must be in [0, 1)"),
])
def test_bad_specs_say_what_is_wrong(bad, words):
    with pytest.raises(ConfigError) as err:
        LinkSpec.parse(bad)
    text = str(err.value)
    assert words in text and repr(bad) in text and "\n" not in text


def test_coordinator_rendezvous_waits_for_the_last_member_and_its_latency():
    net = SimNetwork(LinkSpec.parse("1gbit,10ms"), coordinator=LinkSpec.parse("1gbit,30ms"))
    ts = [net.add_peer(f"p{i}") for i in range(3)]
    control = net.control
    assert control is not None and control.latency("p0") == pytest.approx(0.020)  # mean of 10 and 30 ms

    async def main():
        return await asyncio.gather(*(control.rendezvous("r0", t.peer_id, clock, ("p0", "p1", "p2"))
                                      for t, clock in zip(ts, (0.0, 1.0, 0.5))))

    got = asyncio.run(main())
    # the last ask leaves at 1.0, reaches the coordinator 20 ms later, every answer 20 ms after that
    assert got == pytest.approx([1.040] * 3, abs=1e-4)


def test_coordinator_messages_are_not_held_up_by_data_in_flight():
    net = SimNetwork(LinkSpec.parse("8mbit,0ms"), coordinator=LinkSpec.parse("8mbit,0ms"))
    a, _ = net.add_peer("a"), net.add_peer("b")

    async def main():
        await a.send("b", TAG, b"\0" * 1_000_000)  # one second of a's uplink
        return await net.control.rendezvous("r", "a", 0.0, ("a",))

    # one more flow on the link: only its own few hundred bytes each way
    assert asyncio.run(main()) == pytest.approx(2 * TCP_IPV4.wire_bytes(400) * 8 / 8e6)


def test_a_dead_member_is_not_waited_for():
    net = SimNetwork(LinkSpec.parse("1gbit,0ms"), coordinator=LinkSpec.parse("1gbit,0ms"))
    for i in range(3):
        net.add_peer(f"p{i}")

    async def main():
        waiting = [asyncio.ensure_future(net.control.rendezvous("r", p, 1.0, ("p0", "p1", "p2"))) for p in ("p0", "p1")]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiting)
        net.kill("p2")
        return await asyncio.gather(*waiting)

    assert asyncio.run(main()) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_pruning_the_downlinks_history_changes_no_time_and_bounds_memory(monkeypatch):
    import gossamer.transport.sim as sim
    from gossamer.sim.runner import run_algorithm
    from gossamer.sim.scenario import Scenario

    sc = Scenario(task="quadratic", algorithms=("streaming_diloco",), peers=5, steps=40, inner_steps=8, evals=1,
                  compute_time=0.01, link="10mbit/20mbit,5ms", coordinator="100mbit,5ms")
    sizes = []
    real_fill = sim._Capacity.fill

    def fill(self, *a):
        sizes.append(len(self.times))
        return real_fill(self, *a)

    monkeypatch.setattr(sim._Capacity, "fill", fill)
    monkeypatch.setattr(sim, "PRUNE_EVERY", 10**9)
    kept = run_algorithm(sc, "streaming_diloco")
    most_kept = max(sizes)
    sizes.clear()
    monkeypatch.setattr(sim, "PRUNE_EVERY", 3)
    pruned = run_algorithm(sc, "streaming_diloco")
    assert pruned.sim_time_s == kept.sim_time_s
    assert pruned.extra["payload_bytes_sent_by_peer"] == kept.extra["payload_bytes_sent_by_peer"]
    assert max(sizes) < most_kept / 4

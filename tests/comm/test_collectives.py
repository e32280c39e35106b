"""Collectives over the simulated network: correctness, bit parity, byte counts."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.comm import Communicator, chunk_bounds
from gossamer.errors import ConfigError
from gossamer.transport.base import Tag
from gossamer.transport.frame import frame_overhead
from gossamer.transport.sim import TCP_IPV4, LinkSpec, SimNetwork


def make_group(n, link="1gbit,1ms", **kw):
    net = SimNetwork(LinkSpec.parse(link))
    ids = [f"p{i}" for i in range(n)]
    return net, [Communicator(net.add_peer(p), ids, **kw) for p in ids]


def gather(*coros):
    async def main():
        return await asyncio.gather(*coros)

    return asyncio.run(main())


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_all_reduce_is_the_mean_and_bit_identical(n):
    _, comms = make_group(n)
    gen = torch.Generator().manual_seed(n)
    inputs = [[torch.randn(7, 3, generator=gen), torch.randn(11, generator=gen)] for _ in range(n)]
    outs = gather(*(c.all_reduce(x) for c, x in zip(comms, inputs)))
    for k in range(2):
        truth = torch.stack([x[k].double() for x in inputs]).mean(0)
        for out in outs:
            assert out[k].shape == inputs[0][k].shape
            assert torch.allclose(out[k].double(), truth, atol=1e-6)
            assert torch.equal(out[k], outs[0][k])  # bit-identical on every peer


def test_all_reduce_of_vector_shorter_than_group():
    _, comms = make_group(5)
    outs = gather(*(c.all_reduce(torch.tensor([float(i), 1.0])) for i, c in enumerate(comms)))
    for out in outs:
        assert out[0].tolist() == [2.0, 1.0]


def test_all_reduce_bytes_are_two_times_n_minus_one_over_n():
    n, d = 4, 1000
    _, comms = make_group(n)
    gather(*(c.all_reduce(torch.ones(d)) for c in comms))
    bounds = chunk_bounds(d, n)
    for c in comms:
        mine = bounds[c.rank][1] - bounds[c.rank][0]
        others = sum(hi - lo for j, (lo, hi) in enumerate(bounds) if j != c.rank)
        # phase 0: every chunk but mine to its owner; phase 1: my reduced chunk to n-1 peers
        assert c.transport.counters.sent.payload == 4 * (others + (n - 1) * mine)
        assert c.transport.counters.sent.messages == 2 * (n - 1)
        assert c.transport.counters.sent.framing == (n - 1) * (frame_overhead(Tag(0, 0, 0)) + frame_overhead(Tag(0, 0, 1)))
    total = sum(c.transport.counters.sent.payload for c in comms)
    assert total == 4 * 2 * (n - 1) * d


def test_all_reduce_sim_time_follows_link_model():
    n, d = 4, 250_000  # 1 MB per peer
    # downlinks much faster than the uplinks: no contention at the receivers (tests/transport/test_link_model.py has it)
    _, comms = make_group(n, link="80mbit/10gbit,20ms")
    gather(*(c.all_reduce(torch.ones(d)) for c in comms))
    # each peer sends 3/4 MB then (after all arrive) another 3/4 MB: 2 latencies + 1.5 MB at 10 MB/s,
    # each 250 kB message with its TCP/IP headers on the wire
    chunk = TCP_IPV4.wire_bytes(250_000 + frame_overhead(Tag(0, 0, 0)))
    t = max(c.transport.now() for c in comms)
    assert t == pytest.approx(2 * 0.020 + 6 * chunk * 8 / 80e6, rel=0.01)


def test_all_gather_and_exchange():
    _, comms = make_group(3)
    outs = gather(*(c.all_gather(f"hello {i}".encode()) for i, c in enumerate(comms)))
    assert all(o == [b"hello 0", b"hello 1", b"hello 2"] for o in outs)
    a, b, _ = comms
    got = gather(a.exchange("p1", b"from a"), b.exchange("p0", b"from b"))
    assert got == [b"from b", b"from a"]


def test_results_independent_of_scheduling_order():
    def run(order):
        _, comms = make_group(4)
        xs = [torch.linspace(0, 1, 101) * (i + 1) ** 0.5 for i in range(4)]

        async def main():
            tasks = {}
            for i in order:
                tasks[i] = asyncio.ensure_future(comms[i].all_reduce(xs[i]))
                await asyncio.sleep(0)
            return [await tasks[i] for i in range(4)]

        return asyncio.run(main())

    a, b = run([0, 1, 2, 3]), run([3, 1, 0, 2])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))


def test_group_validation():
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    t = net.add_peer("x")
    with pytest.raises(ConfigError, match="not in its group"):
        Communicator(t, ["a", "b"])
    with pytest.raises(ConfigError, match="duplicate"):
        Communicator(t, ["x", "x"])


@pytest.mark.parametrize("spec", ["median", "krum", "nnm+cclip", "bucketing:2+geomed", "trimmed_mean"])
def test_robust_all_reduce_matches_whole_vector_rule_and_is_bit_identical(spec):
    from gossamer.aggregate import make_aggregator

    n, f = 7, 1
    _, comms = make_group(n, aggregator=make_aggregator(spec, f))
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(50, generator=gen) for _ in range(n)]
    xs[2] = xs[2] + 100.0  # one far outlier
    outs = gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
    assert all(torch.equal(o[0], outs[0][0]) for o in outs)
    honest = torch.stack([x for i, x in enumerate(xs) if i != 2])
    assert (outs[0][0] - honest.mean(0)).abs().max() < 3.0  # the outlier did not drag it by 100
    if not spec.startswith("bucketing"):
        whole = make_aggregator(spec, f)(torch.stack(xs))
        assert torch.allclose(outs[0][0], whole, atol=1e-5)


def test_non_finite_contribution_is_dropped_and_logged(caplog):
    from gossamer.aggregate import make_aggregator

    n = 5
    _, comms = make_group(n, aggregator=make_aggregator("median", 1))
    xs = [torch.full((20,), float(i)) for i in range(n)]
    xs[4][7] = float("nan")
    with caplog.at_level("WARNING"):
        outs = gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
    assert torch.isfinite(outs[0][0]).all()
    assert torch.equal(outs[0][0], torch.full((20,), 1.5))  # median of 0,1,2,3
    assert all(c.history[-1].dropped == ("p4",) for c in comms)
    assert "p4" in caplog.text


@pytest.mark.parametrize("spec,tol", [("fp16", 1e-3), ("int8", 0.05), ("int4:64", 0.5), ("topk:0.5+ef", 2.0), ("randk:0.5", 4.0), ("sign+ef", 2.0), ("powersgd:2", 2.0)])
def test_all_reduce_with_codec_is_bit_identical_and_bytes_match_encoding(spec, tol):
    from gossamer.codecs import make_codec

    n = 4
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec(spec)) for p in ids]
    gen = torch.Generator().manual_seed(0)
    xs = [[torch.randn(16, 12, generator=gen), torch.randn(30, generator=gen)] for _ in range(n)]
    outs = gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
    for k in range(2):
        assert all(torch.equal(o[k], outs[0][k]) for o in outs)
        truth = torch.stack([x[k] for x in xs]).mean(0)
        assert (outs[0][k] - truth).abs().max() < tol
    raw = sum(c.transport.counters.sent.payload for c in comms)
    assert raw > 0
    if spec in ("int8", "int4:64", "sign+ef"):
        assert raw < 0.5 * 4 * 2 * (n - 1) * (16 * 12 + 30)  # really compressed on the wire


def test_malformed_contribution_costs_only_that_contribution(caplog):
    from gossamer.codecs import make_codec

    n = 3
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec("int8")) for p in ids]

    real_send = comms[2].transport.send

    async def corrupt_send(dst, tag, payload):  # p2 sends garbage in the reduce-scatter phase
        await real_send(dst, tag, b"\x00garbage" if tag.phase == 0 else payload)

    comms[2].transport.send = corrupt_send
    xs = [torch.full((40,), float(i)) for i in range(n)]
    with caplog.at_level("WARNING"):
        outs = gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
    assert all(torch.equal(o[0], outs[0][0]) for o in outs)
    assert torch.isfinite(outs[0][0]).all()
    assert "rejected the contribution of peer p2" in caplog.text


def test_topk_all_reduce_resends_the_mean_without_a_second_loss():
    from gossamer.codecs import make_codec

    n, d = 4, 400
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec("topk:0.05")) for p in ids]
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(d, generator=gen) for _ in range(n)]
    out = gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))[0][0]
    # expected: per chunk, the mean of each contribution's own top-k of that chunk
    expected = torch.zeros(d)
    for lo, hi in chunk_bounds(d, n):
        k = max(1, round(0.05 * (hi - lo)))
        for x in xs:
            piece = x[lo:hi]
            idx = piece.abs().topk(k).indices
            expected[lo + idx] += piece[idx]
    expected /= n
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("codec_spec", [None, "int4", "int8+ef", "fp16"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_a_non_finite_contribution_is_rejected_whole_with_any_codec(codec_spec, bad, caplog):
    """Issue 10.2: one +inf in one peer's vector used to make int4's encode raise
    (the round retried forever) and, raw, to enter the mean (everyone committed
    NaN). Now that contribution is withheld whole and the mean is over the rest."""
    from gossamer.codecs import make_codec

    n = 3
    _, comms = make_group(n, codec=make_codec(codec_spec) if codec_spec else None)
    xs = [torch.full((40,), float(i + 1)) for i in range(n)]
    xs[1][5] = bad
    with caplog.at_level("WARNING"):
        outs = gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
    for out in outs:
        assert torch.isfinite(out[0]).all()
        assert torch.equal(out[0], outs[0][0])  # bit-identical everywhere
    assert torch.allclose(outs[0][0], torch.full((40,), 2.0), atol=0.3)  # mean of 1 and 3
    assert "non-finite" in caplog.text and "p1" in caplog.text


def test_no_finite_contribution_at_all_is_an_error_not_a_nan_state():
    from gossamer.errors import AggregationError

    _, comms = make_group(2)
    xs = [torch.full((8,), float("nan")) for _ in range(2)]

    async def main():
        return await asyncio.gather(*(c.all_reduce(x) for c, x in zip(comms, xs)), return_exceptions=True)

    outs = asyncio.run(main())
    assert all(isinstance(o, AggregationError) for o in outs)


@pytest.mark.parametrize("spec", ["ctopk:64+ef:0.95", "crandk:256+ef"])
def test_sparse_codecs_send_twice_the_compressed_size_whatever_the_group_size(spec):
    """The owner re-sparsifies the mean with its own error feedback: no n*K blow-up."""
    from gossamer.codecs import make_codec

    d = 4096 * 8 * 8
    per_peer = {}
    for n in (2, 4, 8):
        net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
        ids = [f"p{i}" for i in range(n)]
        comms = [Communicator(net.add_peer(p), ids, codec=make_codec(spec)) for p in ids]
        gen = torch.Generator().manual_seed(n)
        xs = [torch.randn(d, generator=gen) for _ in range(n)]
        outs = gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))
        assert all(torch.equal(o[0], outs[0][0]) for o in outs)  # bit parity
        sent = [c.transport.counters.sent.payload for c in comms]
        per_peer[n] = max(sent)
        compressed = make_codec(spec).encoded_size((d,))
        assert per_peer[n] <= 2 * compressed * (n - 1) / n + 64 * n  # + headers of the per-owner pieces
        # what the owner did not send stays in its memory (the next round sends it)
        mem = comms[0].codec.sender_state(("all_reduce", "ag"))
        assert float(mem["e"].abs().sum()) > 0
    assert per_peer[8] < 1.2 * per_peer[2] * (7 / 8) / (1 / 2)  # grows with (n-1)/n only


def test_ctopk_error_feedback_delivers_what_the_owner_held_back_in_later_rounds():
    from gossamer.codecs import make_codec

    n, d, rounds = 4, 256 * 8, 200
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    comms = [Communicator(net.add_peer(p), ids, codec=make_codec("ctopk:16:256:fp32+ef")) for p in ids]
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(d, generator=gen) for _ in range(n)]
    total = torch.zeros(d)
    for r in range(rounds):  # the same contributions every round: the sum of results approaches r * mean
        for c in comms:
            c.round = r
        total += gather(*(c.all_reduce(x) for c, x in zip(comms, xs)))[0][0]
    truth = torch.stack(xs).mean(0) * rounds
    # both memories (senders' and owners') are bounded, so the error does not grow with the rounds
    assert float((total - truth).norm()) < 0.1 * float(truth.norm())

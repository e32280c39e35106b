"""Error-feedback wrappers: state semantics, and item 7 of the design (convergence)."""

from __future__ import annotations

import pytest
import torch

from gossamer.codecs import EF21, EControl, ErrorFeedback, make_codec
from gossamer.errors import CodecError


def vec(seed: int, n: int = 50) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_wrappers_keep_inner_size_and_flags() -> None:
    for spec in ("topk:0.1", "int4:32", "sign:16", "powersgd:2"):
        inner = make_codec(spec)
        for suffix in ("+ef", "+ef21", "+econtrol:0.1"):
            w = make_codec(spec + suffix)
            assert w.spec == spec + suffix
            assert w.encoded_size((12, 10)) == inner.encoded_size((12, 10))
            assert len(w.encode(vec(0, 120).view(12, 10))) == inner.encoded_size((12, 10))
            assert w.whole_tensors == inner.whole_tensors and w.lossless == inner.lossless


def test_ef_residual_semantics() -> None:
    inner = make_codec("topk:0.1")
    ef = make_codec("topk:0.1+ef")
    assert isinstance(ef, ErrorFeedback)
    x1, x2 = vec(1), vec(2)
    d1 = ef.encode(x1, key="a")
    assert d1 == inner.encode(x1)  # e starts at 0
    e1 = x1 - inner.decode(d1, (50,))
    assert torch.allclose(ef.sender_state("a")["e"], e1)
    d2 = ef.encode(x2, key="a")
    assert d2 == inner.encode(x2 + e1)
    assert torch.allclose(ef.sender_state("a")["e"], x2 + e1 - inner.decode(d2, (50,)))
    # the sum of what was decoded plus the residual equals the sum of the inputs
    total = inner.decode(d1, (50,)) + ef.decode(d2, (50,)) + ef.sender_state("a")["e"]
    assert torch.allclose(total, x1 + x2, atol=1e-6)
    # keys are independent; reset forgets
    assert ef.encode(x1, key="b") == d1
    ef.reset("a")
    assert ef.sender_state("a") == {}
    assert ef.encode(x1, key="a") == d1


def test_ef21_sender_and_receiver_estimates_agree() -> None:
    sender, receiver = make_codec("sign:8+ef21"), make_codec("sign:8+ef21")
    assert isinstance(sender, EF21) and isinstance(receiver, EF21)
    inner = make_codec("sign:8")
    g = torch.zeros(50)
    for t in range(5):
        x = vec(10 + t)
        data = sender.encode(x, key=("peer", 0), seed=t)
        assert data == inner.encode(x - g, seed=t)
        g = g + inner.decode(data, (50,), seed=t)
        y = receiver.decode(data, (50,), key=("peer", 0), seed=t)
        assert torch.equal(y, g)
        assert torch.equal(sender.sender_state(("peer", 0))["g"], y)
    # a constant input is tracked: the estimate converges to it
    x = vec(99)
    for t in range(60):
        y = receiver.decode(sender.encode(x, key=1), (50,), key=1)
    assert float((y - x).norm()) < 1e-3 * float(x.norm())
    # returned tensors are copies: mutating them does not touch the state
    y.zero_()
    assert not torch.equal(receiver.receiver_state(1), y)


def test_econtrol_update_and_eta_zero_is_ef21() -> None:
    ec = make_codec("topk:0.2+econtrol:0.3")
    assert isinstance(ec, EControl) and ec.eta == 0.3
    inner = make_codec("topk:0.2")
    e, h = torch.zeros(50), torch.zeros(50)
    for t in range(4):
        x = vec(t)
        data = ec.encode(x, key=0)
        assert data == inner.encode((x - h) + 0.3 * e)
        d = inner.decode(data, (50,))
        e, h = e + x - h - d, h + d
        st = ec.sender_state(0)
        assert torch.allclose(st["e"], e, atol=1e-6) and torch.allclose(st["h"], h, atol=1e-6)
    a, b = make_codec("topk:0.2+econtrol:0.0"), make_codec("topk:0.2+ef21")
    for t in range(4):
        assert a.encode(vec(t), key=0) == b.encode(vec(t), key=0)


def test_bad_payload_leaves_receiver_state_untouched_and_shapes_checked() -> None:
    s, r = make_codec("int8:16+ef21"), make_codec("int8:16+ef21")
    r.decode(s.encode(vec(0), key=0), (50,), key=0)
    before = r.receiver_state(0)
    bad = bytearray(s.encode(vec(1), key=0))
    bad[-1:] = b""
    with pytest.raises(CodecError):
        r.decode(bytes(bad), (50,), key=0)
    assert torch.equal(r.receiver_state(0), before)
    with pytest.raises(CodecError, match="shape"):
        s.encode(vec(0, 40), key=0)
    with pytest.raises(CodecError, match="shape"):
        r.decode(make_codec("int8:16").encode(vec(0, 40)), (40,), key=0)


def _least_squares(spec: str | None, iters: int) -> float:
    """Distributed GD on mean_i 0.5||A_i x - b_i||^2 with compressed worker gradients.

    Returns ||x_T - x*|| / ||x*||. Workers have different quadratics, so the
    local gradients do not vanish at the optimum.
    """
    workers, d = 4, 20
    g = torch.Generator().manual_seed(0)
    A = [torch.randn(30, d, generator=g, dtype=torch.float64) / 30**0.5 for _ in range(workers)]
    b = [torch.randn(30, generator=g, dtype=torch.float64) * (i + 1) for i in range(workers)]
    H = sum(a.T @ a for a in A) / workers
    x_star = torch.linalg.solve(H, sum(a.T @ bb for a, bb in zip(A, b)) / workers)
    lr = 1.0 / float(torch.linalg.eigvalsh(H).max())
    senders = [make_codec(spec) if spec else None for _ in range(workers)]
    server = make_codec(spec) if spec else None
    x = torch.zeros(d, dtype=torch.float64)
    for t in range(iters):
        step = torch.zeros(d, dtype=torch.float64)
        for i, c in enumerate(senders):
            grad = (A[i].T @ (A[i] @ x - b[i])).float()
            if c is not None:
                assert server is not None
                grad = server.decode(c.encode(grad, key=i, seed=t), (d,), key=i, seed=t)
            step += grad.double()
        x = x - lr * step / workers
    return float((x - x_star).norm() / x_star.norm())


def test_feedback_fixes_biased_compression_on_least_squares() -> None:
    iters = 700
    naive = _least_squares("topk:0.1", iters)
    ef21 = _least_squares("topk:0.1+ef21", iters)
    econtrol = _least_squares("topk:0.1+econtrol:0.05", iters)
    assert naive > 0.1  # stalls far from the optimum
    assert ef21 < 1e-6
    assert econtrol < 1e-6
    assert _least_squares(None, iters) < 1e-6  # the budget suffices uncompressed


# ---------------------------------------------------------------- segments of one vector, state as data
@pytest.mark.parametrize("spec", ["int8:16+ef", "topk:0.2+ef21", "sign:8+econtrol:0.1"])
def test_encode_segments_equals_per_segment_encode(spec) -> None:
    """One state over the vector gives the bytes that one state per segment gives."""
    whole, parts = make_codec(spec), make_codec(spec)
    segments = [(0, 20, (20,)), (20, 20, (0,)), (20, 50, (5, 6))]
    for t in range(4):
        x = vec(t)
        got = whole.encode_segments(x, segments, key="v", seeds=[t, t + 1, t + 2])
        want = [parts.encode(x[lo:hi].view(shape), key=("v", i), seed=t + i) if hi > lo else b""
                for i, (lo, hi, shape) in enumerate(segments)]
        assert got == want
    names = whole.state_names
    for name in names:
        st = whole.sender_state("v")[name]
        assert torch.equal(st, torch.cat([parts.sender_state(("v", i)).get(name, torch.zeros(0)).reshape(-1)
                                          for i in range(3)]))


def test_segment_state_is_rekeyed_by_element() -> None:
    """New chunk bounds keep each element's memory; elements no longer named lose theirs."""
    ef = make_codec("int8:16+ef")
    ef.encode_segments(vec(0, 30), [(0, 10, (10,)), (10, 30, (20,))], key="v", seeds=[0, 0])
    e = ef.sender_state("v")["e"]
    assert float(e.abs().max()) > 0
    # the same 30 elements cut elsewhere, listed in another order: the memory follows the elements
    x = vec(1, 30)
    a = make_codec("int8:16+ef")
    got = ef.encode_segments(torch.cat([x[15:], x[:15]]), [(15, 30, (15,)), (0, 15, (15,))], key="v", seeds=[0, 0])
    assert got == [a.inner.encode(x[15:] + e[15:]), a.inner.encode(x[:15] + e[:15])]
    # only elements 5..12 remain: they keep their memory, the rest is dropped
    e2 = ef.sender_state("v")["e"]  # in the order of the last call: elements 15..29, then 0..14
    e2 = torch.cat([e2[15:], e2[:15]])
    assert ef.encode_segments(torch.zeros(7), [(5, 12, (7,))], key="v", seeds=[0]) == [a.inner.encode(e2[5:12])]
    assert ef.sender_state("v")["e"].numel() == 7
    with pytest.raises(CodecError, match="overlap"):
        ef.encode_segments(torch.zeros(10), [(0, 6, (6,)), (4, 8, (4,))], key="w", seeds=[0, 0])
    with pytest.raises(CodecError, match="values"):
        ef.encode_segments(torch.zeros(9), [(0, 10, (10,))], key="w", seeds=[0])


def test_reset_estimates_keeps_error_memory() -> None:
    ec, ef21 = make_codec("topk:0.2+econtrol"), make_codec("topk:0.2+ef21")
    for c in (ec, ef21):
        c.decode(c.encode(vec(0), key=("a", 1)), (50,), key=("a", 1))
        c.encode(vec(1), key=("b", 1))
        c.reset_estimates(lambda k: k[0] == "a")
    assert float(ec.sender_state(("a", 1))["e"].abs().max()) > 0
    assert float(ec.sender_state(("a", 1))["h"].abs().max()) == 0
    assert ec.receiver_state(("a", 1)) is None and ef21.receiver_state(("a", 1)) is None
    assert ef21.sender_state(("a", 1)) == {}
    assert ef21.sender_state(("b", 1)) != {} and float(ec.sender_state(("b", 1))["h"].abs().max()) > 0


@pytest.mark.parametrize("spec", ["int8:16+ef", "topk:0.2+ef21", "sign:8+econtrol:0.1", "powersgd:2:warm+ef"])
def test_state_dict_round_trips_through_json(spec) -> None:
    """State is data: a JSON round trip (lists for tuples) restores it exactly,
    and the restored codec continues bit for bit."""
    import json

    a, b = make_codec(spec), make_codec(spec)
    shape = (40, 40)  # big enough for powersgd's low-rank path (a warm Q)
    for t in range(3):
        a.decode(a.encode(vec(t, 1600).view(shape), key=("n", "rs", "p0", 0, 0), seed=t), shape,
                 key=("n", "rs", "p1", 0, 0), seed=t)
        a.encode_segments(vec(t, 1600), [(0, 1600, shape)], key=("n", "rs", "p0"), seeds=[t])
    sd = a.state_dict()
    if "powersgd" in spec:
        assert sd["inner"]["q"]  # the warm Q is part of the state
    tensors: list[torch.Tensor] = []

    def out(t):
        tensors.append(t)
        return {"__t": len(tensors) - 1}

    def back(d):
        return tensors[d["__t"]] if set(d) == {"__t"} else d

    b.load_state_dict(json.loads(json.dumps(sd, default=out), object_hook=back))
    x = vec(9, 1600).view(shape)
    assert a.encode(x, key=("n", "rs", "p0", 0, 0), seed=5) == b.encode(x, key=("n", "rs", "p0", 0, 0), seed=5)
    assert a.encode_segments(vec(9, 1600), [(0, 1600, shape)], key=("n", "rs", "p0"), seeds=[5]) == \
        b.encode_segments(vec(9, 1600), [(0, 1600, shape)], key=("n", "rs", "p0"), seeds=[5])
    with pytest.raises(CodecError, match="cannot load"):
        make_codec("int8:32+ef").load_state_dict(sd)

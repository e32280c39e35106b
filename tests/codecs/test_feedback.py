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

"""Round trips, stated error bounds, sizes and determinism of every codec."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.codecs import CODEC_NAMES, Codec, make_codec
from gossamer.codecs.sparse import RandKCodec, keep_count
from gossamer.errors import CodecError, ConfigError

ALL_SPECS = [
    "fp32", "fp16", "bf16", "int8:256", "int8:64:sr", "int4:128", "int4:33:sr", "topk:0.1",
    "randk:0.25", "randk:0.25:unbiased", "sign:256", "sign:7", "powersgd:2", "powersgd:3:warm",
    "topk:0.1+ef", "int4:64+ef21", "sign:32+econtrol:0.3", "powersgd:2+ef",
    "ctopk:3:16", "ctopk:5:64:1bit:dct", "ctopk:2:9:fp32+ef:0.9", "crandk:3:16", "crandk:4:9:1bit+ef",
]

shapes = st.lists(st.integers(0, 9), min_size=1, max_size=3).map(tuple) | st.sampled_from(
    [(), (1,), (1000,), (257,), (33, 17), (64, 64), (3, 4, 5)]
)


def rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@settings(max_examples=25, deadline=None, derandomize=True)
@given(spec=st.sampled_from(ALL_SPECS), shape=shapes, seed=st.integers(0, 2**31), scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_size_shape_and_determinism(spec: str, shape: tuple[int, ...], seed: int, scale: float) -> None:
    x = rand(shape, seed, scale)
    a, b = make_codec(spec), make_codec(spec)
    data = a.encode(x, key="k", seed=seed)
    assert isinstance(data, bytes)
    assert len(data) == a.encoded_size(shape)
    assert data == b.encode(x.clone(), key="k", seed=seed)  # same seed, same bytes
    y = make_codec(spec).decode(data, shape, key="k", seed=seed)
    assert y.dtype == torch.float32 and tuple(y.shape) == shape
    assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_noncontiguous_input_and_out(spec: str) -> None:
    x = rand((12, 40), 1).T  # non-contiguous (40, 12)
    c = make_codec(spec)
    d1 = c.encode(x, seed=3)
    assert d1 == make_codec(spec).encode(x.contiguous(), seed=3)
    y = make_codec(spec).decode(d1, (40, 12), seed=3)
    out = torch.full((40, 12), 7.0)
    z = make_codec(spec).decode(d1, (40, 12), seed=3, out=out)
    assert z is out and torch.equal(y, out)


def test_fp32_lossless() -> None:
    x = rand((3, 7), 0)
    c = make_codec("none")
    assert c.lossless and c.spec == "fp32"
    assert torch.equal(c.decode(c.encode(x), (3, 7)), x)
    assert len(c.encode(x)) == 8 + 4 * 21


@given(seed=st.integers(0, 1000), scale=st.sampled_from([1e-3, 1.0, 1000.0]))
@settings(max_examples=20, deadline=None, derandomize=True)
def test_half_precision_bounds(seed: int, scale: float) -> None:
    x = rand((500,), seed, scale)
    for spec, rel, smallest_normal in (("fp16", 2.0**-11, 2.0**-14), ("bf16", 2.0**-8, 2.0**-126)):
        c = make_codec(spec)
        y = c.decode(c.encode(x), x.shape)
        normal = x.abs() >= smallest_normal
        assert bool(((x - y).abs()[normal] <= rel * x.abs()[normal]).all())
        if spec == "fp16":
            assert bool(((x - y).abs()[~normal] <= 2.0**-25).all())
    assert len(make_codec("fp16").encode(x)) == 8 + 2 * 500  # ratio ~2


def test_fp16_overflow_raises() -> None:
    with pytest.raises(CodecError, match="range"):
        make_codec("fp16").encode(torch.tensor([1e6]))
    make_codec("bf16").encode(torch.tensor([1e30]))


@pytest.mark.parametrize("bits,block", [(8, 256), (8, 7), (4, 128), (4, 5)])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3000))
@settings(max_examples=10, deadline=None, derandomize=True)
def test_blockquant_bound(bits: int, block: int, seed: int, n: int) -> None:
    qmax = 127 if bits == 8 else 7
    x = rand((n,), seed) * torch.exp(rand((n,), seed + 1))  # varied magnitudes
    c = make_codec(f"int{bits}:{block}")
    y = c.decode(c.encode(x), (n,))
    nb = math.ceil(n / block)
    pad = torch.zeros(nb * block)
    pad[:n] = x.abs()
    amax = pad.view(nb, block).amax(1).repeat_interleave(block)[:n]
    assert bool(((x - y).abs() <= amax / (2 * qmax) * (1 + 1e-5) + 1e-30).all())
    # ratio formula from the docstring
    assert len(c.encode(x)) == 8 + 4 * nb + (n if bits == 8 else (n + 1) // 2)


def test_quant_ratios() -> None:
    n = 1 << 16
    assert 4 * n / make_codec("int8").encoded_size((n,)) == pytest.approx(3.94, abs=0.01)
    assert 4 * n / make_codec("int4").encoded_size((n,)) == pytest.approx(7.52, abs=0.01)
    assert 4 * n / make_codec("sign").encoded_size((n,)) == pytest.approx(28.4, abs=0.1)


@pytest.mark.parametrize("bits", [8, 4])
def test_stochastic_rounding_unbiased_and_bounded(bits: int) -> None:
    qmax = 127 if bits == 8 else 7
    x = rand((64,), 5)
    c = make_codec(f"int{bits}:64:sr")
    ys = torch.stack([c.decode(c.encode(x, seed=s), (64,)) for s in range(400)])
    scale = float(x.abs().max()) / qmax
    assert float((ys - x).abs().max()) < scale * (1 + 1e-5)
    # mean of 400 draws: standard error <= scale / (2 * 20)
    assert float((ys.mean(0) - x).abs().max()) < scale * 0.2
    assert c.encode(x, seed=1) != c.encode(x, seed=2)


def test_nonfinite_input_rejected() -> None:
    for spec in ALL_SPECS:
        for bad in (float("nan"), float("inf")):
            x = rand((16, 16), 0)
            x[3, 4] = bad
            with pytest.raises(CodecError):
                make_codec(spec).encode(x)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 2000), frac=st.sampled_from([0.001, 0.05, 0.3, 1.0]))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_topk_bound(seed: int, n: int, frac: float) -> None:
    x = rand((n,), seed)
    c = make_codec(f"topk:{frac}")
    y = c.decode(c.encode(x), (n,))
    k = keep_count(frac, n)
    kept = y != 0
    assert int(kept.sum()) <= k
    assert torch.equal(y[kept], x[kept])
    if int(kept.sum()) == k and k < n:
        assert float(x[~kept].abs().max()) <= float(x[kept].abs().min())
    assert float((x - y).norm() ** 2) <= (1 - k / n) * float(x.norm() ** 2) * (1 + 1e-6) + 1e-12
    assert len(c.encode(x)) == 8 + 8 * k


def test_randk_indices_regenerated_and_no_index_bytes() -> None:
    n = 10_000
    x = rand((n,), 2)
    sender, receiver = make_codec("randk:0.01"), make_codec("randk:0.01")
    data = sender.encode(x, seed=77)
    assert len(data) == 8 + 4 * 100  # values only
    y = receiver.decode(data, (n,), seed=77)
    idx = torch.nonzero(y).view(-1)
    assert isinstance(sender, RandKCodec)
    assert torch.equal(idx, sender.indices(n, 77)) and torch.equal(idx, receiver.indices(n, 77))
    assert torch.equal(y[idx], x[idx])
    assert not torch.equal(sender.indices(n, 78), sender.indices(n, 77))
    # a receiver with the wrong seed silently gets other coordinates: the seed is the contract
    assert not torch.equal(receiver.decode(data, (n,), seed=78), y)


def test_randk_unbiased_expectation() -> None:
    x = rand((50,), 3)
    c = make_codec("randk:0.2:unbiased")
    ys = torch.stack([c.decode(c.encode(x, seed=s), (50,), seed=s) for s in range(3000)])
    assert float((ys.mean(0) - x).abs().max()) < 0.35 * float(x.abs().max())
    biased = make_codec("randk:0.2")
    err = torch.stack([(biased.decode(biased.encode(x, seed=s), (50,), seed=s) - x).norm() ** 2 for s in range(500)])
    assert float(err.mean()) == pytest.approx(0.8 * float(x.norm() ** 2), rel=0.1)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 1500), block=st.sampled_from([1, 8, 13, 256]))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_sign_exact_error_identity(seed: int, n: int, block: int) -> None:
    x = rand((n,), seed)
    c = make_codec(f"sign:{block}")
    y = c.decode(c.encode(x), (n,))
    err = 0.0
    for s in range(0, n, block):
        xb = x[s : s + block].double()
        err_b = float(((xb - y[s : s + block].double()) ** 2).sum())
        expect = float((xb**2).sum() - xb.abs().sum() ** 2 / xb.numel())
        assert err_b == pytest.approx(expect, rel=1e-4, abs=1e-5)
        assert err_b <= (1 - 1 / xb.numel()) * float((xb**2).sum()) + 1e-5
        err += err_b
    assert torch.equal(torch.sign(y[x != 0]), torch.sign(x[x != 0]))


def test_powersgd_exact_on_low_rank_and_projection_bound() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(60, 3, generator=g) @ torch.randn(3, 50, generator=g)
    c = make_codec("powersgd:3")
    assert c.whole_tensors
    data = c.encode(m, seed=1)
    assert len(data) == 8 + 4 * 3 * (60 + 50)
    assert torch.allclose(c.decode(data, (60, 50), seed=1), m, atol=1e-4)
    full = torch.randn(60, 50, generator=g)
    y = c.decode(c.encode(full, seed=2), (60, 50))
    assert float((full - y).norm()) < float(full.norm())
    # 4-D conv weight viewed as (out, in*kh*kw)
    w = torch.randn(16, 8, 3, 3, generator=g)
    d = c.encode(w)
    assert len(d) == 8 + 4 * 3 * (16 + 72) and c.decode(d, w.shape).shape == w.shape


def test_powersgd_fallback_and_warm_start() -> None:
    c = make_codec("powersgd:4")
    v = rand((1000,), 0)
    assert c.encode(v) == make_codec("int8:256").encode(v)  # 1-D: fallback payload
    small = rand((4, 4), 0)
    assert c.encoded_size((4, 4)) == make_codec("int8:256").encoded_size((4, 4))
    assert torch.allclose(c.decode(c.encode(small), (4, 4)), small, atol=0.05)
    warm = make_codec("powersgd:1:warm")
    g = torch.Generator().manual_seed(3)
    m = torch.randn(30, 30, generator=g)
    cold_err = float((m - warm.decode(warm.encode(m, key="a"), m.shape)).norm())
    for _ in range(20):  # repeated warm starts = subspace iteration -> top singular vector
        y = warm.decode(warm.encode(m, key="a"), m.shape)
    s = torch.linalg.svdvals(m)
    best = float(torch.sqrt((s[1:] ** 2).sum()))
    assert float((m - y).norm()) <= best * 1.01 <= cold_err


def test_make_codec_grammar() -> None:
    cases = {
        "int8": "int8:256", "none": "fp32", "int4:64:sr": "int4:64:sr", "int8:sr": "int8:256:sr",
        "topk:1e-3+ef": "topk:0.001+ef", "powersgd:4+ef21": "powersgd:4+ef21", "sign+ef": "sign:256+ef",
        "int8+econtrol:0.5": "int8:256+econtrol:0.5", "sign+econtrol": "sign:256+econtrol:0.05",
        "randk:0.01:unbiased": "randk:0.01:unbiased",
    }
    for spec, canon in cases.items():
        c = make_codec(spec)
        assert isinstance(c, Codec) and c.spec == canon and make_codec(canon).spec == canon
    for name in CODEC_NAMES:
        arg = {"topk": ":0.5", "randk": ":0.5", "powersgd": ":2", "ctopk": ":8", "crandk": ":8"}.get(name, "")
        c = make_codec(name + arg)
        assert make_codec(c.spec).spec == c.spec
    for bad in ["", "zip", "int8:0", "int8:abc", "int8:4:sr:x", "topk", "topk:0", "topk:1.5", "topk:nan",
                "randk:0.1:biased", "powersgd", "powersgd:0", "fp16:3", "int8+ef+ef21", "int8+foo",
                "int8+econtrol:-1", "int8+ef:3", "sign:1:2"]:
        with pytest.raises(ConfigError) as exc:
            make_codec(bad)
        assert "accepted" in str(exc.value)


def test_header_faults_named() -> None:
    c = make_codec("int8:256")
    x = rand((300,), 0)
    data = bytearray(c.encode(x))
    with pytest.raises(CodecError, match="element count: expected 301"):
        c.decode(bytes(data), (301,))
    with pytest.raises(CodecError, match="parameters"):
        make_codec("int8:128").decode(bytes(data), (300,))
    with pytest.raises(CodecError, match="codec id"):
        make_codec("int4:256").decode(bytes(data), (300,))
    with pytest.raises(CodecError, match="truncated"):
        c.decode(bytes(data[:-1]), (300,))
    with pytest.raises(CodecError, match="oversized"):
        c.decode(bytes(data) + b"\0", (300,))
    bad = bytearray(data)
    bad[0] ^= 0xFF
    with pytest.raises(CodecError, match="magic"):
        c.decode(bytes(bad), (300,))
    bad = bytearray(data)
    bad[8:12] = bytes.fromhex("0000c07f")  # NaN scale
    with pytest.raises(CodecError, match="scale"):
        c.decode(bytes(bad), (300,))
    assert torch.equal(c.decode(memoryview(bytes(data)), (300,)), c.decode(bytes(data), (300,)))


def test_topk_index_faults() -> None:
    import struct

    c = make_codec("topk:0.1")
    x = rand((100,), 0)
    data = bytearray(c.encode(x))
    idx = list(struct.unpack_from("<10I", data, 8))
    for fault, new in (("duplicate", [idx[0], idx[0]] + idx[2:]), ("unsorted", [idx[1], idx[0]] + idx[2:]),
                       ("out of range", idx[:-1] + [100])):
        bad = bytearray(data)
        struct.pack_into("<10I", bad, 8, *new)
        with pytest.raises(CodecError, match=fault):
            c.decode(bytes(bad), (100,))

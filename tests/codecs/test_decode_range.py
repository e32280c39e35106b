"""Decode never yields NaN, inf or a code outside the encoder's range (issue 10, item 10).

A payload can hold codes the encoder never emits (int4 nibble 0 = -8, int8
-128), scales or values that are NaN, inf or so large that decoding
overflows, and indices out of range. Each must raise CodecError; every
accepted payload decodes to finite values. The cases are hand-built bytes
(deterministic), plus properties run with ``derandomize=True`` (no example
database, the same examples every run) so a fresh clone never turns red by
chance.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossamer.codecs import make_codec
from gossamer.errors import CodecError

PROPERTY = settings(derandomize=True, deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
F32_MAX = float(np.finfo(np.float32).max)


def rand(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def f32(*vals: float) -> bytes:
    return struct.pack(f"<{len(vals)}f", *vals)


def header(spec: str, shape: tuple[int, ...]) -> bytes:
    return make_codec(spec).encode(torch.zeros(shape))[:8]


def max_scale(qmax: int) -> float:
    """Largest float32 s with float32(qmax * s) finite, found by bisection on the bit patterns."""
    lo, hi = 0, 0x7F800000  # bit patterns of 0.0 and inf; qmax * 0 is finite, qmax * inf is not
    with np.errstate(over="ignore"):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            s = np.array([mid], dtype=np.uint32).view(np.float32)[0]
            lo, hi = (mid, hi) if np.isfinite(np.float32(qmax) * s) else (lo, mid)
    return float(np.array([lo], dtype=np.uint32).view(np.float32)[0])


def next_up(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


# ---------------------------------------------------------------- int8 / int4


def test_int4_nibble_minus_8_rejected_not_minus_inf() -> None:
    """The reported case: nibble 0 (-8) times a scale with 7*scale finite but 8*scale = inf."""
    c = make_codec("int4:4")
    s = max_scale(7)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(8) * np.float32(s))  # what the old decoder returned, times -1
    good = header("int4:4", (4,)) + f32(s) + bytes([0x9F, 0x18])  # codes 7, 1, 0, -7 (nibble = code + 8)
    y = c.decode(good, (4,))
    assert bool(torch.isfinite(y).all()) and float(y[0]) == float(np.float32(7) * np.float32(s))
    for i, packed in ((0, bytes([0x90, 0x18])), (1, bytes([0x0F, 0x18])), (3, bytes([0x9F, 0x08]))):
        with pytest.raises(CodecError, match=rf"int4:4: bad code at element {i}: expected -7..7, found -8"):
            c.decode(header("int4:4", (4,)) + f32(s) + packed, (4,))


def test_int4_nibble_zero_rejected_at_any_position_and_padding_checked() -> None:
    n = 7  # odd: the last byte carries one code and a padding nibble
    c = make_codec("int4:3")
    data = c.encode(rand((n,)))
    values = bytearray(data[8 + 4 * 3 :])
    for i in range(n):
        bad = bytearray(values)
        bad[i // 2] &= 0xF0 if i % 2 == 0 else 0x0F
        with pytest.raises(CodecError, match=f"element {i}: expected -7..7, found -8"):
            c.decode(data[: 8 + 12] + bytes(bad), (n,))
    assert values[-1] >> 4 == 0  # the encoder writes a zero padding nibble
    bad = bytearray(values)
    bad[-1] |= 0x80
    with pytest.raises(CodecError, match="padding nibble"):
        c.decode(data[: 8 + 12] + bytes(bad), (n,))


def test_int8_minus_128_rejected() -> None:
    c = make_codec("int8:4")
    data = bytearray(c.encode(rand((10,))))
    for i in (0, 5, 9):
        bad = bytearray(data)
        bad[8 + 4 * 3 + i] = 0x80  # -128
        with pytest.raises(CodecError, match=f"int8:4: bad code at element {i}: expected -127..127, found -128"):
            c.decode(bytes(bad), (10,))
    # the reported overflow: -128 * a scale with 127*scale finite
    s = max_scale(127)
    with pytest.raises(CodecError, match="element 0"):
        c.decode(header("int8:4", (1,)) + f32(s) + bytes([0x80]), (1,))
    y = c.decode(header("int8:4", (2,)) + f32(s) + bytes([0x7F, 0x81]), (2,))  # +-127: the extremes
    assert torch.equal(y, torch.tensor([1.0, -1.0]) * float(np.float32(127) * np.float32(s)))


@pytest.mark.parametrize("bits", [8, 4])
def test_bad_scales_rejected_naming_the_block(bits: int) -> None:
    qmax = 127 if bits == 8 else 7
    spec = f"int{bits}:2"
    c = make_codec(spec)
    assert c.max_scale == max_scale(qmax)
    n = 6
    data = c.encode(rand((n,)))
    for bad_scale in (float("nan"), float("inf"), -float("inf"), -1.0, F32_MAX, next_up(max_scale(qmax))):
        for b in range(3):
            bad = bytearray(data)
            bad[8 + 4 * b : 12 + 4 * b] = f32(bad_scale)
            with pytest.raises(CodecError, match=f"bad scale of block {b}"):
                c.decode(bytes(bad), (n,))
    for ok_scale in (0.0, -0.0, max_scale(qmax), 1e-45):
        ok = bytearray(data)
        ok[8:12] = f32(ok_scale)
        y = c.decode(bytes(ok), (n,))
        assert bool(torch.isfinite(y).all())
        assert float(y[:2].abs().max()) <= float(np.float32(qmax) * np.float32(ok_scale))


@pytest.mark.parametrize("spec", ["int8:4", "int4:4", "int8:4:sr", "int4:4:sr", "int4:3:sr"])
def test_encoder_extremes_stay_in_range(spec: str) -> None:
    """Huge and subnormal blocks: the encoder emits only codes and scales its decoder accepts."""
    c = make_codec(spec)
    qmax = 127 if spec.startswith("int8") else 7
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    x = torch.tensor([
        F32_MAX, -F32_MAX, 1.0, 0.0,           # scale capped so qmax * scale stays finite
        1e-39, 0.0, -1e-39, 5e-40,             # subnormal absmax: qmax / absmax overflows float32
        1e-38, 0.0, -3e-39, 1e-40,
        tiny, 0.0, -tiny, 0.0,
    ])
    for seed in range(3):
        y = c.decode(c.encode(x, seed=seed), tuple(x.shape), seed=seed)
        assert bool(torch.isfinite(y).all())
        block = int(spec.split(":")[1])
        padded = torch.zeros(-(-x.numel() // block) * block)
        padded[: x.numel()] = x.abs()
        amax = padded.view(-1, block).amax(1).repeat_interleave(block)[: x.numel()]
        slack = (qmax + 1) * 2.0**-149
        bound = amax / (qmax if spec.endswith(":sr") else 2 * qmax) * (1 + 1e-5) + slack
        assert bool(((x.double() - y.double()).abs() <= bound.double()).all()), (x, y)
        if block == 4 and not spec.endswith(":sr"):  # signs survive in the subnormal block
            assert float(y[4]) > 0 and float(y[5]) == 0 and float(y[6]) < 0


@st.composite
def quant_payloads(draw: st.DrawFn) -> tuple[str, int, bytes, bool, list[float], list[int]]:
    """A header-valid int8/int4 payload whose scales and codes may be out of range."""
    bits = draw(st.sampled_from([8, 4]))
    block = draw(st.sampled_from([1, 3, 8]))
    n = draw(st.integers(1, 20))
    qmax = 127 if bits == 8 else 7
    smax = max_scale(qmax)
    nb = -(-n // block)
    good_scale = st.floats(0.0, smax, width=32)
    any_scale = st.floats(width=32) | st.sampled_from([next_up(smax), F32_MAX, -0.0, -1.0])
    scales = draw(st.lists(good_scale | any_scale if draw(st.booleans()) else good_scale, min_size=nb, max_size=nb))
    lo = -128 if bits == 8 else -8
    code = st.integers(-qmax, qmax)
    codes = draw(st.lists(code | st.just(lo) if draw(st.booleans()) else code, min_size=n, max_size=n))
    pad = draw(st.sampled_from([0, 0, 0, 5])) if bits == 4 and n % 2 else 0
    if bits == 8:
        body = np.array(codes, dtype=np.int8).tobytes()
    else:
        nib = [q + 8 for q in codes] + ([pad] if n % 2 else [])
        body = bytes(nib[i] | nib[i + 1] << 4 for i in range(0, len(nib), 2))
    spec = f"int{bits}:{block}"
    valid = all(0.0 <= s <= smax for s in scales) and lo not in codes and pad == 0
    data = header(spec, (n,)) + f32(*scales) + body
    return spec, n, data, valid, scales, codes


@PROPERTY
@given(case=quant_payloads())
def test_quant_decode_rejects_exactly_the_out_of_range_payloads(
    case: tuple[str, int, bytes, bool, list[float], list[int]]
) -> None:
    spec, n, data, valid, scales, codes = case
    c = make_codec(spec)
    if not valid:
        with pytest.raises(CodecError):
            c.decode(data, (n,))
        return
    y = c.decode(data, (n,))
    block = int(spec.split(":")[1])
    expect = np.array(codes, dtype=np.float32) * np.repeat(np.array(scales, dtype=np.float32), block)[:n]
    assert bool(torch.isfinite(y).all())
    assert np.array_equal(y.numpy(), expect)


# ---------------------------------------------------------------- floats


@pytest.mark.parametrize("spec,bad,ok", [
    ("fp32", ["0000807f", "0000c07f", "000080ff", "0100807f"], ["ffff7f7f", "ffff7fff", "01000000"]),
    ("fp16", ["007c", "007e", "00fc", "017c"], ["ff7b", "fffb", "0100"]),
    ("bf16", ["807f", "c07f", "80ff", "817f"], ["7f7f", "7fff", "0100"]),
])
def test_float_nonfinite_bit_patterns_rejected(spec: str, bad: list[str], ok: list[str]) -> None:
    c = make_codec(spec)
    data = c.encode(rand((5,)))
    width = len(data[8:]) // 5
    for pattern in bad:
        for i in (0, 4):
            payload = bytearray(data)
            payload[8 + width * i : 8 + width * (i + 1)] = bytes.fromhex(pattern)
            with pytest.raises(CodecError, match="finite"):
                c.decode(bytes(payload), (5,))
    for pattern in ok:  # largest finite, its negative, smallest subnormal
        payload = bytearray(data)
        payload[8 : 8 + width] = bytes.fromhex(pattern)
        assert bool(torch.isfinite(c.decode(bytes(payload), (5,))).all())


# ---------------------------------------------------------------- topk / randk


def test_topk_bad_indices_and_values() -> None:
    c = make_codec("topk:0.25")  # n = 8 -> k = 2
    h = header("topk:0.25", (8,))
    assert bool(torch.isfinite(c.decode(h + struct.pack("<2I", 0, 7) + f32(F32_MAX, -F32_MAX), (8,))).all())
    for idx, fault in (((0, 8), "out of range"), ((0, 0xFFFFFFFF), "out of range"), ((3, 3), "duplicate"),
                       ((5, 2), "unsorted")):
        with pytest.raises(CodecError, match=fault):
            c.decode(h + struct.pack("<2I", *idx) + f32(1.0, 2.0), (8,))
    for v in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(CodecError, match="finite"):
            c.decode(h + struct.pack("<2I", 1, 2) + f32(1.0, v), (8,))
    one = make_codec("topk:0.1")  # n = 5 -> k = 1: no neighbour to compare with
    with pytest.raises(CodecError, match="out of range"):
        one.decode(header("topk:0.1", (5,)) + struct.pack("<I", 5) + f32(1.0), (5,))


def test_randk_nonfinite_and_unbiased_overflow() -> None:
    h = header("randk:0.5", (4,))
    for v in (float("nan"), float("inf")):
        with pytest.raises(CodecError, match="finite"):
            make_codec("randk:0.5").decode(h + f32(1.0, v), (4,))
    assert bool(torch.isfinite(make_codec("randk:0.5").decode(h + f32(F32_MAX, 1.0), (4,))).all())
    # n/k = 2: a finite value above F32_MAX / 2 scales to inf
    c = make_codec("randk:0.5:unbiased")
    with pytest.raises(CodecError, match="overflows"):
        c.decode(header("randk:0.5:unbiased", (4,)) + f32(F32_MAX, 1.0), (4,))
    y = c.decode(header("randk:0.5:unbiased", (4,)) + f32(F32_MAX / 2, 1.0), (4,))
    assert bool(torch.isfinite(y).all())
    # and the encoder refuses input it could only send as such a payload
    with pytest.raises(CodecError, match="too large"):
        c.encode(torch.full((4,), 3e38))


# ---------------------------------------------------------------- sign


def test_sign_bad_scales_and_huge_input() -> None:
    c = make_codec("sign:4")
    data = c.encode(rand((6,)))
    for v in (float("nan"), float("inf"), -float("inf"), -1.0):
        bad = bytearray(data)
        bad[12:16] = f32(v)
        with pytest.raises(CodecError, match="scale"):
            c.decode(bytes(bad), (6,))
    big = bytearray(data)
    big[8:12] = f32(F32_MAX)
    assert bool(torch.isfinite(c.decode(bytes(big), (6,))).all())
    # finite input whose float32 block sum overflows is encoded, not refused as "NaN or inf"
    x = torch.tensor([3e38, -3e38, 3e38, 1.0, 2.0])
    y = c.decode(c.encode(x), (5,))
    assert bool(torch.isfinite(y).all()) and float(y[0]) == pytest.approx((9e38 + 1) / 4, rel=1e-6)


# ---------------------------------------------------------------- powersgd


def test_powersgd_factors_whose_product_overflows() -> None:
    c = make_codec("powersgd:2")
    shape = (64, 64)
    h = header("powersgd:2", shape)
    assert len(h) + 4 * 2 * 128 == c.encoded_size(shape)

    def factors(p: float, q: float, p_col: int = 0, q_col: int = 0) -> bytes:
        pm, qm = torch.zeros(64, 2), torch.zeros(64, 2)
        pm[:, p_col], qm[:, q_col] = p, q
        return h + pm.numpy().tobytes() + qm.numpy().tobytes()

    with pytest.raises(CodecError, match="finite factors"):
        c.decode(factors(float("inf"), 1.0), shape)
    with pytest.raises(CodecError, match="overflows"):
        c.decode(factors(1e20, 1e20), shape)  # each entry 1e40
    assert bool(torch.isfinite(c.decode(factors(1e10, 1e10), shape)).all())
    # the factor bound fails (1e30 * 1e30) but P Q^T is exactly 0: checked on the product, accepted
    y = c.decode(factors(1e30, 1e30, p_col=0, q_col=1), shape)
    assert bool((y == 0).all())
    # vectors use the int8 fallback, with its checks
    with pytest.raises(CodecError, match="-128"):
        c.decode(header("powersgd:2", (3,)) + f32(1.0) + bytes([1, 0x80, 2]), (3,))
    with pytest.raises(CodecError, match="too large"):
        c.encode(torch.full(shape, 3e38))


# ---------------------------------------------------------------- feedback wrappers


@pytest.mark.parametrize("spec", ["fp32+ef21", "fp32+econtrol:0.1"])
def test_receiver_estimate_overflow_rejected_and_state_kept(spec: str) -> None:
    sender, receiver = make_codec(spec), make_codec(spec)
    data = sender.encode(torch.full((4,), 3e38), key=0)
    first = receiver.decode(data, (4,), key=0)
    assert bool(torch.isfinite(first).all())
    with pytest.raises(CodecError, match="overflows"):  # 3e38 + 3e38 (a replayed or hostile payload)
        receiver.decode(data, (4,), key=0)
    assert torch.equal(receiver.receiver_state(0), first)
    y = receiver.decode(make_codec("fp32").encode(torch.full((4,), -3e38)), (4,), key=0)
    assert bool(torch.isfinite(y).all())


def test_sender_state_overflow_raises_and_state_kept() -> None:
    c = make_codec("topk:0.5+econtrol:0.05")
    x = torch.full((2,), 3e38)
    c.encode(x, key=0)
    before = c.sender_state(0)
    with pytest.raises(CodecError, match="sender state"):
        c.encode(x, key=0)  # e + x - h overflows on the coordinate not sent
    after = c.sender_state(0)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_wrapped_codecs_keep_inner_checks() -> None:
    for spec in ("int4:4+ef", "int4:4+ef21", "int4:4+econtrol"):
        with pytest.raises(CodecError, match="found -8"):
            make_codec(spec).decode(header("int4:4", (2,)) + f32(1.0) + bytes([0x90]), (2,), key=0)


# ---------------------------------------------------------------- every codec, arbitrary bodies

SPECS = [
    "fp32", "fp16", "bf16", "int8:4", "int8:16:sr", "int4:4", "int4:5:sr", "topk:0.3", "randk:0.3",
    "randk:0.3:unbiased", "sign:3", "powersgd:1", "powersgd:2:warm", "int4:4+ef", "fp32+ef21",
    "bf16+econtrol:0.1", "ctopk:3:16", "ctopk:2:9:1bit:dct", "ctopk:4:16:fp32", "crandk:3:16",
]
SHAPES = [(1,), (7,), (16,), (9, 7), (2, 3, 4)]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, tuple[int, ...], bytes]:
    spec = draw(st.sampled_from(SPECS))
    shape = draw(st.sampled_from(SHAPES))
    size = make_codec(spec).encoded_size(shape) - 8
    return spec, shape, header(spec, shape) + draw(st.binary(min_size=size, max_size=size))


@PROPERTY
@given(case=bodies())
def test_any_body_of_the_right_length_raises_or_decodes_finite(case: tuple[str, tuple[int, ...], bytes]) -> None:
    spec, shape, data = case
    c = make_codec(spec)
    for _ in range(2):  # twice: the stateful wrappers add the second decode to the first
        try:
            y = c.decode(data, shape, key=0, seed=1)
        except CodecError:
            continue
        assert y.dtype == torch.float32 and tuple(y.shape) == shape
        assert bool(torch.isfinite(y).all())

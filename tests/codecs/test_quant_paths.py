"""int8/int4: the numba kernels, the torch path and the original encoder agree bit for bit.

``legacy_encode`` / ``legacy_decode`` are a frozen copy of the encoder and decoder
as they were before the kernels (commit 8c66163): the payload bytes are the wire
format, so every path must reproduce them exactly, signed zero scales included,
and decode them to the same bits. The ``path`` fixture forces the torch path or
the kernels (skipped when numba is not installed) at every size and splits the
kernels' work into many threads, so small inputs exercise the same code as big
ones. Properties run with ``derandomize=True``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossamer.codecs import make_codec
from gossamer.codecs import quant
from gossamer.codecs.base import HEADER_SIZE, pack_header, spec_tag
from gossamer.errors import CodecError

PROPERTY = settings(derandomize=True, deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])
PATHS = ["torch", "kernel"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "kernel":
        if not quant.accelerated():
            pytest.skip("numba is not installed (pip install gossamer[fast])")
        monkeypatch.setattr(quant, "_ACCEL_MIN", 0)
        monkeypatch.setattr(quant, "_PART_MIN", 64)  # several threads even for small inputs
        monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    else:
        monkeypatch.setattr(quant, "_ACCEL_MIN", 1 << 62)
    yield request.param


# ---------------------------------------------------------------- the frozen reference


def legacy_encode(bits: int, block: int, sr: bool, x: torch.Tensor, seed: int) -> bytes:
    """The encoder of commit 8c66163, unchanged but for names."""
    flat = x.detach().to(torch.float32).reshape(-1).contiguous()
    n = flat.numel()
    qmax = 127 if bits == 8 else 7
    spec = f"int{bits}:{block}" + (":sr" if sr else "")
    header = pack_header(4 if bits == 8 else 5, spec_tag(spec), n)
    if n == 0:
        return header
    magic = 12582912.0 + (8.0 if bits == 4 else 0.0)
    low_byte = 0 if sys.byteorder == "little" else 3
    gen = None
    if sr:
        gen = torch.Generator(device="cpu")
        gen.manual_seed((seed * 0x9E3779B1 + 1) & 0x7FFF_FFFF_FFFF_FFFF)
    nb = -(-n // block)
    scales = torch.empty(nb, dtype=torch.float32)
    cap = min(n, max(1, (1 << 20) // block) * block)
    scratch = torch.empty(cap, dtype=torch.float32)
    lo = torch.empty(cap, dtype=torch.float32)
    parts: list[bytes] = [header, b""]
    nib = np.empty(n + (n & 1), dtype=np.uint8) if bits == 4 else None
    for start, stop, rows, width in quant._chunks(n, block):
        m = stop - start
        b0 = start // block
        xv = flat[start:stop].view(rows, width)
        sc = scratch[:m].view(rows, width)
        amax = torch.amax(xv, dim=1)
        torch.amin(xv, dim=1, out=lo[:rows]).neg_()
        torch.maximum(amax, lo[:rows], out=amax)
        inv = float(qmax) / amax
        inv.masked_fill_(amax == 0, 0.0)
        scales[b0 : b0 + rows] = amax
        torch.mul(xv, inv[:, None], out=sc)
        if np.isinf(inv.numpy()).any():
            tiny = torch.isinf(inv)
            sc[tiny] = xv[tiny].div(amax[tiny, None]).mul_(float(qmax))
        if gen is not None:
            sc.add_(torch.rand((rows, width), generator=gen)).floor_().clamp_(-qmax, qmax)
        sc.add_(magic)
        low = scratch[:m].numpy().view(np.uint8)[low_byte::4]
        if nib is None:
            parts.append(low.tobytes())
        else:
            nib[start:stop] = low
    if nib is not None:
        nib[n:] = 0
        parts.append((nib[0::2] | (nib[1::2] << 4)).tobytes())
    if not bool(torch.isfinite(scales).all()):
        raise CodecError(f"{spec}: expected finite input, found NaN or inf")
    scales.div_(float(qmax)).clamp_(max=quant._SMAX[bits])
    parts[1] = scales.numpy().astype("<f4").tobytes()
    return b"".join(parts)


def legacy_decode(bits: int, block: int, data: bytes, n: int) -> torch.Tensor:
    """The decoder of commit 8c66163 for a valid payload."""
    nb = -(-n // block)
    scales = torch.from_numpy(np.frombuffer(data, "<f4", nb, HEADER_SIZE).astype(np.float32))
    off = HEADER_SIZE + 4 * nb
    flat = torch.empty(n)
    if bits == 8:
        q = torch.from_numpy(np.frombuffer(data, np.int8, n, off).copy())
    else:
        q = torch.from_numpy(np.frombuffer(data, np.uint8, (n + 1) // 2, off).copy())
    for start, stop, rows, width in quant._chunks(n, block):
        b0 = start // block
        ov = flat[start:stop]
        if bits == 8:
            ov.copy_(q[start:stop])
        else:
            p = q[start // 2 : (stop + 1) // 2]
            pair = torch.stack((p & 15, p >> 4), dim=1).view(-1)
            ov.copy_(pair[start & 1 : (start & 1) + stop - start])
            ov.sub_(8.0)
        ov.view(rows, width).mul_(scales[b0 : b0 + rows, None])
    return flat


# ---------------------------------------------------------------- inputs


MAGNITUDES = [1.0, 1e-3, 1e30, 1e37, 3e38, 1e-37, 1e-39, 1e-44]


@st.composite
def inputs(draw: st.DrawFn) -> tuple[int, int, bool, torch.Tensor, int]:
    """(bits, block, sr, x, seed): blocks of random sizes and magnitudes, all-zero blocks of +0,
    -0 or both, huge values near FLT_MAX, subnormals; n rarely a multiple of the block."""
    bits = draw(st.sampled_from([8, 4]))
    block = draw(st.sampled_from([1, 2, 3, 7, 32, 33, 128, 256]))
    sr = draw(st.booleans())
    n = draw(st.integers(1, 3000))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    for start in range(0, n, block):
        kind = draw(st.sampled_from(["plain", "plain", "scaled", "zero", "-zero", "mixed-zero", "one-big"]))
        xb = x[start : start + block]
        if kind == "scaled":
            xb.mul_(draw(st.sampled_from(MAGNITUDES))).clamp_(-3.4e38, 3.4e38)
        elif kind == "zero":
            xb.zero_()
        elif kind == "-zero":
            xb.fill_(-0.0)
        elif kind == "mixed-zero":
            xb.copy_(torch.where(xb > 0, torch.tensor(0.0), torch.tensor(-0.0)))
        elif kind == "one-big":
            xb.mul_(1e-30)[0] = 3.0e38
    return bits, block, sr, x, seed


def codec(bits: int, block: int, sr: bool) -> quant.BlockQuantCodec:
    return make_codec(f"int{bits}:{block}" + (":sr" if sr else ""))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


# ---------------------------------------------------------------- tests


@PROPERTY
@given(case=inputs())
def test_every_path_gives_the_legacy_bytes_and_decode(case: tuple[int, int, bool, torch.Tensor, int]) -> None:
    bits, block, sr, x, seed = case
    want = legacy_encode(bits, block, sr, x, seed)
    want_y = legacy_decode(bits, block, want, x.numel())
    with pytest.MonkeyPatch.context() as mp:
        for p in PATHS:
            if p == "kernel":
                if not quant.accelerated():
                    continue
                mp.setattr(quant, "_ACCEL_MIN", 0)
                mp.setattr(quant, "_PART_MIN", 64)
                mp.setattr(torch, "get_num_threads", lambda: 3)
            else:
                mp.setattr(quant, "_ACCEL_MIN", 1 << 62)
            c = codec(bits, block, sr)
            data = c.encode(x, seed=seed)
            assert data == want, p
            y = c.decode(want, tuple(x.shape), seed=seed)
            assert same_bits(y, want_y), p
            assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("spec", ["int8:256", "int4:128", "int8:256:sr", "int4:33", "int4:33:sr", "int8:7"])
def test_large_inputs_split_across_threads(path: str, spec: str) -> None:
    """Sizes past one torch chunk (1M elements), zero blocks at chunk edges, odd block sizes."""
    n = (1 << 20) * 2 + 12345
    x = torch.randn(n, generator=torch.Generator().manual_seed(7))
    x[(1 << 20) - 500 : (1 << 20) + 500] = 0.0
    x[(1 << 20) + 100 : (1 << 20) + 200] = -0.0
    x[-40:] = -0.0
    x[5000:6000] *= 1e-40
    c = make_codec(spec)
    want = legacy_encode(c.bits, c.block, c.stochastic, x, 11)
    assert c.encode(x, seed=11) == want
    out = torch.full((n,), float("nan"))
    assert c.decode(want, (n,), seed=11, out=out) is out
    assert same_bits(out, legacy_decode(c.bits, c.block, want, n))


@pytest.mark.parametrize("spec", ["int8:4", "int4:4", "int4:3", "int8:256"])
def test_non_finite_input_rejected_on_both_paths(path: str, spec: str) -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(1000)
        x[997] = bad
        with pytest.raises(CodecError, match=rf"{spec}: expected finite input, found NaN or inf"):
            make_codec(spec).encode(x)


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[str, int, bytes]:
    """A valid payload with bad codes, a bad padding nibble or bad scales written into it."""
    spec = draw(st.sampled_from(["int8:4", "int8:33", "int4:4", "int4:3", "int4:33"]))
    n = draw(st.integers(1, 400))
    c = make_codec(spec)
    data = bytearray(c.encode(torch.randn(n, generator=torch.Generator().manual_seed(n))))
    nb = -(-n // c.block)
    off = HEADER_SIZE + 4 * nb
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["code", "code", "padding", "scale"]))
        if kind == "code":
            i = draw(st.integers(0, n - 1))
            if c.bits == 8:
                data[off + i] = 0x80
            else:
                data[off + i // 2] &= 0xF0 if i % 2 == 0 else 0x0F
        elif kind == "padding" and c.bits == 4 and n & 1:
            data[-1] |= draw(st.integers(1, 15)) << 4
        elif kind == "scale":
            b = draw(st.integers(0, nb - 1))
            pattern = draw(st.sampled_from(["0000c07f", "0000807f", "000080ff", "000080bf", "ffff7f7f"]))
            data[HEADER_SIZE + 4 * b : HEADER_SIZE + 4 * b + 4] = bytes.fromhex(pattern)
    return spec, n, bytes(data)


@PROPERTY
@given(case=corrupted())
def test_both_paths_reject_the_same_payloads_with_the_same_message(case: tuple[str, int, bytes]) -> None:
    spec, n, data = case
    outcomes = []
    with pytest.MonkeyPatch.context() as mp:
        for p in PATHS:
            if p == "kernel":
                if not quant.accelerated():
                    continue
                mp.setattr(quant, "_ACCEL_MIN", 0)
            else:
                mp.setattr(quant, "_ACCEL_MIN", 1 << 62)
            try:
                y = make_codec(spec).decode(data, (n,))
                assert bool(torch.isfinite(y).all())
                outcomes.append(("ok", y.numpy().tobytes()))
            except CodecError as exc:
                outcomes.append(("error", str(exc)))
    assert all(o == outcomes[0] for o in outcomes), outcomes

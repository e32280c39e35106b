"""Block-wise absmax quantization: ``int8[:BLOCK][:sr]`` and ``int4[:BLOCK][:sr]``.

The flat tensor is cut into blocks of ``BLOCK`` consecutive values (the last
block may be shorter). Per block b, ``scale_b = max|x_b| / Q`` with
``Q = 127`` (int8) or ``Q = 7`` (int4), and each value is sent as the integer
``q = round(x / scale_b)`` in ``[-Q, Q]``; ``decode`` returns ``q * scale_b``.

Payload: 8-byte header | ``nb`` fp32 scales | values, where ``nb =
ceil(n / BLOCK)`` and values are ``n`` int8 bytes (int8) or ``ceil(n/2)``
bytes of two 4-bit nibbles ``q + 8`` (int4; low nibble = even index).

Compression ratio (fp32 bytes / payload bytes):

* int8: ``4n / (8 + n + 4 ceil(n/B))`` -> ``4 / (1 + 4/B)``: 3.94 at B=256.
* int4: ``4n / (8 + ceil(n/2) + 4 ceil(n/B))`` -> ``8 / (1 + 8/B)``: 7.52 at B=128.

Error bound (per element, block b): round-to-nearest gives
``|x - x^| <= scale_b / 2 = max|x_b| / (2Q)`` (max|x_b|/254 for int8,
max|x_b|/14 for int4), and values equal to the block absmax are exact.
With stochastic rounding (``:sr``), ``q = floor(x/scale_b + u)`` with
``u ~ U[0,1)`` drawn from a generator seeded by ``seed``: the decode is
unbiased (``E[x^] = x``) and ``|x - x^| < scale_b``. Use a fresh seed per
message (e.g. derived from the round) to keep the noise independent.

Encoders raise CodecError for non-finite input (caught on the block scales).
Blocks whose absmax is so small that ``Q / absmax`` overflows float32
(below ~1e-37) are quantized by division instead, so they still get codes in
``[-Q, Q]`` (their scale is subnormal: the error bound holds up to an
absolute ``(Q+1) 2^-149``). Scales are capped at ``codec.max_scale``, the
largest float32 ``s`` with ``Q * s`` finite in float32 (only input within a
few ulps of float32's max is affected).

Decoding never yields NaN, inf or a value outside ``[-Q scale_b, Q scale_b]``:
the decoder rejects with CodecError (naming block or element) any scale that
is NaN, negative or above ``max_scale`` (so ``|q * scale| <= fl(Q * scale)``
is finite for every ``|q| <= Q``), any code the encoder never emits (int8
``-128``, int4 nibble ``0`` i.e. ``-8``) and, for int4 with odd ``n``, a
non-zero padding nibble.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable

import numpy as np
import torch

from gossamer.errors import CodecError

from .base import (
    HEADER_SIZE,
    Codec,
    as_float32_flat,
    alloc_out,
    check_payload,
    frombuffer,
    make_generator,
    numel,
    pack_header,
    spec_tag,
    tensor_bytes,
)

__all__ = ["BlockQuantCodec"]

_IDS = {8: 4, 4: 5}
_DEFAULT_BLOCK = {8: 256, 4: 128}


def _max_scale(qmax: int) -> float:
    """Largest float32 ``s`` with ``float32(qmax * s)`` finite."""
    q = np.float32(qmax)
    s = np.float32(float(np.finfo(np.float32).max) / qmax)
    with np.errstate(over="ignore"):
        while not np.isfinite(q * s):
            s = np.nextafter(s, np.float32(0))
        while np.isfinite(q * np.nextafter(s, np.float32(np.inf))):
            s = np.nextafter(s, np.float32(np.inf))
    return float(s)


_SMAX = {8: _max_scale(127), 4: _max_scale(7)}

_MAGIC = 12582912.0  # 1.5 * 2**23
_LOW = 0 if sys.byteorder == "little" else 3  # index of the low byte of a float32
_CHUNK = 1 << 20  # elements per pass: the 4 MiB float scratch stays in L3; few parallel regions


def _chunks(n: int, block: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, rows, width)`` pieces of ``[0, n)``: whole blocks, then the short tail block."""
    per = max(1, _CHUNK // block) * block
    nfull = (n // block) * block
    out = [(i, min(i + per, nfull), (min(i + per, nfull) - i) // block, block) for i in range(0, nfull, per)]
    if n > nfull:
        out.append((nfull, n, 1, n - nfull))
    return out


class BlockQuantCodec(Codec):
    """int8 / int4 block-wise absmax quantization (see module docstring)."""

    def __init__(self, bits: int, block: int | None = None, stochastic: bool = False) -> None:
        if bits not in _IDS:
            raise ValueError(f"bits must be 8 or 4, found {bits}")
        block = _DEFAULT_BLOCK[bits] if block is None else int(block)
        if block < 1:
            raise ValueError(f"block must be >= 1, found {block}")
        self.bits = bits
        self.block = block
        self.stochastic = bool(stochastic)
        self.qmax = 127 if bits == 8 else 7
        self.max_scale = _SMAX[bits]  # largest block scale decode accepts: qmax * max_scale is finite
        self.spec = f"int{bits}:{block}" + (":sr" if stochastic else "")
        self.lossless = False
        self._id = _IDS[bits]
        self._tag = spec_tag(self.spec)

    def _nblocks(self, n: int) -> int:
        return -(-n // self.block)

    def _value_bytes(self, n: int) -> int:
        return n if self.bits == 8 else (n + 1) // 2

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        n = numel(tuple(shape))
        return HEADER_SIZE + 4 * self._nblocks(n) + self._value_bytes(n)

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        flat = as_float32_flat(x, self.spec)
        n = flat.numel()
        header = pack_header(self._id, self._tag, n)
        if n == 0:
            return header
        qmax = float(self.qmax)
        # round-to-integer trick: for |v| < 2^22, float32(v + 1.5*2^23) is the integer
        # nearest v (ties to even) and the low byte of its bit pattern is that integer
        # mod 256, i.e. the int8 two's complement (int4: offset by 8 into 1..15).
        magic = _MAGIC + (8.0 if self.bits == 4 else 0.0)
        gen = make_generator(seed, stream=1) if self.stochastic else None
        scales = torch.empty(self._nblocks(n), dtype=torch.float32)
        cap = min(n, max(1, _CHUNK // self.block) * self.block)
        scratch = torch.empty(cap, dtype=torch.float32)
        lo = torch.empty(cap, dtype=torch.float32)
        parts: list[bytes] = [header, b""]
        nib = np.empty(n + (n & 1), dtype=np.uint8) if self.bits == 4 else None
        for start, stop, rows, width in _chunks(n, self.block):
            m = stop - start
            b0 = start // self.block
            xv = flat[start:stop].view(rows, width)
            sc = scratch[:m].view(rows, width)
            amax = torch.amax(xv, dim=1)
            torch.amin(xv, dim=1, out=lo[:rows]).neg_()
            torch.maximum(amax, lo[:rows], out=amax)
            inv = qmax / amax
            inv.masked_fill_(amax == 0, 0.0)
            scales[b0 : b0 + rows] = amax
            torch.mul(xv, inv[:, None], out=sc)
            if np.isinf(inv.numpy()).any():  # 0 < amax < qmax / FLT_MAX: x * inv is inf or NaN there
                tiny = torch.isinf(inv)
                sc[tiny] = xv[tiny].div(amax[tiny, None]).mul_(qmax)
            if gen is not None:
                sc.add_(torch.rand((rows, width), generator=gen)).floor_().clamp_(-qmax, qmax)
            sc.add_(magic)
            low = scratch[:m].numpy().view(np.uint8)[_LOW::4]
            if nib is None:
                parts.append(low.tobytes())
            else:
                nib[start:stop] = low
        if nib is not None:  # int4: pack nibble pairs, low nibble = even index
            nib[n:] = 0
            parts.append((nib[0::2] | (nib[1::2] << 4)).tobytes())
        if not bool(torch.isfinite(scales).all()):  # NaN/inf anywhere in x shows in its block scale
            raise CodecError(f"{self.spec}: expected finite input, found NaN or inf")
        scales.div_(qmax).clamp_(max=self.max_scale)  # qmax * scale stays finite on decode
        parts[1] = tensor_bytes(scales).tobytes()
        return b"".join(parts)

    def _check_nibbles(self, q: torch.Tensor, n: int) -> None:
        """Reject int4 codes the encoder never emits: nibble 0 (-8) and a non-zero padding nibble."""
        full = q[: n // 2]  # bytes holding two values
        if full.numel() and (int(torch.amin(full)) < 16 or int(torch.amin(full & 15)) == 0):
            p = int(torch.nonzero(((full & 15) == 0) | (full < 16))[0, 0])
            i = 2 * p if int(full[p]) & 15 == 0 else 2 * p + 1
            raise CodecError(f"{self.spec}: bad code at element {i}: expected -7..7, found -8 (nibble 0)")
        if n & 1:
            last = int(q[-1])
            if last & 15 == 0:
                raise CodecError(f"{self.spec}: bad code at element {n - 1}: expected -7..7, found -8 (nibble 0)")
            if last >> 4:
                raise CodecError(
                    f"{self.spec}: expected a zero padding nibble in the last byte, found 0x{last >> 4:x}"
                )

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        n = numel(shape)
        mv = check_payload(data, codec_id=self._id, tag=self._tag, n=n,
                           size=self.encoded_size(shape), name=self.spec)
        res = alloc_out(shape, out)
        if n == 0:
            return res
        flat = res.view(-1)
        nb = self._nblocks(n)
        scales = frombuffer(mv, "<f4", HEADER_SIZE, nb)
        smax = self.max_scale
        ok = (scales >= 0) & (scales <= smax)  # False for NaN and inf too
        if not bool(ok.all()):
            b = int(torch.nonzero(~ok)[0, 0])
            raise CodecError(
                f"{self.spec}: bad scale of block {b}: expected a finite value in [0, {smax:.9g}] "
                f"({self.qmax} * scale must be finite), found {float(scales[b])!r}"
            )
        off = HEADER_SIZE + 4 * nb
        if self.bits == 8:
            q = frombuffer(mv, "i1", off, n)
            if int(torch.amin(q)) < -self.qmax:  # only -128: the encoder emits -127..127
                i = int(torch.nonzero(q < -self.qmax)[0, 0])
                raise CodecError(
                    f"{self.spec}: bad code at element {i}: expected -127..127, found {int(q[i])}"
                )
        else:
            q = frombuffer(mv, "u1", off, (n + 1) // 2)
            self._check_nibbles(q, n)
        for start, stop, rows, width in _chunks(n, self.block):
            b0 = start // self.block
            ov = flat[start:stop]
            if self.bits == 8:
                ov.copy_(q[start:stop])
            else:
                p = q[start // 2 : (stop + 1) // 2]
                pair = torch.stack((p & 15, p >> 4), dim=1).view(-1)
                ov.copy_(pair[start & 1 : (start & 1) + stop - start])
                ov.sub_(8.0)
            ov.view(rows, width).mul_(scales[b0 : b0 + rows, None])
        return res

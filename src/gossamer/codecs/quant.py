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

Two interchangeable implementations give byte-identical payloads and
bit-identical decodes (tests/codecs/test_quant_paths.py checks both against
each other and against a frozen copy of the original encoder): the pure-torch
path, always available, and, when numba is installed (``pip install
gossamer[fast]``), fused kernels that read each block once (abs-max, scale,
round, pack) and split the blocks across ``torch.get_num_threads()`` threads
with the GIL released. Tensors below ``_ACCEL_MIN`` elements, and every
tensor when numba is missing or fails to compile, take the torch path.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

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

__all__ = ["BlockQuantCodec", "accelerated"]

log = logging.getLogger(__name__)

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

_CHUNK = 1 << 20  # elements per pass of the torch path; also fixes the rows of each _absmax call
_ACCEL_MIN = 1 << 15  # below this many elements the kernels' thread hand-off costs more than it saves
_PART_MIN = 1 << 18  # elements per thread of the kernels, at least


def _chunks(n: int, block: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, rows, width)`` pieces of ``[0, n)``: whole blocks, then the short tail block."""
    per = max(1, _CHUNK // block) * block
    nfull = (n // block) * block
    out = [(i, min(i + per, nfull), (min(i + per, nfull) - i) // block, block) for i in range(0, nfull, per)]
    if n > nfull:
        out.append((nfull, n, 1, n - nfull))
    return out


def _absmax(xv: torch.Tensor, lo: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``max|x|`` of each row of ``xv`` into ``out``, by the ops that define the format's bytes.

    ``maximum(amax, -amin)`` is ``max|x|`` exactly, but for an all-zero row its sign (+0.0
    or -0.0, i.e. the sign bit of that block's scale) depends on where the row falls in
    torch's vectorised ``maximum`` over the chunk. Both paths therefore take the scales of
    chunks holding an all-zero block from this function, called on the same ``_chunks``.
    """
    torch.amax(xv, dim=1, out=out)
    torch.amin(xv, dim=1, out=lo).neg_()
    return torch.maximum(out, lo, out=out)


# ---------------------------------------------------------------- numba kernels (optional)


@functools.cache
def _kernels() -> Any:
    """The compiled kernels as a namespace, or None when numba is missing or fails."""
    try:
        import numba
    except ImportError:
        return None
    try:
        return _build_kernels(numba)
    except Exception as exc:  # a broken numba/llvmlite install: fall back to torch, say so once
        log.warning("int8/int4 codecs: numba kernels unavailable (%s: %s); using torch", type(exc).__name__, exc)
        return None


def accelerated() -> bool:
    """True if the numba kernels are in use for tensors of at least ``_ACCEL_MIN`` elements."""
    return _kernels() is not None


def _build_kernels(numba: Any) -> Any:
    jit = numba.njit(nogil=True, cache=True)

    # Loops run over slices (indices known >= 0) so that LLVM vectorises them. Every float
    # operation is the float32 operation the torch path performs, in the same order:
    # inv = (1 / a) * Q (torch's ``Q / a``), v = x * inv or (x / a) * Q when inv is inf,
    # q = rint(v) (ties to even), or clamp(floor(v + u), -Q, Q) with stochastic rounding.

    @jit
    def encode(x, xi, block, qmax, bits, sr, u, amax, ai, q, tmp):
        """Quantize ``x`` (its int32 view ``xi``): ``amax``/``ai`` get max|x_b| (float32 and
        its bits), ``q`` the int8 codes or packed nibbles; ``tmp`` is scratch of ``block``
        items of ``q``'s dtype. Returns (first block with NaN/inf or -1, number of all-zero blocks)."""
        n = x.shape[0]
        qm = np.float32(qmax)
        one = np.float32(1.0)
        off = np.float32(8.0) if bits == 4 else np.float32(0.0)
        zeros = 0
        pending = np.uint8(0)
        for b in range(amax.shape[0]):
            lo = b * block
            hi = min(lo + block, n)
            w = hi - lo
            xb = x[lo:hi]
            xib = xi[lo:hi]
            m = np.int32(0)
            for j in range(w):
                m = max(m, xib[j] & 0x7FFFFFFF)  # |x| as bits; NaN and inf are the largest
            if m >= 0x7F800000:
                return b, zeros
            ai[b] = m
            a = amax[b]
            inv = np.float32(0.0)
            if m == 0:
                zeros += 1
            else:
                inv = (one / a) * qm
            tb = q[lo:hi] if bits == 8 else tmp[:w]  # int8: codes straight to the payload
            if sr:
                ub = u[lo:hi]
                if np.isinf(inv):
                    for j in range(w):
                        tb[j] = min(max(np.floor((xb[j] / a) * qm + ub[j]), -qm), qm) + off
                else:
                    for j in range(w):
                        tb[j] = min(max(np.floor(xb[j] * inv + ub[j]), -qm), qm) + off
            elif np.isinf(inv):
                for j in range(w):
                    tb[j] = np.rint((xb[j] / a) * qm) + off
            else:
                for j in range(w):
                    tb[j] = np.rint(xb[j] * inv) + off
            if bits == 8:
                continue
            k = 0  # int4: pack pairs, low nibble = even index; a pair may straddle two blocks
            if lo & 1:
                q[lo >> 1] = pending | (tb[0] << 4)
                k = 1
            qb = q[(lo + k) >> 1 :]
            for i in range((w - k) >> 1):
                qb[i] = tb[k + 2 * i] | (tb[k + 2 * i + 1] << 4)
            if (w - k) & 1:
                pending = tb[w - 1]
                if hi == n:
                    q[n >> 1] = pending
        return -1, zeros

    @jit
    def first_bad_int8(q):
        """Index of the first code -128, or -1."""
        n = q.shape[0]
        for lo in range(0, n, 4096):
            qb = q[lo : min(lo + 4096, n)]
            m = np.int8(0)
            for j in range(qb.shape[0]):
                m = min(m, qb[j])
            if m == -128:
                for j in range(qb.shape[0]):
                    if qb[j] == -128:
                        return lo + j
        return -1

    @jit
    def first_bad_int4(p, n):
        """Index of the first element with nibble 0, ``n`` for a non-zero padding nibble, or -1."""
        nfull = n >> 1
        for lo in range(0, nfull, 4096):
            pb = p[lo : min(lo + 4096, nfull)]
            bad = False
            for j in range(pb.shape[0]):
                bad |= ((pb[j] & 15) == 0) | (pb[j] < 16)
            if bad:
                for j in range(pb.shape[0]):
                    if pb[j] & 15 == 0:
                        return 2 * (lo + j)
                    if pb[j] < 16:
                        return 2 * (lo + j) + 1
        if n & 1:
            if p[nfull] & 15 == 0:
                return n - 1
            if p[nfull] >> 4:
                return n
        return -1

    @jit
    def decode(q, scales, block, bits, out):
        """``out[j] = code_j * scale_b`` (int8 codes, or nibbles minus 8)."""
        n = out.shape[0]
        eight = np.float32(8.0)
        for b in range(scales.shape[0]):
            lo = b * block
            hi = min(lo + block, n)
            s = scales[b]
            if bits == 8:
                qb = q[lo:hi]
                ob = out[lo:hi]
                for j in range(hi - lo):
                    ob[j] = np.float32(qb[j]) * s
                continue
            j0 = lo
            if lo & 1:
                out[lo] = (np.float32(q[lo >> 1] >> 4) - eight) * s
                j0 = lo + 1
            pb = q[j0 >> 1 :]
            ob = out[j0:]
            for i in range((hi - j0) >> 1):
                ob[2 * i] = (np.float32(pb[i] & 15) - eight) * s
                ob[2 * i + 1] = (np.float32(pb[i] >> 4) - eight) * s
            if (hi - j0) & 1:
                out[hi - 1] = (np.float32(q[(hi - 1) >> 1] & 15) - eight) * s

    # compile now (or load numba's on-disk cache), so that a failure falls back to torch here
    x = np.zeros(3, dtype=np.float32)
    a = np.zeros(1, dtype=np.float32)
    for q in (np.zeros(3, dtype=np.int8), np.zeros(2, dtype=np.uint8)):
        bits = 8 if q.dtype == np.int8 else 4
        encode(x, x.view(np.int32), 3, 7, bits, False, x, a, a.view(np.int32), q, np.zeros(3, dtype=q.dtype))
        decode(q, a, 3, bits, x)
        if bits == 8:
            first_bad_int8(q)
        else:
            first_bad_int4(q, 3)
    return SimpleNamespace(encode=encode, decode=decode, first_bad_int8=first_bad_int8, first_bad_int4=first_bad_int4)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="gossamer-quant")


def _parallel(fn: Callable[[int, int], Any], nb: int, block: int, n: int, even: bool) -> list[Any]:
    """Run ``fn(b0, b1)`` over block ranges covering ``[0, nb)`` on up to torch's thread count.

    Ranges start at an even element when ``even`` (int4: no byte is shared by two ranges).
    The calling thread runs the first range; the kernels release the GIL.
    """
    parts = max(1, min(torch.get_num_threads(), n // _PART_MIN))
    per = -(-nb // parts)
    if even and block & 1:
        per += per & 1
    ranges = [(b0, min(b0 + per, nb)) for b0 in range(0, nb, per)]
    futures = [_pool().submit(fn, b0, b1) for b0, b1 in ranges[1:]]
    return [fn(*ranges[0])] + [f.result() for f in futures]


# ---------------------------------------------------------------- the codec


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
        nb = self._nblocks(n)
        buf = np.empty(HEADER_SIZE + 4 * nb + self._value_bytes(n), dtype=np.uint8)
        buf[:HEADER_SIZE] = np.frombuffer(header, dtype=np.uint8)
        values = torch.from_numpy(buf[HEADER_SIZE + 4 * nb :].view(np.int8 if self.bits == 8 else np.uint8))
        scales = torch.empty(nb, dtype=torch.float32)  # max|x_b| until the end, then the scale
        gen = make_generator(seed, stream=1) if self.stochastic else None
        if n >= _ACCEL_MIN and _kernels() is not None:
            self._encode_kernel(flat, scales, values, gen)
        else:
            self._encode_torch(flat, scales, values, gen)
        # numpy for the small per-block arrays: a torch op, parallel from 32k elements up, waits for
        # its slowest thread, which costs milliseconds when other processes hold the cores
        s = scales.numpy()
        np.divide(s, np.float32(self.qmax), out=s)
        np.minimum(s, np.float32(self.max_scale), out=s)  # qmax * scale stays finite on decode
        buf[HEADER_SIZE : HEADER_SIZE + 4 * nb] = np.frombuffer(tensor_bytes(scales), dtype=np.uint8)
        return buf.tobytes()

    def _nonfinite(self) -> CodecError:
        return CodecError(f"{self.spec}: expected finite input, found NaN or inf")

    def _encode_torch(self, flat: torch.Tensor, scales: torch.Tensor, values: torch.Tensor,
                      gen: torch.Generator | None) -> None:
        """Pure-torch encoder, a chunk of whole blocks at a time: ``scales`` gets max|x_b|."""
        n = flat.numel()
        qmax = float(self.qmax)
        cap = min(n, max(1, _CHUNK // self.block) * self.block)
        scratch = torch.empty(cap, dtype=torch.float32)
        lo = torch.empty(cap // self.block + 1, dtype=torch.float32)
        nib = torch.empty(n + (n & 1), dtype=torch.uint8) if self.bits == 4 else None
        for start, stop, rows, width in _chunks(n, self.block):
            m = stop - start
            b0 = start // self.block
            xv = flat[start:stop].view(rows, width)
            sc = scratch[:m].view(rows, width)
            amax = _absmax(xv, lo[:rows], scales[b0 : b0 + rows])
            a = amax.numpy()
            if not np.isfinite(a).all():  # NaN/inf anywhere in x shows in its block's max
                raise self._nonfinite()
            with np.errstate(divide="ignore", over="ignore"):
                inv = np.float32(1.0) / a * np.float32(qmax)  # as torch's qmax / amax: 1/amax, times qmax
            inv[a == 0] = 0.0
            torch.mul(xv, torch.from_numpy(inv)[:, None], out=sc)
            tiny = np.isinf(inv)  # 0 < amax < qmax / FLT_MAX: x * inv is inf or NaN there
            if tiny.any():
                t = torch.from_numpy(tiny)
                sc[t] = xv[t].div(amax[t, None]).mul_(qmax)
            if gen is not None:
                sc.add_(torch.rand((rows, width), generator=gen)).floor_().clamp_(-qmax, qmax)
            else:
                sc.round_()  # ties to even; |sc| <= qmax, so the casts below are exact
            if nib is None:
                values[start:stop].copy_(scratch[:m])
            else:
                nib[start:stop].copy_(scratch[:m].add_(8.0))
        if nib is not None:  # int4: pack nibble pairs, low nibble = even index
            nib[n:] = 0
            torch.bitwise_or(nib[0::2], nib[1::2] << 4, out=values)

    def _encode_kernel(self, flat: torch.Tensor, scales: torch.Tensor, values: torch.Tensor,
                       gen: torch.Generator | None) -> None:
        """The numba encoder: same bytes as ``_encode_torch``."""
        k = _kernels()
        n = flat.numel()
        block, bits = self.block, self.bits
        x = flat.numpy()
        xi = x.view(np.int32)
        amax = scales.numpy()
        ai = amax.view(np.int32)
        q = values.numpy()
        # one draw of n uniforms is the same stream as the torch path's draws chunk by chunk
        u = torch.rand(n, generator=gen).numpy() if gen is not None else x[:1]

        def part(b0: int, b1: int) -> tuple[int, int]:
            s, e = b0 * block, min(b1 * block, n)
            qs = q[s:e] if bits == 8 else q[s // 2 : (e + 1) // 2]
            tmp = np.empty(block, dtype=q.dtype)
            bad, zeros = k.encode(x[s:e], xi[s:e], block, self.qmax, bits, gen is not None,
                                  u[s:e] if gen is not None else u, amax[b0:b1], ai[b0:b1], qs, tmp)
            return (b0 + bad if bad >= 0 else -1), zeros

        results = _parallel(part, self._nblocks(n), block, n, even=bits == 4)
        if any(bad >= 0 for bad, _ in results):
            raise self._nonfinite()
        if any(zeros for _, zeros in results):  # take those chunks' scales from _absmax (signed zeros)
            lo = torch.empty(_CHUNK // block + 1, dtype=torch.float32)
            for start, stop, rows, width in _chunks(n, block):
                b0 = start // block
                if not bool(scales[b0 : b0 + rows].all()):
                    _absmax(flat[start:stop].view(rows, width), lo[:rows], scales[b0 : b0 + rows])

    def _check_nibbles(self, q: torch.Tensor, n: int) -> None:
        """Reject int4 codes the encoder never emits: nibble 0 (-8) and a non-zero padding nibble."""
        full = q[: n // 2]  # bytes holding two values
        if full.numel() and (int(torch.amin(full)) < 16 or int(torch.amin(full & 15)) == 0):
            p = int(torch.nonzero(((full & 15) == 0) | (full < 16))[0, 0])
            self._bad_code(2 * p if int(full[p]) & 15 == 0 else 2 * p + 1, -8)
        if n & 1:
            last = int(q[-1])
            if last & 15 == 0:
                self._bad_code(n - 1, -8)
            if last >> 4:
                raise CodecError(
                    f"{self.spec}: expected a zero padding nibble in the last byte, found 0x{last >> 4:x}"
                )

    def _bad_code(self, i: int, found: int) -> None:
        if self.bits == 8:
            raise CodecError(f"{self.spec}: bad code at element {i}: expected -127..127, found {found}")
        raise CodecError(f"{self.spec}: bad code at element {i}: expected -7..7, found -8 (nibble 0)")

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        n = numel(shape)
        mv = check_payload(data, codec_id=self._id, tag=self._tag, n=n,
                           size=self.encoded_size(shape), name=self.spec)
        if n == 0:
            return alloc_out(shape, out)
        nb = self._nblocks(n)
        scales = frombuffer(mv, "<f4", HEADER_SIZE, nb)
        smax = self.max_scale
        ok = (scales.numpy() >= 0) & (scales.numpy() <= np.float32(smax))  # False for NaN and inf too
        if not ok.all():
            b = int(np.argmin(ok))
            raise CodecError(
                f"{self.spec}: bad scale of block {b}: expected a finite value in [0, {smax:.9g}] "
                f"({self.qmax} * scale must be finite), found {float(scales[b])!r}"
            )
        off = HEADER_SIZE + 4 * nb
        k = _kernels() if n >= _ACCEL_MIN else None
        if self.bits == 8:
            q = frombuffer(mv, "i1", off, n)
            if k is not None:
                i = k.first_bad_int8(q.numpy())
                if i >= 0:
                    self._bad_code(i, -128)
            elif int(torch.amin(q)) < -self.qmax:  # only -128: the encoder emits -127..127
                self._bad_code(int(torch.nonzero(q < -self.qmax)[0, 0]), -128)
        else:
            q = frombuffer(mv, "u1", off, (n + 1) // 2)
            if k is not None:
                i = k.first_bad_int4(q.numpy(), n)
                if i == n:
                    raise CodecError(f"{self.spec}: expected a zero padding nibble in the last byte, "
                                     f"found 0x{int(q[-1]) >> 4:x}")
                if i >= 0:
                    self._bad_code(i, -8)
            else:
                self._check_nibbles(q, n)
        res = alloc_out(shape, out)
        flat = res.view(-1)
        if k is not None:
            self._decode_kernel(k, q.numpy(), scales.numpy(), flat.numpy())
        else:
            self._decode_torch(q, scales, flat)
        return res

    def _decode_kernel(self, k: Any, q: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:
        block, n = self.block, out.shape[0]

        def part(b0: int, b1: int) -> None:
            s, e = b0 * block, min(b1 * block, n)
            k.decode(q[s:e] if self.bits == 8 else q[s // 2 : (e + 1) // 2], scales[b0:b1], block, self.bits, out[s:e])

        _parallel(part, len(scales), block, n, even=self.bits == 4)

    def _decode_torch(self, q: torch.Tensor, scales: torch.Tensor, flat: torch.Tensor) -> None:
        n = flat.numel()
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

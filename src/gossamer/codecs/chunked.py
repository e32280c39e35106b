"""Chunked top-k with packed indices and 1- or 2-bit values: ``ctopk:K[:CHUNK][:VALUES][:dct]``;
chunked random-k with seeded indices: ``crandk:K[:CHUNK][:VALUES]``.

The pseudo-gradient codec of SparseLoCo (Sarfi et al. 2025, "SparseLoCo:
Communication-efficient LLM training"): the flat tensor is cut into fixed
chunks of ``CHUNK`` elements (default 4096; the last chunk may be shorter),
and each chunk keeps its ``K`` entries of largest magnitude
(``k_c = min(K, len_c)``). Because an index only has to address its own
chunk, it travels in ``b = bit_length(CHUNK - 1)`` bits (12 for 4096), not
32. The kept values travel as

* ``2bit`` (default): a sign bit and a magnitude bit per value; per chunk two
  float32 levels ``lo <= hi``. The ``ceil(k_c / 2)`` largest kept magnitudes
  get ``hi`` = their mean, the others ``lo`` = theirs (a two-level quantizer
  split at the median);
* ``1bit``: the sign only; per chunk one float32 level, the mean kept magnitude;
* ``fp32``: the exact values (an ablation: what quantization costs).

With ``:dct`` (DeMo, Peng et al. 2024, "DeMo: Decoupled Momentum
Optimization") each chunk, zero-padded to ``CHUNK = s * s`` elements, is
viewed as an ``s x s`` block and moved to the orthonormal 2-D DCT-II basis
before the top-k; the decoder applies the inverse transform. Smooth
pseudo-gradients concentrate their energy in few coefficients. With DCT
every chunk keeps ``K`` coefficients and ``CHUNK`` must be a square.

Payload, little-endian: 8-byte header | indices, ``m = sum k_c`` fields of
``b`` bits, least significant bit first, strictly increasing within each
chunk, zero-padded to a byte | levels (float32, 2 or 1 per chunk; none for
fp32) | values (2-bit codes packed four to a byte, bit 0 = negative, bit 1 =
high level; or sign bits packed eight to a byte, 1 = negative; or m float32),
zero-padded to a byte.

Bytes per ``CHUNK`` elements at K = 64, CHUNK = 4096, 2bit:
``64 * 12 / 8 + 8 + 64 * 2 / 8 = 120`` against 16,384 in fp32 (136x); the
all-reduce re-sends the reduced chunk at the same size (see
``codec_for_mean``), so per peer about ``2 x`` that per sync.

Error bound: the dropped entries are no larger than any kept one, so
``||x - x^||^2 <= ||x||^2`` always, and it is ``<= (1 - k_c/len_c) ||x||^2``
per chunk for ``fp32`` values; the level quantization adds its own error.
The codec is meant to run under error feedback (``+ef`` or SparseLoCo's
decaying accumulator ``+ef:BETA``), which carries everything not sent into
the next round.

``crandk`` keeps ``k_c`` positions per chunk, one drawn uniformly inside each
of ``k_c`` equal strata of the chunk (stratum ``j`` of a chunk of length
``L`` is ``[floor(j L / k_c), floor((j+1) L / k_c))``: distinct, sorted and
spread over the chunk), from a generator seeded by the shared ``seed`` (the same for every sender of a
chunk in a round: ``comm.collectives`` derives it from the round, the
operation, the owner and the segment), so no index travels: the payload is
the header, the levels and the values. Every contribution to a chunk then
has the same support, and so has their mean: the chunk owner re-sends the
mean on that support at the same size, with no second selection loss (only
the level quantization again, which its error feedback carries). Per
``CHUNK`` elements at K = 256 (6.25%), 2bit: ``8 + 64 = 72`` bytes (228x
smaller than fp32). Random positions hold less of the energy than the top
ones, and error feedback makes up for it over rounds (Stich et al. 2018,
"Sparsified SGD with Memory").

Which entries a chunk keeps among equal magnitudes is fixed: every entry
above the chunk's ``k_c``-th largest magnitude ``T``, then the lowest-index
entries equal to ``T``. Levels are float64 sums in index order, rounded to
float32. So the same input and seed always give the same bytes, on either
implementation: numpy (always there, and used below ``_ACCEL_MIN`` elements)
or, with numba installed (``pip install gossamer[fast]``), the compiled
kernels of ``_chunked_kernels``, which select by threshold without a sort
and decode each chunk in one pass, split over ``torch.get_num_threads()``
threads. A payload the kernels find invalid is decoded by the numpy path,
which names the fault.

The decoder rejects: a payload of the wrong size, indices at or past the
end of their chunk, unsorted or repeated indices within a chunk, non-zero
padding bits, levels that are negative, non-finite or out of order
(``lo > hi``), non-finite values, and a result that overflows float32.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from gossamer.errors import CodecError

from .base import (
    HEADER_SIZE,
    Codec,
    all_finite,
    alloc_out,
    as_float32_flat,
    check_payload,
    frombuffer,
    make_generator,
    numel,
    pack_header,
    spec_tag,
    tensor_bytes,
)

__all__ = ["ChunkTopKCodec", "VALUE_FORMATS", "DEFAULT_CHUNK"]

VALUE_FORMATS: tuple[str, ...] = ("2bit", "1bit", "fp32")
DEFAULT_CHUNK = 4096
MAX_CHUNK = 1 << 20
_LEVELS = {"2bit": 2, "1bit": 1, "fp32": 0}
_VALUE_BITS = {"2bit": 2, "1bit": 1, "fp32": 32}
_ACCEL_MIN = 1 << 15  # below this many elements the numpy path (the kernels' thread hand-off costs more)
_PART_MIN = 1 << 18  # elements per thread of the kernels, at least

log = logging.getLogger(__name__)


@functools.cache
def _kernels() -> Any:
    """The ``_chunked_kernels`` module, compiled, or None when numba is missing or fails."""
    try:
        from . import _chunked_kernels

        _chunked_kernels.warm()
    except Exception as exc:
        if not (isinstance(exc, ModuleNotFoundError) and exc.name == "numba"):  # broken, not absent: say so once
            log.warning("ctopk/crandk codecs: numba kernels unavailable (%s: %s); using numpy", type(exc).__name__, exc)
        return None
    return _chunked_kernels


def accelerated() -> bool:
    """True if the numba kernels are in use for tensors of at least ``_ACCEL_MIN`` elements."""
    return _kernels() is not None


def _kernels_for(n: int) -> Any:
    return _kernels() if n >= _ACCEL_MIN else None


def _dct_matrix(s: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (s x s, float32): ``y = D x``, ``x = D^T y``."""
    n = torch.arange(s, dtype=torch.float64)
    d = torch.cos(math.pi / s * (n[None, :] + 0.5) * n[:, None]) * math.sqrt(2.0 / s)
    d[0] /= math.sqrt(2.0)
    return d.to(torch.float32).contiguous()


class ChunkTopKCodec(Codec):
    """Top-K (or, with ``select="rand"``, seeded random K) per fixed chunk, in-chunk indices at
    their real bit width (none for random K), 1/2-bit or fp32 values."""

    codec_id = 10

    def __init__(self, k: int, chunk: int = DEFAULT_CHUNK, values: str = "2bit", dct: bool = False,
                 select: str = "top") -> None:
        k, chunk = int(k), int(chunk)
        if k < 1:
            raise ValueError(f"K must be >= 1, found {k}")
        if not 2 <= chunk <= MAX_CHUNK:
            raise ValueError(f"CHUNK must be in [2, {MAX_CHUNK}], found {chunk}")
        if k > chunk:
            raise ValueError(f"K must be <= CHUNK, found K={k} > CHUNK={chunk}")
        if values not in VALUE_FORMATS:
            raise ValueError(f"VALUES must be one of {', '.join(VALUE_FORMATS)}, found {values!r}")
        self.side = math.isqrt(chunk)
        if dct and self.side * self.side != chunk:
            raise ValueError(f"with :dct, CHUNK must be a square (e.g. 4096 = 64 x 64), found {chunk}")
        if select not in ("top", "rand"):
            raise ValueError(f"select must be 'top' or 'rand', found {select!r}")
        if select == "rand" and dct:
            raise ValueError("crandk takes no :dct")
        self.k, self.chunk, self.values, self.dct, self.select = k, chunk, values, bool(dct), select
        self.bits = max(1, (chunk - 1).bit_length())
        if select == "rand":
            self.codec_id = 11
            self.spec = f"crandk:{k}:{chunk}:{values}"
        else:
            self.spec = f"ctopk:{k}:{chunk}:{values}" + (":dct" if dct else "")
        self.lossless = False
        self._tag = spec_tag(self.spec)
        self._basis = _dct_matrix(self.side) if dct else None
        self._weights = torch.tensor([1 << j for j in range(self.bits)], dtype=torch.int64)

    # ------------------------------------------------------------------ layout
    def _layout(self, n: int) -> tuple[int, int, int]:
        """``(full, tail, k_tail)``: chunks holding ``chunk`` (or, with DCT, padded
        to it) elements, the length of a shorter last chunk (0 if none) and its K."""
        if self.dct:
            return -(-n // self.chunk), 0, 0
        full, tail = divmod(n, self.chunk)
        return full, tail, min(self.k, tail)

    def _sizes(self, n: int) -> tuple[int, int, int, int]:
        """``(kept, index bytes, level count, value bytes)`` for ``n`` elements."""
        full, tail, kt = self._layout(n)
        m = full * self.k + kt
        chunks = full + (1 if tail else 0)
        vbits = _VALUE_BITS[self.values]
        ib = 0 if self.select == "rand" else (m * self.bits + 7) // 8
        return m, ib, chunks * _LEVELS[self.values], (m * vbits + 7) // 8

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        _, ib, levels, vb = self._sizes(numel(tuple(shape)))
        return HEADER_SIZE + ib + 4 * levels + vb

    # ------------------------------------------------------------------ transform
    def _forward(self, rows: torch.Tensor) -> torch.Tensor:
        s, d = self.side, self._basis
        blocks = rows.view(-1, s, s)
        return torch.matmul(torch.matmul(d, blocks), d.t()).reshape(rows.shape)

    def _inverse(self, rows: torch.Tensor) -> torch.Tensor:
        s, d = self.side, self._basis
        blocks = rows.view(-1, s, s)
        return torch.matmul(torch.matmul(d.t(), blocks), d).reshape(rows.shape)

    # ------------------------------------------------------------------ encode
    def _random_rows(self, rows: int, length: int, k: int, seed: int, stream: int) -> torch.Tensor:
        """``k`` sorted distinct positions in ``[0, length)`` per row, one per stratum, from the shared ``seed``."""
        gen = make_generator(seed, stream=stream)
        j = torch.arange(k + 1, dtype=torch.int64)
        bounds = (j * length) // k
        lo, size = bounds[:-1], bounds[1:] - bounds[:-1]
        u = torch.rand((rows, k), generator=gen, dtype=torch.float64)
        return lo + torch.minimum((u * size).to(torch.int64), size - 1)

    def _positions(self, n: int, seed: int) -> list[torch.Tensor]:
        """crandk: the in-chunk positions of the full chunks and of the tail (one tensor each, if any)."""
        full, tail, kt = self._layout(n)
        out = []
        if full:
            out.append(self._random_rows(full, self.chunk, self.k, seed, 3))
        if tail:
            out.append(self._random_rows(1, tail, kt, seed, 4))
        return out

    def _select(self, rows: torch.Tensor, k: int,
                given: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: sorted in-row indices (int64), their values (float32), and a bool 'high level'
        flag: magnitude at least the ``(k + 1) // 2``-th largest kept one (ties all go high).

        Top-k keeps every entry above the ``k``-th largest magnitude ``T`` of its row, then the
        lowest-index entries equal to ``T`` (the rule the numba kernels follow too)."""
        src = rows.numpy()
        if given is None:
            length = src.shape[1]
            mag = np.abs(src)
            # introselect: the k-th largest magnitude of each row, in O(length)
            thr = np.partition(mag, length - k, axis=1)[:, length - k : length - k + 1]
            keep = mag >= thr
            surplus = np.nonzero(keep.sum(axis=1) > k)[0]  # rows with more ties at thr than room
            if surplus.size:
                sub, t = mag[surplus], thr[surplus]
                ties = sub == t
                need = k - (sub > t).sum(axis=1, keepdims=True)
                keep[surplus] = (sub > t) | (ties & (np.cumsum(ties, axis=1) <= need))
            idx = np.nonzero(keep)[1].reshape(-1, k)
        else:
            idx = given.numpy()
        vals = np.take_along_axis(src, idx, axis=1)
        if self.values != "2bit":
            return idx, vals, np.zeros(0, dtype=bool)
        mag = np.abs(vals)
        h = (k + 1) // 2
        thr = -np.partition(-mag, h - 1, axis=1)[:, h - 1 : h]
        return idx, vals, mag >= thr

    def _levels(self, vals: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Per-row levels (float32): ``[lo, hi]`` means (2bit) or ``[mean]`` (1bit); float64
        sums in index order (cumsum: a fixed order the kernels repeat)."""
        mag = np.abs(vals).astype(np.float64)
        total = np.cumsum(mag, axis=1)[:, -1]
        if self.values == "1bit":
            return (total / vals.shape[1])[:, None].astype(np.float32)
        nh = high.sum(axis=1)
        nl = vals.shape[1] - nh
        sh = np.cumsum(np.where(high, mag, 0.0), axis=1)[:, -1]
        hi = sh / nh
        lo = np.where(nl > 0, (total - sh) / np.maximum(nl, 1), 0.0)
        lo = np.clip(np.minimum(lo, hi), 0.0, None)  # float rounding must not put lo above hi (or below 0)
        return np.stack([lo, hi], axis=1).astype(np.float32)

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        flat = as_float32_flat(x, self.spec)
        n = flat.numel()
        kern = _kernels_for(n)
        if kern is not None and not self.dct:
            return self._encode_kernel(kern, flat.numpy(), n, pack_header(self.codec_id, self._tag, n), seed)
        if not all_finite(flat):
            raise CodecError(f"{self.spec}: expected finite input, found NaN or inf")
        header = pack_header(self.codec_id, self._tag, n)
        if n == 0:
            return header
        full, tail, kt = self._layout(n)
        groups: list[tuple[torch.Tensor, int]] = []
        if self.dct:
            padded = torch.zeros(full * self.chunk, dtype=torch.float32)
            padded[:n] = flat
            rows = self._forward(padded.view(full, self.chunk))
            if not all_finite(rows):
                raise CodecError(f"{self.spec}: input too large: its DCT overflows float32")
            if kern is not None:
                return self._encode_kernel(kern, rows.reshape(-1).numpy(), n, header, seed)
            groups.append((rows, self.k))
        else:
            if full:
                groups.append((flat[: full * self.chunk].view(full, self.chunk), self.k))
            if tail:
                groups.append((flat[full * self.chunk :].view(1, tail), kt))
        given = self._positions(n, seed) if self.select == "rand" else [None] * len(groups)
        picked = [self._select(rows, k, pos) for (rows, k), pos in zip(groups, given)]
        body = [header]
        if self.select == "top":
            body.append(_pack_bits(np.concatenate([i.reshape(-1) for i, _, _ in picked]), self.bits))
        vals = np.concatenate([v.reshape(-1) for _, v, _ in picked])
        if self.values == "fp32":
            body.append(vals.astype("<f4", copy=False).tobytes())
            return b"".join(body)
        levels = np.concatenate([self._levels(v, h) for _, v, h in picked])
        if not np.isfinite(levels).all():
            raise CodecError(f"{self.spec}: input too large: a chunk's mean magnitude overflows float32")
        body.append(levels.astype("<f4", copy=False).tobytes())
        neg = vals < 0
        if self.values == "1bit":
            body.append(_pack_bits(neg, 1))
        else:
            high = np.concatenate([h.reshape(-1) for _, _, h in picked])
            body.append(_pack_bits(neg.astype(np.uint8) | (high.astype(np.uint8) << 1), 2))
        return b"".join(body)

    def _uniforms(self, n: int, seed: int) -> np.ndarray:
        """crandk: the uniforms ``_random_rows`` draws, by entry (float64; the kernels turn them
        into positions); an empty array for ctopk."""
        if self.select == "top":
            return np.zeros(0, dtype=np.float64)
        full, tail, kt = self._layout(n)
        u = np.empty(full * self.k + kt, dtype=np.float64)
        if full:
            torch.rand((full, self.k), generator=make_generator(seed, stream=3), dtype=torch.float64,
                       out=torch.from_numpy(u[: full * self.k]).view(full, self.k))
        if tail:
            torch.rand((1, kt), generator=make_generator(seed, stream=4), dtype=torch.float64,
                       out=torch.from_numpy(u[full * self.k :]).view(1, kt))
        return u

    def _encode_kernel(self, kern: Any, src: np.ndarray, n: int, header: bytes, seed: int) -> bytes:
        """The numba encoder (same bytes as the numpy path) of ``src``: the flat input, or with
        DCT its coefficient rows; ``n`` is the input's element count."""
        m, ib, nlev, vb = self._sizes(n)
        full, tail, _ = self._layout(n)
        chunks = full + (1 if tail else 0)
        nl = _LEVELS[self.values]
        vbits = _VALUE_BITS[self.values]
        payload = np.empty(HEADER_SIZE + ib + 4 * nlev + vb, dtype=np.uint8)
        payload[:HEADER_SIZE] = np.frombuffer(header, dtype=np.uint8)
        ipay = payload[HEADER_SIZE : HEADER_SIZE + ib]
        lev_at = HEADER_SIZE + ib
        vpay = payload[lev_at + 4 * nlev :]
        levels = np.empty((chunks, max(nl, 1)), dtype=np.float32)
        fvals = np.empty(m if vbits == 32 else 0, dtype=np.float32)
        u = self._uniforms(n, seed)
        bits = self.bits if self.select == "top" else 0
        ints = src.view(np.int32)

        def part(c0: int, c1: int) -> int:
            return kern.encode(src, ints, src.size, self.chunk, self.k, c0, c1, u, bits, vbits,
                               ipay, levels, vpay, fvals)

        if any(bad >= 0 for bad in kern.parallel(part, chunks, self.chunk, _PART_MIN)):
            raise CodecError(f"{self.spec}: expected finite input, found NaN or inf")
        if vbits == 32:
            vpay[:] = fvals.astype("<f4", copy=False).view(np.uint8)
            return payload.tobytes()
        if not np.isfinite(levels).all():
            raise CodecError(f"{self.spec}: input too large: a chunk's mean magnitude overflows float32")
        payload[lev_at : lev_at + 4 * nlev] = levels.astype("<f4", copy=False).reshape(-1).view(np.uint8)
        return payload.tobytes()

    # ------------------------------------------------------------------ decode
    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        n = numel(shape)
        m, ib, nlev, vb = self._sizes(n)
        mv = check_payload(data, codec_id=self.codec_id, tag=self._tag, n=n,
                           size=self.encoded_size(shape), name=self.spec)
        if n == 0:
            return alloc_out(shape, out)
        kern = _kernels_for(n)
        if kern is not None:
            res = self._decode_kernel(kern, mv, n, shape, seed, out)
            if res is not None:
                return res
            # an invalid payload: the numpy path below names the fault
        full, tail, kt = self._layout(n)
        at = HEADER_SIZE
        kcount = [self.k] * full + ([kt] if tail else [])
        if self.select == "rand":
            idx = torch.cat([p.reshape(-1) for p in self._positions(n, seed)])
        else:
            idx = _unpack_bits(mv[at : at + ib], m, self.bits, self._weights, self.spec, "index")
            at += ib
            # per kept entry: its chunk's length
            lengths = [self.chunk] * full + ([tail] if tail else [])
            within = torch.tensor(lengths, dtype=torch.int64).repeat_interleave(torch.tensor(kcount))
            bad = torch.nonzero(idx >= within)
            if bad.numel():
                i = int(bad[0, 0])
                raise CodecError(f"{self.spec}: index out of range at entry {i}: expected < {int(within[i])}, "
                                 f"found {int(idx[i])}")
            self._check_sorted(idx, full, tail, kt)
        if self.values == "fp32":
            vals = frombuffer(mv, "<f4", at, m)
            if not all_finite(vals):
                raise CodecError(f"{self.spec}: expected finite values, found NaN or inf")
        else:
            levels = frombuffer(mv, "<f4", at, nlev).view(-1, _LEVELS[self.values])
            at += 4 * nlev
            if not all_finite(levels) or bool((levels < 0).any()):
                raise CodecError(f"{self.spec}: expected finite levels >= 0, found a negative or non-finite one")
            if self.values == "2bit" and bool((levels[:, 0] > levels[:, 1]).any()):
                c = int(torch.nonzero(levels[:, 0] > levels[:, 1])[0, 0])
                raise CodecError(f"{self.spec}: expected lo <= hi in chunk {c}, found lo {float(levels[c, 0]):.6g} "
                                 f"> hi {float(levels[c, 1]):.6g}")
            chunk_of = np.repeat(np.arange(len(kcount)), kcount)
            lv = levels.numpy()[chunk_of]
            if self.values == "1bit":
                neg = _unpack_bits(mv[at : at + vb], m, 1, self._weights[:1], self.spec, "sign").numpy()
                mag = lv[:, 0]
            else:
                code = _unpack_bits(mv[at : at + vb], m, 2, self._weights[:2], self.spec, "value").numpy()
                neg = code & 1
                mag = np.where(code >> 1, lv[:, 1], lv[:, 0])
            vals = torch.from_numpy(np.where(neg, -mag, mag).astype(np.float32, copy=False))
        pos = torch.from_numpy(np.repeat(np.arange(len(kcount), dtype=np.int64) * self.chunk, kcount)) + idx
        if self.dct:
            coef = torch.zeros(full * self.chunk, dtype=torch.float32)
            coef[pos] = vals
            dense = self._inverse(coef.view(full, self.chunk)).reshape(-1)[:n]
            if not all_finite(dense):
                raise CodecError(f"{self.spec}: expected a finite result, found one that overflows float32")
            res = alloc_out(shape, out)
            res.view(-1).copy_(dense)
            return res
        res = alloc_out(shape, out)
        flat = res.view(-1)
        flat.zero_()
        flat[pos] = vals
        return res

    def _decode_kernel(self, kern: Any, mv: memoryview, n: int, shape: tuple[int, ...], seed: int,
                       out: torch.Tensor | None) -> torch.Tensor | None:
        """The numba decoder: the numpy path's result, or None for a payload the numpy path rejects."""
        m, ib, nlev, vb = self._sizes(n)
        full, tail, _ = self._layout(n)
        chunks = full + (1 if tail else 0)
        span = full * self.chunk if self.dct else n  # elements the chunks cover
        nl = _LEVELS[self.values]
        vbits = _VALUE_BITS[self.values]
        raw = np.frombuffer(mv, dtype=np.uint8)
        at = HEADER_SIZE
        if self.select == "top":
            ipay = raw[at : at + ib]
            at += ib
            if not _zero_padding(ipay, m * self.bits):
                return None
            idx = np.empty(m, dtype=np.int64)

            def unpack(c0: int, c1: int) -> bool:
                return kern.unpack_indices(ipay, self.bits, span, self.chunk, self.k, c0, c1, idx)

            if not all(kern.parallel(unpack, chunks, self.chunk, _PART_MIN)):
                return None
        else:
            idx = np.zeros(0, dtype=np.int64)
        u = self._uniforms(n, seed)
        if vbits == 32:
            fvals = np.frombuffer(raw, dtype="<f4", count=m, offset=at).astype(np.float32)
            if not np.isfinite(fvals).all():
                return None
            levels = np.zeros((chunks, 1), dtype=np.float32)
            vpay = raw[:0]
        else:
            levels = np.frombuffer(raw, dtype="<f4", count=nlev, offset=at).astype(np.float32).reshape(chunks, nl)
            if not np.isfinite(levels).all() or (levels < 0).any():
                return None
            if nl == 2 and (levels[:, 0] > levels[:, 1]).any():
                return None
            vpay = raw[at + 4 * nlev :]
            if not _zero_padding(vpay, m * vbits):
                return None
            fvals = np.zeros(0, dtype=np.float32)
        if self.dct:
            target = np.empty(span, dtype=np.float32)
        else:
            direct = out is None or (out.dtype == torch.float32 and out.is_contiguous()
                                     and out.device.type == "cpu" and not out.requires_grad)
            res = alloc_out(shape, out)
            target = res.view(-1).numpy() if direct else np.empty(n, dtype=np.float32)

        def write(c0: int, c1: int) -> None:
            kern.decode(idx, u, vpay, vbits, levels, fvals, span, self.chunk, self.k, c0, c1, target)

        kern.parallel(write, chunks, self.chunk, _PART_MIN)
        if self.dct:
            dense = self._inverse(torch.from_numpy(target).view(full, self.chunk)).reshape(-1)[:n]
            if not all_finite(dense):
                raise CodecError(f"{self.spec}: expected a finite result, found one that overflows float32")
            res = alloc_out(shape, out)
            res.view(-1).copy_(dense)
        elif not direct:
            res.view(-1).copy_(torch.from_numpy(target))
        return res

    def _check_sorted(self, idx: torch.Tensor, full: int, tail: int, kt: int) -> None:
        groups = []
        if full:
            groups.append((idx[: full * self.k].view(full, self.k), 0))
        if tail and kt > 1:
            groups.append((idx[full * self.k :].view(1, kt), full))
        for rows, first in groups:
            if rows.shape[1] < 2:
                continue
            steps = rows[:, 1:] - rows[:, :-1]
            bad = torch.nonzero(steps <= 0)
            if bad.numel():
                c, j = int(bad[0, 0]), int(bad[0, 1]) + 1
                what = "repeated" if int(steps[c, j - 1]) == 0 else "unsorted"
                raise CodecError(f"{self.spec}: {what} index in chunk {first + c} at position {j}: expected > "
                                 f"{int(rows[c, j - 1])}, found {int(rows[c, j])}")


def _zero_padding(raw: np.ndarray, nbits: int) -> bool:
    """True if the bits of ``raw`` past the first ``nbits`` are all zero."""
    pad = raw.size * 8 - nbits
    return not (pad and int(raw[-1]) >> (8 - pad))


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``values`` (non-negative integers or bools, each < 2**bits) as ``bits``-bit fields,
    least significant bit first, zero-padded to a byte."""
    values = np.asarray(values).reshape(-1)
    m = values.size
    if m == 0:
        return b""
    if bits == 1:
        return np.packbits(values.astype(bool), bitorder="little").tobytes()
    if bits in (2, 4):
        per = 8 // bits
        v = np.zeros(-(-m // per) * per, dtype=np.uint8)
        v[:m] = values
        v = v.reshape(-1, per)
        out = v[:, 0].copy()
        for j in range(1, per):
            out |= v[:, j] << (bits * j)
        return out.tobytes()
    if bits == 12:  # two fields in three bytes
        v = np.zeros(m + (m & 1), dtype=np.uint32)
        v[:m] = values
        pair = v[0::2] | (v[1::2] << 12)
        raw = pair.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].reshape(-1)
        return raw[: (m * 12 + 7) // 8].tobytes()
    shifts = np.arange(bits, dtype=np.int64)
    planes = ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def _unpack_bits(mv: memoryview, m: int, bits: int, weights: torch.Tensor, spec: str, what: str) -> torch.Tensor:
    """Inverse of ``_pack_bits`` for ``m`` fields (int64); rejects non-zero padding bits."""
    if m == 0:
        return torch.zeros(0, dtype=torch.int64)
    raw = np.frombuffer(mv, dtype=np.uint8)
    pad_bits = raw.size * 8 - m * bits
    if pad_bits and int(raw[-1]) >> (8 - pad_bits):
        raise CodecError(f"{spec}: expected zero padding after the {what} fields, found set bits")
    if bits in (1, 2, 4):
        per = 8 // bits
        fields = (raw[:, None] >> (np.arange(per, dtype=np.uint8) * bits)) & ((1 << bits) - 1)
        return torch.from_numpy(fields.reshape(-1)[:m].astype(np.int64))
    if bits == 12:
        b = np.zeros(-(-m // 2) * 3, dtype=np.uint8)
        b[: raw.size] = raw
        b = b.reshape(-1, 3).astype(np.int64)
        pair = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fields = np.stack([pair & 0xFFF, pair >> 12], axis=1).reshape(-1)[:m]
        return torch.from_numpy(fields)
    flat = np.unpackbits(raw, bitorder="little")
    planes = torch.from_numpy(flat[: m * bits].reshape(m, bits).astype(np.int64))
    return (planes * weights).sum(dim=1)

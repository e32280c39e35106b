"""Sparsifying codecs: ``topk:FRACTION`` and ``randk:FRACTION[:unbiased]``.

Both keep ``k = max(1, floor(FRACTION * n))`` of the ``n`` values (``k = 0``
when ``n = 0``; ``k <= n``) and send them as fp32.

``topk`` keeps the k entries of largest magnitude (ties broken by torch.topk).
Payload: 8-byte header | k uint32 indices, strictly increasing | k fp32
values. Indices are absolute uint32 (not uint16 deltas): fixed size, known
before encoding, and checkable in one vectorized pass. Ratio ``4n / (8 + 8k)``
~= ``1 / (2 FRACTION)`` (500x at 0.001). Error bound: kept entries are exact,
every dropped entry is no larger in magnitude than any kept one, and
``||x - x^||^2 <= (1 - k/n) ||x||^2`` (a contraction, as EF/EF21 require).
The decoder rejects indices out of range, unsorted or duplicated, and
non-finite values.

``randk`` keeps k coordinates drawn uniformly without replacement from a
``torch.Generator`` seeded by the shared ``seed`` (``randperm(n)[:k]``,
sorted), so no index bytes travel: the receiver regenerates them. Payload:
8-byte header | k fp32 values. Ratio ``4n / (8 + 4k)`` ~= ``1 / FRACTION``.
Default (biased) decode puts the raw values back: kept entries exact,
``E||x - x^||^2 = (1 - k/n) ||x||^2`` (a contraction in expectation, suited
to EF/EF21/EControl). With ``:unbiased`` the decoder scales by ``n/k``:
``E[x^] = x`` and ``E||x - x^||^2 = (n/k - 1) ||x||^2``. Use a fresh shared
seed per message so the coordinates change every round. Its decoder rejects
values that the ``n/k`` scaling takes beyond float32 (to inf), and its
encoder raises CodecError for input that would be sent as such values.
"""

from __future__ import annotations

from collections.abc import Hashable

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

__all__ = ["TopKCodec", "RandKCodec", "keep_count"]


def keep_count(fraction: float, n: int) -> int:
    """Number of values kept out of ``n``: ``max(1, floor(fraction * n))``, 0 for n == 0."""
    if n == 0:
        return 0
    return min(n, max(1, int(fraction * n)))


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], found {fraction}")
    return fraction


class TopKCodec(Codec):
    """Keep the k largest-magnitude entries with their uint32 indices."""

    codec_id = 6

    def __init__(self, fraction: float) -> None:
        self.fraction = _check_fraction(fraction)
        self.spec = f"topk:{self.fraction!r}"
        self.lossless = False
        self._tag = spec_tag(self.spec)

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        return HEADER_SIZE + 8 * keep_count(self.fraction, numel(tuple(shape)))

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        flat = as_float32_flat(x, self.spec)
        n = flat.numel()
        k = keep_count(self.fraction, n)
        header = pack_header(self.codec_id, self._tag, n)
        if k == 0:
            return header
        _, idx = torch.topk(flat.abs(), k, sorted=False)  # NaN/inf rank first: caught below
        idx, _ = torch.sort(idx)
        vals = flat[idx]
        if not bool(torch.isfinite(vals).all()):
            raise CodecError(f"{self.spec}: expected finite input, found NaN or inf")
        return b"".join((header, tensor_bytes(idx.to(torch.int32)).tobytes(), tensor_bytes(vals).tobytes()))

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        n = numel(shape)
        k = keep_count(self.fraction, n)
        mv = check_payload(data, codec_id=self.codec_id, tag=self._tag, n=n,
                           size=self.encoded_size(shape), name=self.spec)
        if k == 0:
            return alloc_out(shape, out)
        idx = frombuffer(mv, "<u4", HEADER_SIZE, k).to(torch.int64)
        vals = frombuffer(mv, "<f4", HEADER_SIZE + 4 * k, k)
        if k > 1:
            steps = idx[1:] - idx[:-1]
            if not bool((steps > 0).all()):
                bad = int(torch.nonzero(steps <= 0)[0, 0]) + 1
                what = "duplicate" if int(steps[bad - 1]) == 0 else "unsorted"
                raise CodecError(
                    f"{self.spec}: {what} index at position {bad}: expected > {int(idx[bad - 1])}, "
                    f"found {int(idx[bad])}"
                )
        last = int(idx[-1])
        if last >= n:
            raise CodecError(f"{self.spec}: index out of range: expected < {n}, found {last}")
        if not all_finite(vals):
            raise CodecError(f"{self.spec}: expected finite values, found NaN or inf")
        res = alloc_out(shape, out)
        flat = res.view(-1)
        flat.zero_()
        flat[idx] = vals
        return res


class RandKCodec(Codec):
    """Keep k coordinates chosen by a shared seeded generator; no indices on the wire."""

    codec_id = 7

    def __init__(self, fraction: float, unbiased: bool = False) -> None:
        self.fraction = _check_fraction(fraction)
        self.unbiased = bool(unbiased)
        self.spec = f"randk:{self.fraction!r}" + (":unbiased" if self.unbiased else "")
        self.lossless = False
        self._tag = spec_tag(self.spec)

    def indices(self, n: int, seed: int) -> torch.Tensor:
        """The sorted int64 coordinates both ends use for ``n`` elements and ``seed``."""
        k = keep_count(self.fraction, n)
        if k == 0:
            return torch.empty(0, dtype=torch.int64)
        if k == n:
            return torch.arange(n)
        gen = make_generator(seed, stream=2)
        idx, _ = torch.sort(torch.randperm(n, generator=gen)[:k])
        return idx

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        return HEADER_SIZE + 4 * keep_count(self.fraction, numel(tuple(shape)))

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        flat = as_float32_flat(x, self.spec)
        n = flat.numel()
        if not all_finite(flat):  # unsent values too: state built on x must stay finite
            raise CodecError(f"{self.spec}: expected finite input, found NaN or inf")
        vals = flat[self.indices(n, seed)]
        if self.unbiased and n and not all_finite(vals * (n / vals.numel())):
            raise CodecError(
                f"{self.spec}: input too large: the decoder's n/k = {n / vals.numel():.6g} scaling of the "
                f"kept values (max |x| {float(vals.abs().max()):.6g}) overflows float32"
            )
        return pack_header(self.codec_id, self._tag, n) + tensor_bytes(vals).tobytes()

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        n = numel(shape)
        k = keep_count(self.fraction, n)
        mv = check_payload(data, codec_id=self.codec_id, tag=self._tag, n=n,
                           size=self.encoded_size(shape), name=self.spec)
        vals = frombuffer(mv, "<f4", HEADER_SIZE, k)
        if not all_finite(vals):
            raise CodecError(f"{self.spec}: expected finite values, found NaN or inf")
        if self.unbiased and k:
            vals = vals * (n / k)
            if not all_finite(vals):
                raise CodecError(
                    f"{self.spec}: expected values whose n/k = {n / k:.6g} scaling stays finite, found one "
                    f"that overflows float32"
                )
        res = alloc_out(shape, out)
        flat = res.view(-1)
        flat.zero_()
        if k:
            flat[self.indices(n, seed)] = vals
        return res


"""Low-rank compression of matrices: ``powersgd:RANK[:warm]`` (Vogels et al., 2019).

A tensor of shape ``(d0, d1, ...)`` with at least 2 dimensions is viewed as
the matrix ``M`` of shape ``(d0, d1*d2*...)``. With ``r = min(RANK, rows,
cols)``, one power iteration:

    Q0 ~ N(0, 1)^(cols x r)  from a generator seeded by the shared ``seed``
         (``:warm``: the previous Q sent on the same ``key``, when shapes match)
    P  = orth(M Q0)          (reduced QR: orthonormal columns)
    Q  = M^T P
    send P (rows x r) and Q (cols x r) as fp32;  decode: M^ = P Q^T

Payload: 8-byte header | P | Q, ``8 + 4 r (rows + cols)`` bytes. Ratio
``rows*cols / (r (rows + cols))`` (e.g. 1024x1024 at rank 4: 128x).

Error bound: ``M^ = P P^T M`` is the orthogonal projection of M onto the
span of P, so ``||M - M^||_F^2 = ||M||_F^2 - ||P^T M||_F^2 <= ||M||_F^2``, and
M is recovered exactly (to fp32 rounding) when ``rank(M) <= r``.

Fallback: 1-D (or empty) tensors, and shapes where the low-rank payload would
not be smaller than the fallback's, are sent with the fallback codec
(default ``int8:256``: bounded error, ~3.9x, no overflow) and carry its
header. Both ends pick the same path from the shape alone. ``whole_tensors``
is True: callers must pass the original tensors, not flattened buckets.

Stateful only with ``:warm`` (encoder side, per key); decoding is stateless.

Decode rejects non-finite factors and factors whose product ``P Q^T``
overflows float32 (checked on the factors, ``r max|P| max|Q| < 2^127``, and
on the product only when that bound fails), so it never returns NaN or inf.
The encoder raises CodecError for finite input too large for float32 power
iteration (``M Q0``, ``M^T P`` or the reconstruction overflow).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

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
    plain_key,
    spec_tag,
    tensor_bytes,
)

__all__ = ["PowerSGDCodec"]

_SAFE = 2.0**127  # half of float32's max: a bound on |P Q^T| below it leaves room for rounding


def _checked_product(p: torch.Tensor, q: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """``(finite, product)``: whether ``p @ q.T`` is all finite, and the product if it was computed.

    Each entry is a sum of r products, so ``|(P Q^T)_ij| <= r max|P| max|Q|``
    (float32 rounding adds at most a factor 1 + r 2^-23). When that bound is
    below ``_SAFE`` no entry can overflow: nothing is computed (``None``).
    """
    r = p.shape[1]
    if r * float(p.abs().amax()) * float(q.abs().amax()) < _SAFE:
        return True, None
    prod = p @ q.T
    return all_finite(prod), prod


class PowerSGDCodec(Codec):
    """Rank-r PowerSGD with a fallback codec for vectors and unprofitable shapes."""

    codec_id = 9
    whole_tensors = True

    def __init__(self, rank: int, warm: bool = False, fallback: Codec | None = None) -> None:
        rank = int(rank)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, found {rank}")
        if fallback is None:
            from .quant import BlockQuantCodec

            fallback = BlockQuantCodec(8, 256)
        self.rank = rank
        self.warm = bool(warm)
        self.fallback = fallback
        self.spec = f"powersgd:{rank}" + (":warm" if self.warm else "")
        self.lossless = False
        self._tag = spec_tag(self.spec)
        self._q: dict[Hashable, torch.Tensor] = {}

    def _plan(self, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        """``(rows, cols, r)`` when the low-rank path is used, else None (fallback)."""
        if len(shape) < 2 or numel(shape) == 0:
            return None
        rows = shape[0]
        cols = numel(shape) // rows
        r = min(self.rank, rows, cols)
        if HEADER_SIZE + 4 * r * (rows + cols) >= self.fallback.encoded_size(shape):
            return None
        return rows, cols, r

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        shape = tuple(shape)
        plan = self._plan(shape)
        if plan is None:
            return self.fallback.encoded_size(shape)
        rows, cols, r = plan
        return HEADER_SIZE + 4 * r * (rows + cols)

    def reset(self, key: Hashable = None, *, all_keys: bool = False) -> None:
        """Forget the warm-start Q of ``key`` (or of every key)."""
        if all_keys:
            self._q.clear()
        else:
            self._q.pop(key, None)

    def state_dict(self, match: Callable[[Hashable], bool] | None = None) -> dict[str, Any]:
        """The warm-start Qs (``:warm``) of the keys ``match`` accepts, as data."""
        if not self._q:
            return {}
        return {"spec": self.spec, "q": [[k, q.clone()] for k, q in self._q.items() if match is None or match(k)]}

    def load_state_dict(self, sd: dict[str, Any], match: Callable[[Hashable], bool] | None = None) -> None:
        """Restore ``state_dict()`` output (only the keys ``match`` accepts, when given)."""
        if sd.get("spec", self.spec) != self.spec:
            raise CodecError(f"{self.spec}: cannot load the state of codec {sd.get('spec')!r}")
        for k in [k for k in self._q if match is None or match(k)]:
            del self._q[k]
        for k, q in sd.get("q", []):
            self._q[plain_key(k)] = q.detach().to(torch.float32).clone()

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        if not isinstance(x, torch.Tensor):
            raise CodecError(f"{self.spec}: expected a torch.Tensor, found {type(x).__name__}")
        shape = tuple(x.shape)
        plan = self._plan(shape)
        if plan is None:
            return self.fallback.encode(x, key=key, seed=seed)
        rows, cols, r = plan
        m = as_float32_flat(x, self.spec).view(rows, cols)
        q0 = self._q.get(key) if self.warm else None
        if q0 is None or tuple(q0.shape) != (cols, r):
            q0 = torch.randn(cols, r, generator=make_generator(seed, stream=3))
        p = m @ q0
        if not all_finite(p):
            self._raise_nonfinite(m)
        p = torch.linalg.qr(p, mode="reduced").Q.contiguous()
        q = (m.T @ p).contiguous()
        if not all_finite(q) or not _checked_product(p, q)[0]:
            self._raise_nonfinite(m)
        if self.warm:
            self._q[key] = q.clone()
        return b"".join((pack_header(self.codec_id, self._tag, rows * cols),
                         tensor_bytes(p).tobytes(), tensor_bytes(q).tobytes()))

    def _raise_nonfinite(self, m: torch.Tensor) -> None:
        if not all_finite(m):
            raise CodecError(f"{self.spec}: expected finite input, found NaN or inf")
        raise CodecError(
            f"{self.spec}: input too large (max |x| {float(m.abs().amax()):.6g}): the float32 power "
            f"iteration or its reconstruction overflows; scale it down or use int8"
        )

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        plan = self._plan(shape)
        if plan is None:
            return self.fallback.decode(data, shape, key=key, seed=seed, out=out)
        rows, cols, r = plan
        mv = check_payload(data, codec_id=self.codec_id, tag=self._tag, n=rows * cols,
                           size=self.encoded_size(shape), name=self.spec)
        p = frombuffer(mv, "<f4", HEADER_SIZE, rows * r).view(rows, r)
        q = frombuffer(mv, "<f4", HEADER_SIZE + 4 * rows * r, cols * r).view(cols, r)
        if not (all_finite(p) and all_finite(q)):
            raise CodecError(f"{self.spec}: expected finite factors, found NaN or inf")
        finite, prod = _checked_product(p, q)
        if not finite:
            raise CodecError(
                f"{self.spec}: expected factors whose product P Q^T is finite, found one that overflows "
                f"float32 (max |P| {float(p.abs().amax()):.6g}, max |Q| {float(q.abs().amax()):.6g})"
            )
        res = alloc_out(shape, out)
        if prod is None:
            torch.matmul(p, q.T, out=res.view(rows, cols))
        else:
            res.view(rows, cols).copy_(prod)
        return res

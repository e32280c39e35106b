"""Float codecs: ``fp32`` (alias ``none``), ``fp16``, ``bf16``.

Payload: 8-byte header, then the values as little-endian fp32 / fp16 / bf16.

* ``fp32``: lossless identity. Compression ratio 4n / (8 + 4n) ~= 1.
* ``fp16``: ratio 4n / (8 + 2n) ~= 2. Round-to-nearest-even: relative error
  ``|x - x^| <= 2^-11 |x|`` for |x| in the normal range [2^-14, 65504];
  absolute error <= 2^-25 below it. Values whose magnitude rounds beyond
  65504 raise CodecError at encode (no silent inf): use ``bf16`` or ``int8``
  for wide ranges.
* ``bf16``: ratio ~= 2. Relative error ``|x - x^| <= 2^-8 |x|`` (8-bit
  significand, fp32 exponent range, so no overflow for finite fp32 input
  below 3.39e38).

Encoders reject non-finite input; decoders reject non-finite values.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from gossamer.errors import CodecError

from .base import (
    HEADER_SIZE,
    Codec,
    as_float32_flat,
    alloc_out,
    check_payload,
    finite_or_raise,
    frombuffer,
    numel,
    pack_header,
    spec_tag,
    tensor_bytes,
)

__all__ = ["FloatCodec", "FP32", "FP16", "BF16"]


@dataclass(frozen=True)
class _FloatFormat:
    name: str
    codec_id: int
    itemsize: int
    torch_dtype: torch.dtype
    np_wire: str  # numpy dtype string of the wire items


_FORMATS = {
    "fp32": _FloatFormat("fp32", 1, 4, torch.float32, "<f4"),
    "fp16": _FloatFormat("fp16", 2, 2, torch.float16, "<f2"),
    "bf16": _FloatFormat("bf16", 3, 2, torch.bfloat16, "<i2"),  # numpy has no bf16: raw int16
}


class FloatCodec(Codec):
    """Cast to a float format and send the raw little-endian values."""

    def __init__(self, fmt: str) -> None:
        if fmt not in _FORMATS:
            raise ValueError(f"unknown float format {fmt!r}")
        self._fmt = _FORMATS[fmt]
        self.spec = fmt
        self.lossless = fmt == "fp32"
        self._tag = spec_tag(fmt)

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        return HEADER_SIZE + self._fmt.itemsize * numel(tuple(shape))

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        f = self._fmt
        flat = as_float32_flat(x, f.name)
        n = flat.numel()
        if f.torch_dtype is torch.float32:
            finite_or_raise(flat, "input values", f.name)
            body = flat
        else:
            body = flat.to(f.torch_dtype)
            if n and not bool(torch.isfinite(body).all()):
                finite_or_raise(flat, "input values", f.name)
                raise CodecError(
                    f"{f.name}: input exceeds the {f.name} range (max |x| "
                    f"{float(flat.abs().max()):.6g} > {torch.finfo(f.torch_dtype).max:.6g})"
                )
            if f.torch_dtype is torch.bfloat16:
                body = body.view(torch.int16)
        out = bytearray(HEADER_SIZE + f.itemsize * n)
        out[:HEADER_SIZE] = pack_header(f.codec_id, self._tag, n)
        out[HEADER_SIZE:] = tensor_bytes(body)
        return bytes(out)

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        f = self._fmt
        n = numel(shape)
        mv = check_payload(data, codec_id=f.codec_id, tag=self._tag, n=n,
                           size=self.encoded_size(shape), name=f.name)
        raw = frombuffer(mv, f.np_wire, HEADER_SIZE, n)
        if f.torch_dtype is torch.bfloat16:
            raw = raw.view(torch.bfloat16)
        finite_or_raise(raw, "values", f.name)
        res = alloc_out(shape, out)
        res.view(-1).copy_(raw)
        return res


def FP32() -> FloatCodec:
    return FloatCodec("fp32")


def FP16() -> FloatCodec:
    return FloatCodec("fp16")


def BF16() -> FloatCodec:
    return FloatCodec("bf16")

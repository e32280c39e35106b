"""1-bit sign compression with per-block scale: ``sign[:BLOCK]`` (default 256).

Each block b of ``BLOCK`` consecutive values (last may be shorter) is sent as
one fp32 scale ``s_b = mean|x_b|`` and one bit per value (1 for ``x >= 0``,
packed little-endian bit order); ``decode`` returns ``x^_i = +-s_b``.

Payload: 8-byte header | ``ceil(n/BLOCK)`` fp32 scales | ``ceil(n/8)`` bytes
of bits (unused high bits of the last byte must be 0).

Compression ratio: ``4n / (8 + ceil(n/8) + 4 ceil(n/BLOCK))`` ->
``32 / (1 + 32/BLOCK)``: 28.4 at BLOCK=256.

Error bound (exact identity, Karimireddy et al. 2019, scaled sign): per block
``||x_b - x^_b||^2 = ||x_b||^2 - ||x_b||_1^2 / |b| <= (1 - 1/|b|) ||x_b||^2``,
so the codec is a contraction (suited to EF/EF21/EControl). The decoder
rejects non-finite or negative scales and non-zero padding bits, so it only
ever returns ``+-s_b`` with finite ``s_b``. Block means of huge finite input
whose float32 sum overflows are taken in float64.
"""

from __future__ import annotations

from collections.abc import Hashable

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
    numel,
    pack_header,
    spec_tag,
    tensor_bytes,
)

__all__ = ["SignCodec"]


class SignCodec(Codec):
    """Scaled sign, one bit per value plus a mean-abs scale per block."""

    codec_id = 8

    def __init__(self, block: int = 256) -> None:
        block = int(block)
        if block < 1:
            raise ValueError(f"block must be >= 1, found {block}")
        self.block = block
        self.spec = f"sign:{block}"
        self.lossless = False
        self._tag = spec_tag(self.spec)

    def _nblocks(self, n: int) -> int:
        return -(-n // self.block)

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        n = numel(tuple(shape))
        return HEADER_SIZE + 4 * self._nblocks(n) + (n + 7) // 8

    def _block_scales(self, a: torch.Tensor) -> torch.Tensor:
        """Per-block mean of the flat tensor ``a``."""
        n = a.numel()
        nfull = n // self.block
        parts = []
        if nfull:
            parts.append(a[: nfull * self.block].view(nfull, self.block).mean(dim=1))
        if n > nfull * self.block:
            parts.append(a[nfull * self.block :].mean().reshape(1))
        return torch.cat(parts)

    def _expand(self, scales: torch.Tensor, n: int) -> torch.Tensor:
        return scales.repeat_interleave(self.block)[:n]

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        flat = as_float32_flat(x, self.spec)
        n = flat.numel()
        header = pack_header(self.codec_id, self._tag, n)
        if n == 0:
            return header
        scales = self._block_scales(flat.abs())
        if not all_finite(scales):
            if not all_finite(flat):
                raise CodecError(f"{self.spec}: expected finite input, found NaN or inf")
            # finite input whose float32 block sums overflow: a mean of values <= FLT_MAX fits float32
            scales = self._block_scales(flat.abs().double()).float()
        bits = np.packbits((flat >= 0).numpy(), bitorder="little")
        return b"".join((header, tensor_bytes(scales).tobytes(), bits.tobytes()))

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        n = numel(shape)
        mv = check_payload(data, codec_id=self.codec_id, tag=self._tag, n=n,
                           size=self.encoded_size(shape), name=self.spec)
        if n == 0:
            return alloc_out(shape, out)
        nb = self._nblocks(n)
        scales = frombuffer(mv, "<f4", HEADER_SIZE, nb)
        if not bool((torch.isfinite(scales) & (scales >= 0)).all()):
            raise CodecError(f"{self.spec}: expected finite non-negative block scales, found NaN, inf or < 0")
        packed = np.frombuffer(mv, dtype=np.uint8, count=(n + 7) // 8, offset=HEADER_SIZE + 4 * nb)
        if n % 8 and int(packed[-1]) >> (n % 8):
            raise CodecError(f"{self.spec}: expected zero padding bits in the last byte, found 0x{int(packed[-1]):02x}")
        bits = torch.from_numpy(np.unpackbits(packed, count=n, bitorder="little"))
        res = alloc_out(shape, out)
        flat = res.view(-1)
        flat.copy_(bits)
        flat.mul_(2.0).sub_(1.0).mul_(self._expand(scales, n))
        return res

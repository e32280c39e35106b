"""Codec throughput benchmark against memcpy, interleaved in one run.

``run_codec_bench`` times encode+decode of a random float32 tensor for each
codec spec and size, and, in the same loop iteration, a ``dst.copy_(src)``
of the same fp32 size (the memcpy baseline). Throughput is MB (1e6 bytes) of
fp32 input per second; figures are medians over ``repeats``. Decoding writes
into a preallocated output (``decode(..., out=)``), as the memcpy baseline
writes into a preallocated destination; encode allocates its bytes.
Codecs with ``whole_tensors`` (PowerSGD) get a 2-D tensor of about square
shape with the same element count. ``rel_error`` is ||x - x^|| / ||x||.

No printing: pass ``progress(msg)`` to follow along. The CLI owns output.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from gossamer.codecs import chunked, make_codec, quant

__all__ = ["DEFAULT_SPECS", "run_codec_bench"]

DEFAULT_SPECS: tuple[str, ...] = (
    "fp16", "bf16", "int8:256", "int8:256:sr", "int4:128", "topk:0.01", "randk:0.01", "sign:256", "powersgd:4",
    "ctopk:64:4096:2bit", "ctopk:16:4096:1bit", "crandk:256:4096:2bit",
)


def _shape_for(n: int, whole: bool) -> tuple[int, ...]:
    if not whole:
        return (n,)
    rows = 1 << (max(0, n.bit_length() - 1) // 2)
    while n % rows:
        rows //= 2
    return (rows, n // rows)


def run_codec_bench(
    sizes: Sequence[int] = (1 << 20, 1 << 24, 1 << 26),
    repeats: int = 5,
    specs: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Benchmark codecs; returns ``{"rows": [...], "cores": os.cpu_count(), "threads": ..., "quant_kernels": ...}``.

    ``threads`` is torch's intra-op thread count (the memcpy baseline uses it too);
    ``quant_kernels`` says which int8/int4 implementation ran: ``"numba X.Y"`` or ``"torch"``;
    ``sparse_kernels`` the same for ctopk/crandk (``"numba X.Y"`` or ``"numpy"``).

    Each row: ``codec, elements, throughput_MBps, memcpy_MBps,
    throughput_ratio_vs_memcpy, compression_ratio, rel_error``.
    """
    specs = list(specs or DEFAULT_SPECS)
    rows: list[dict] = []
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        src = torch.randn(n, generator=gen)
        dst = torch.empty_like(src)
        mbytes = 4 * n / 1e6
        for spec in specs:
            codec = make_codec(spec)
            shape = _shape_for(n, codec.whole_tensors)
            x = src.view(shape)
            out = torch.empty(shape)
            t_copy: list[float] = []
            t_codec: list[float] = []
            data = b""
            for r in range(repeats + 1):  # first round warms up and is dropped
                t0 = time.perf_counter()
                dst.copy_(src)
                t1 = time.perf_counter()
                data = codec.encode(x, key="bench", seed=r)
                codec.decode(data, shape, key="bench", seed=r, out=out)
                t2 = time.perf_counter()
                if r:
                    t_copy.append(t1 - t0)
                    t_codec.append(t2 - t1)
                del data
                data = b""
            data = codec.encode(x, key="bench-err", seed=0)
            y = make_codec(spec).decode(data, shape, key="bench-err", seed=0)
            err = float((y - x).norm() / x.norm())
            thr = mbytes / statistics.median(t_codec)
            mem = mbytes / statistics.median(t_copy)
            row = {
                "codec": codec.spec,
                "elements": n,
                "throughput_MBps": thr,
                "memcpy_MBps": mem,
                "throughput_ratio_vs_memcpy": thr / mem,
                "compression_ratio": 4 * n / len(data),
                "rel_error": err if math.isfinite(err) else float("nan"),
            }
            rows.append(row)
            del data, y, out
            if progress is not None:
                progress(f"{codec.spec} n={n}: {thr:.0f} MB/s ({thr / mem:.2f}x memcpy), ratio {row['compression_ratio']:.1f}")
    return {"rows": rows, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "quant_kernels": _kernels(quant.accelerated(), "torch"),
            "sparse_kernels": _kernels(chunked.accelerated(), "numpy")}


def _kernels(accelerated: bool, fallback: str) -> str:
    if not accelerated:
        return fallback
    import numba

    return f"numba {numba.__version__}"

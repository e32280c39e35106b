"""Arithmetic mean: the non-robust baseline.

Rule: ``mean(x) = (1/n) sum_i x_i`` over the finite rows.

Bound: none that helps. A single Byzantine contribution moves the mean
arbitrarily far (breakdown point 0), so the mean tolerates ``f = 0``. The
``f`` it is built with is recorded (so a benchmark can run it beside the robust
rules with the same ``f``) but never used and never rejected.

Chunked: coordinate-wise, needs no global statistic beyond the base class's
non-finite count.
"""

from __future__ import annotations

import torch

from gossamer.aggregate.base import Aggregator, _Reduce


class Mean(Aggregator):
    """Arithmetic mean of the finite rows (tolerates no Byzantine row)."""

    def __init__(self, f: int = 0) -> None:
        super().__init__(f)
        self.spec = "mean"

    def max_f(self, n: int) -> int:
        return self.f if n >= 1 else -1

    def bound(self) -> str:
        return "n >= 1 (the mean has no Byzantine tolerance; f is not used)"

    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        return x.mean(dim=0)
        yield  # pragma: no cover  (makes this a generator)

"""Coordinate-wise median (Yin et al. 2018, "Byzantine-robust distributed
learning: towards optimal statistical rates").

Rule, per coordinate ``k``: ``med(x)_k = median(x_1k, ..., x_nk)``; for even
``n`` the mean of the two middle order statistics
``(x_(n/2) + x_(n/2+1)) / 2``.

Bound: ``n > 2f`` (breakdown point 1/2). With fewer than half Byzantine rows
the output lies, per coordinate, within the range of the honest values.

Chunked: purely coordinate-wise, no global statistic. Exactly
permutation-invariant (it only sorts).
"""

from __future__ import annotations

import torch

from gossamer.aggregate.base import Aggregator, _Reduce


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Per-column median of (n, c) ``x``; midpoint of the middle pair for even n."""
    n = x.shape[0]
    s = torch.sort(x, dim=0).values
    lo, hi = (n - 1) // 2, n // 2
    if lo == hi:
        return s[lo].clone()
    return (s[lo] + s[hi]) / 2


class Median(Aggregator):
    """Coordinate-wise median (n > 2f)."""

    def __init__(self, f: int) -> None:
        super().__init__(f)
        self.spec = "median"

    def max_f(self, n: int) -> int:
        return (n - 1) // 2

    def bound(self) -> str:
        return "n > 2f"

    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        return coordinate_median(x)
        yield  # pragma: no cover

"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-robust
distributed learning: towards optimal statistical rates").

Rule, per coordinate ``k``: sort ``x_1k, ..., x_nk``, drop the ``f`` largest
and the ``f`` smallest, and average the remaining ``n - 2f``:
``tm(x)_k = (1/(n-2f)) sum_{r=f+1}^{n-f} x_(r)k``.

Bound: ``n > 2f``. Per coordinate the output lies within the range of the
honest values (each kept value is bracketed by honest ones).

Chunked: purely coordinate-wise, no global statistic. Permutation-invariant
up to float rounding of the final sum (the sorted order is the same).
"""

from __future__ import annotations

import torch

from gossamer.aggregate.base import Aggregator, _Reduce


class TrimmedMean(Aggregator):
    """Coordinate-wise f-trimmed mean (n > 2f)."""

    def __init__(self, f: int) -> None:
        super().__init__(f)
        self.spec = "trimmed_mean"

    def max_f(self, n: int) -> int:
        return (n - 1) // 2

    def bound(self) -> str:
        return "n > 2f"

    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        n = x.shape[0]
        s = torch.sort(x, dim=0).values
        return s[f : n - f].mean(dim=0)
        yield  # pragma: no cover

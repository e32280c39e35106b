"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer 2017,
"Machine learning with adversaries: Byzantine tolerant gradient descent").

Rule: with ``D_ij = ||x_i - x_j||^2`` (whole-vector squared distances) and
``N_i`` the ``n - f - 2`` rows closest to ``x_i`` (``j != i``),

    score(i) = sum_{j in N_i} D_ij
    Krum(x)  = x_{i*},  i* = argmin_i score(i)
    MultiKrum_m(x) = (1/m) sum_{i in S_m} x_i,  S_m = the m lowest scores

Ties (equal distances or equal scores) are broken by the lower row index.
Multi-Krum's ``m`` defaults to ``n - f`` (computed on the rows that survive
the non-finite filter) and must satisfy ``1 <= m <= n - f``.

Bound: ``n > 2f + 2`` (Blanchard et al., Prop. 1 assumes ``2f + 2 < n``).

Chunked: one exchange of the ``(n, n)`` matrix of partial squared distances,
accumulated in float64; the selection is made from the global sum, so every
chunk owner picks the same rows. Permutation-invariant (the selected vector is
the same, up to ties); Multi-Krum averages the selected rows in index order.
"""

from __future__ import annotations

import torch

from gossamer.aggregate.base import Aggregator, _Reduce, exchange, partial_sq_dists
from gossamer.errors import ConfigError


def krum_scores(d2: torch.Tensor, f: int) -> torch.Tensor:
    """Krum scores from the global (n, n) squared-distance matrix."""
    n = d2.shape[0]
    k = n - f - 2
    if k <= 0:
        return torch.zeros(n, dtype=torch.float64, device=d2.device)
    # exclude the diagonal: +inf sorts last
    masked = d2.clone()
    masked.fill_diagonal_(float("inf"))
    nearest = torch.sort(masked, dim=1, stable=True).values[:, :k]
    return nearest.sum(dim=1)


def lowest(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the ``m`` lowest scores, ties to the lower index, ascending."""
    order = torch.sort(scores, stable=True).indices[:m]
    return torch.sort(order).values


class Krum(Aggregator):
    """Krum (m=None) or Multi-Krum (m rows averaged; n > 2f + 2)."""

    def __init__(self, f: int, m: int | None = None, *, multi: bool = False) -> None:
        super().__init__(f)
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(f"multikrum:m needs an int m >= 1, got m={m!r}")
        self.multi = multi or m is not None
        self.m = m
        if not self.multi:
            self.spec = "krum"
        else:
            self.spec = "multikrum" if m is None else f"multikrum:{m}"

    def max_f(self, n: int) -> int:
        fmax = (n - 3) // 2
        if self.m is not None:
            fmax = min(fmax, n - self.m)
        return fmax if fmax >= 0 else -1

    def bound(self) -> str:
        if self.m is not None:
            return "n > 2f + 2 and m <= n - f"
        return "n > 2f + 2"

    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        n = x.shape[0]
        d2 = yield from exchange(partial_sq_dists(x))
        scores = krum_scores(d2, f)
        if not self.multi:
            return x[lowest(scores, 1)[0]].clone()
        m = n - f if self.m is None else min(self.m, n - f)
        return x[lowest(scores, m)].mean(dim=0)

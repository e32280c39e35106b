"""Nearest-neighbour mixing, a pre-aggregator (Allouah, Farhadkhani,
Guerraoui, Gupta, Pinot, Stephan 2023, "Fixing by mixing: a recipe for
optimal Byzantine ML under heterogeneity").

Rule: with ``D_ij = ||x_i - x_j||^2`` and ``N_i`` the ``n - f`` rows nearest
to ``x_i``, itself included (it is always first; further ties go to the lower
index),

    y_i = (1/(n-f)) sum_{j in N_i} x_j,      NNM+R(x) = R(y_1, ..., y_n)

Bound: ``n > 2f`` for the mixing, plus the inner rule's own bound on ``n``
rows with the same ``f`` (the mixed rows are still ``n``, the rule still
tolerates ``f``).

Chunked: one exchange of the ``(n, n)`` partial squared distances; the
neighbour sets come from the global sum, so every owner mixes identically,
then the inner rule runs its own exchanges on the mixed chunk.
Permutation-invariant up to float rounding if the inner rule is.
"""

from __future__ import annotations

import torch

from gossamer.aggregate.base import Aggregator, _Reduce, exchange, partial_sq_dists


def nnm_weights(d2: torch.Tensor, f: int) -> torch.Tensor:
    """(n, n) row-stochastic mixing matrix: 1/(n-f) on each row's n-f nearest."""
    n = d2.shape[0]
    k = n - f
    keyed = d2.clone()
    keyed.fill_diagonal_(-1.0)  # self first, always included
    nearest = torch.sort(keyed, dim=1, stable=True).indices[:, :k]
    w = torch.zeros((n, n), dtype=torch.float64, device=d2.device)
    w.scatter_(1, nearest, 1.0 / k)
    return w


class NNM(Aggregator):
    """Nearest-neighbour mixing followed by an inner rule."""

    def __init__(self, inner: Aggregator) -> None:
        super().__init__(inner.f)
        self.inner = inner
        self.spec = f"nnm+{inner.spec}"

    def max_f(self, n: int) -> int:
        return min((n - 1) // 2, self.inner.max_f(n))

    def bound(self) -> str:
        return f"n > 2f for nnm and {self.inner.bound()} for {self.inner.spec}"

    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        d2 = yield from exchange(partial_sq_dists(x))
        y = nnm_weights(d2, f) @ x
        return (yield from self.inner._reduce(y, f, seed))

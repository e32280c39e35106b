"""Centered clipping (Karimireddy, He, Jaggi 2021, "Learning from history for
Byzantine robust optimization").

Rule: from a starting point ``v_0``, run ``L`` iterations of

    v_{l+1} = v_l + (1/n) sum_i clip_tau(x_i - v_l),
    clip_tau(z) = z * min(1, tau / ||z||)

so one iteration moves ``v`` by at most ``tau`` (a mean of vectors of norm
``<= tau``). The paper starts from the previous round's aggregate (momentum);
an aggregator here is stateless, so ``v_0`` is the coordinate-wise median of
the contributions (robust on its own, computed chunk-locally). A caller that
has history can centre on it by subtracting it from the rows first.

Defaults: ``tau = 1.0``, ``L = 3``. ``tau`` is in the units of the updates:
set it near the honest spread (the paper tunes it; with momentum-centred
starting points it uses ``L = 1``).

Bound: ``n > 2f`` is enforced (the starting median needs it); the paper's
guarantee needs a smaller Byzantine fraction (``delta = f/n`` below a
constant, about 0.1 in its analysis).

Chunked: each iteration exchanges the ``(n,)`` partial squared norms of
``x_i - v_l``; the clipping factors use the global norms, so every owner
scales rows identically. Permutation-invariant up to float rounding.
"""

from __future__ import annotations

import math

import torch

from gossamer.aggregate.base import Aggregator, _Reduce, exchange, partial_sq_norms
from gossamer.aggregate.median import coordinate_median
from gossamer.errors import ConfigError


def clip_factors(sq_norms: torch.Tensor, tau: float) -> torch.Tensor:
    """``min(1, tau / ||z_i||)`` from global squared norms (1 where the norm is 0)."""
    norms = sq_norms.clamp_min(0).sqrt()
    return torch.where(norms > tau, tau / norms.clamp_min(tau), torch.ones_like(norms))


class CenteredClip(Aggregator):
    """Centered clipping around the coordinate median (n > 2f)."""

    def __init__(self, f: int, tau: float = 1.0, iters: int = 3) -> None:
        super().__init__(f)
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ConfigError(f"cclip needs tau > 0, got tau={tau!r}")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ConfigError(f"cclip needs iters >= 1, got iters={iters!r}")
        self.tau = float(tau)
        self.iters = iters
        self.spec = f"cclip:{self.tau:g}:{iters}"

    def max_f(self, n: int) -> int:
        return (n - 1) // 2

    def bound(self) -> str:
        return "n > 2f"

    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        v = coordinate_median(x)
        for _ in range(self.iters):
            sq = yield from exchange(partial_sq_norms(x, v))
            scale = clip_factors(sq, self.tau)
            v = v + (scale[:, None] * (x - v)).mean(dim=0)
        return v

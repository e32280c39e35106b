"""Bucketing, a pre-aggregator (Karimireddy, He, Jaggi 2022, "Byzantine-robust
learning on heterogeneous datasets via bucketing").

Rule: draw a permutation ``pi`` of the ``n`` rows from an explicit seed, cut
it into ``nb = ceil(n/s)`` buckets of ``s`` consecutive rows (the last may be
smaller), average each bucket, and apply the inner rule to the ``nb`` bucket
means:

    y_b = mean_{i in bucket b} x_{pi(i)},   Bucketing_s+R(x) = R(y_1, ..., y_nb)

f adjustment: one Byzantine row spoils at most one bucket, so at most ``f``
of the ``nb`` means are Byzantine; the inner rule runs with the same ``f`` on
``nb`` rows. The paper's condition is that the Byzantine fraction of buckets,
``f / nb ~ s * f / n``, stays within the inner rule's tolerance; here that is
enforced exactly as the inner rule's bound on ``nb`` rows (e.g. for median
``ceil(n/s) > 2f``).

Determinism: the permutation is ``torch.randperm(n', generator=
torch.Generator().manual_seed(seed))`` on the ``n'`` finite rows, with the seed
given to :func:`~gossamer.aggregate.make_aggregator` or to ``steps(...,
seed=...)`` (use a per-round seed agreed by all peers). Every chunk owner uses
the same seed, so the buckets are the same on every chunk. Not
permutation-invariant by design (the seed picks the buckets).
"""

from __future__ import annotations

import math

import torch

from gossamer.aggregate.base import Aggregator, _Reduce
from gossamer.errors import ConfigError


def bucket_means(x: torch.Tensor, s: int, seed: int) -> torch.Tensor:
    """(ceil(n/s), c) bucket means of a seeded permutation of the rows of ``x``."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).to(x.device)
    shuffled = x[perm]
    return torch.stack([shuffled[b : b + s].mean(dim=0) for b in range(0, n, s)])


class Bucketing(Aggregator):
    """Random buckets of size s, averaged, then an inner rule."""

    def __init__(self, s: int, inner: Aggregator, seed: int = 0) -> None:
        super().__init__(inner.f)
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ConfigError(f"bucketing:S needs an int bucket size S >= 1, got {s!r}")
        self.s = s
        self.inner = inner
        self.seed = int(seed)
        self.spec = f"bucketing:{s}+{inner.spec}"

    def buckets(self, n: int) -> int:
        return math.ceil(n / self.s)

    def max_f(self, n: int) -> int:
        return self.inner.max_f(self.buckets(n))

    def bound(self) -> str:
        return f"{self.inner.bound()} on n = ceil(n/{self.s}) buckets"

    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        y = bucket_means(x, self.s, seed)
        return (yield from self.inner._reduce(y, f, seed))

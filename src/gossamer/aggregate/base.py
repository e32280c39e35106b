"""The chunked aggregation protocol shared by every robust rule.

Contract
--------
An aggregator reduces ``n`` contributions (rows) of dimension ``d`` to one
vector of dimension ``d``. It must be able to run inside a butterfly
all-reduce, where the ``d`` coordinates are split into chunks and each peer
owns one chunk: it sees ``chunk`` of shape ``(n, c)``, row ``i`` being
contribution ``i`` restricted to its columns, and nothing else.

Every rule is therefore written as a generator, :meth:`Aggregator.steps`:

* it *yields* float64 partial statistics computed from its chunk only (an
  ``(n,)`` vector of partial squared norms, an ``(n, n)`` matrix of partial
  squared distances, ...);
* the driver *sends back* the SUM of that statistic over all chunks (the
  network sums in one fixed order, so every owner receives bit-identical
  values and takes identical decisions);
* it *returns* an :class:`AggResult` whose ``value`` is the aggregate
  restricted to the chunk's columns, in the chunk's dtype.

Promises
--------
* Every owner yields the same number of times with the same shapes: loop
  counts and branch decisions depend only on the summed (global) values and on
  ``n``, ``f`` and the seed, never on chunk-local values.
* The FIRST yield is always an ``(n,)`` float64 count of non-finite entries per
  row. A row with a non-finite entry in any chunk is dropped on every chunk and
  its index is reported in :attr:`AggResult.dropped`; NaN and inf are never
  propagated into the aggregate.
* Dropped rows are counted against the Byzantine budget only as far as needed:
  the rule runs on the ``n' = n - k`` survivors with
  ``f' = min(f, max_f(n'))``, i.e. it keeps its full tolerance ``f`` when the
  survivors still satisfy its bound, and otherwise tolerates as many as the
  bound allows. Because at most ``f`` contributions are Byzantine and the
  ``k`` dropped ones are treated as Byzantine, ``f - k`` is the least
  tolerance that is still sound; if even ``max(f - k, 0)`` is not allowed on
  ``n'`` rows, :class:`~gossamer.errors.AggregationError` is raised (same
  decision on every owner, since it depends only on the global counts).
* Internally everything is computed in float64; the value is cast back to the
  input dtype.

:func:`run_local` drives a generator when the chunk is the whole vector (the
reducer is the identity); :func:`run_chunked` drives one generator per chunk
and is the reference pattern for the communication layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import torch

from gossamer.errors import AggregationError, ConfigError

__all__ = [
    "AggResult",
    "Aggregator",
    "Steps",
    "partial_sq_dists",
    "partial_sq_norms",
    "run_chunked",
    "run_local",
]


@dataclass(frozen=True)
class AggResult:
    """The aggregate of one chunk and the rows that were dropped.

    ``value`` has shape ``(c,)`` and the dtype of the chunk. ``dropped`` holds
    the (sorted) indices of rows that had a non-finite entry in some chunk.
    """

    value: torch.Tensor
    dropped: tuple[int, ...]


#: The generator type of :meth:`Aggregator.steps` and of the inner reductions.
Steps = Generator[torch.Tensor, torch.Tensor, AggResult]
_Reduce = Generator[torch.Tensor, torch.Tensor, torch.Tensor]


def partial_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Chunk-local squared Euclidean distances between rows, ``(n, n)`` float64.

    ``D[i, j] = sum_c (x[i, c] - x[j, c])^2``. Computed from explicit
    differences (not the Gram trick), so ``D`` is exactly symmetric, has an
    exact zero diagonal, and never goes negative through cancellation.
    """
    x64 = x.to(torch.float64)
    n = x64.shape[0]
    out = torch.empty((n, n), dtype=torch.float64, device=x.device)
    for i in range(n):
        out[i] = (x64 - x64[i]).square().sum(dim=1)
    return out


def partial_sq_norms(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Chunk-local squared distances of each row of ``x`` to ``v``, ``(n,)`` float64."""
    return (x.to(torch.float64) - v.to(torch.float64)).square().sum(dim=1)


def _receive(sent: torch.Tensor, got: torch.Tensor | None) -> torch.Tensor:
    """Check that the reduced statistic matches what was yielded."""
    if got is None:
        raise AggregationError(
            "aggregation protocol: the driver sent None; it must send back the "
            "sum over chunks of each yielded statistic (use gen.send, not next)"
        )
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(sent.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise AggregationError(
            f"aggregation protocol: expected a reduced statistic of shape "
            f"{tuple(sent.shape)}, got {shape}"
        )
    return got.to(dtype=torch.float64, device=sent.device)


def exchange(stat: torch.Tensor) -> _Reduce:
    """Yield one partial statistic and return the validated global sum.

    Use as ``total = yield from exchange(partial)`` inside a rule.
    """
    stat = stat.to(torch.float64)
    got = yield stat
    return _receive(stat, got)


class Aggregator(ABC):
    """A robust aggregation rule in chunked generator form.

    Subclasses implement :meth:`max_f` (the largest number of Byzantine rows
    the rule tolerates among ``n``), :meth:`bound` (the bound as text, for
    error messages) and :meth:`_reduce` (the rule itself on the finite rows, in
    float64). The base class validates, counts and drops non-finite rows, and
    casts the result back.
    """

    spec: str
    f: int

    seed: int = 0

    def __init__(self, f: int) -> None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ConfigError(f"f must be a non-negative int, got {f!r}")
        self.f = f

    # ------------------------------------------------------------------ bounds
    @abstractmethod
    def max_f(self, n: int) -> int:
        """Largest ``f`` the rule tolerates with ``n`` contributions (-1: none)."""

    @abstractmethod
    def bound(self) -> str:
        """The rule's requirement on ``n`` and ``f`` as text, e.g. ``"n > 2f + 2"``."""

    def check(self, n: int) -> None:
        """Raise ConfigError if ``n`` contributions cannot tolerate ``self.f``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{self.spec} needs n >= 1 contributions, got n={n!r}")
        if self.f > self.max_f(n):
            raise ConfigError(
                f"{self.spec} needs {self.bound()}, got n={n}, f={self.f}"
            )

    # ---------------------------------------------------------------- protocol
    def steps(self, chunk: torch.Tensor, *, seed: int | None = None) -> Steps:
        """Aggregate ``chunk`` (n, c); see the module docstring for the protocol.

        ``seed`` overrides the seed given at construction for randomised
        pre-aggregators (bucketing); it must be the same on every owner.
        """
        if not isinstance(chunk, torch.Tensor) or chunk.dim() != 2:
            shape = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
            raise AggregationError(f"{self.spec}: expected a 2-D chunk (n, c), got {shape}")
        if not chunk.dtype.is_floating_point:
            raise AggregationError(
                f"{self.spec}: expected a floating-point chunk, got {chunk.dtype}"
            )
        n = int(chunk.shape[0])
        self.check(n)
        counts = yield from exchange((~torch.isfinite(chunk)).sum(dim=1).to(torch.float64))
        bad = counts > 0
        dropped = tuple(int(i) for i in torch.nonzero(bad).flatten().tolist())
        k = len(dropped)
        survivors = n - k
        if survivors == 0:
            raise AggregationError(
                f"{self.spec}: all {n} contributions have non-finite values"
            )
        f_eff = min(self.f, self.max_f(survivors))
        if f_eff < max(self.f - k, 0):
            raise AggregationError(
                f"{self.spec} needs {self.bound()} on the finite contributions: "
                f"{k} of n={n} were dropped as non-finite (rows {list(dropped)}), "
                f"leaving n={survivors} with f={max(self.f - k, 0)}"
            )
        x = chunk[~bad].to(torch.float64) if k else chunk.to(torch.float64)
        value = yield from self._reduce(x, f_eff, self._seed(seed))
        return AggResult(value=value.to(chunk.dtype), dropped=dropped)

    @abstractmethod
    def _reduce(self, x: torch.Tensor, f: int, seed: int) -> _Reduce:
        """Aggregate finite float64 rows ``x`` (n, c) tolerating ``f``."""

    def _seed(self, seed: int | None) -> int:
        return self.seed if seed is None else int(seed)

    def __call__(self, x: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """Whole-vector convenience: aggregate ``x`` of shape (n, *shape).

        Returns a tensor of shape ``x.shape[1:]`` in ``x``'s dtype. Equivalent
        to ``run_local(self.steps(x.reshape(n, -1))).value``; dropped rows are
        not reported (use :meth:`steps` with :func:`run_local` for that).
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AggregationError(f"{self.spec}: expected (n, ...) contributions, got {shape}")
        flat = x.reshape(x.shape[0], -1)
        return run_local(self.steps(flat, seed=seed)).value.reshape(x.shape[1:])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, f={self.f})"


def run_local(gen: Steps) -> AggResult:
    """Drive ``gen`` when its chunk is the whole vector: send back each yield as is."""
    try:
        stat = next(gen)
        while True:
            stat = gen.send(stat)
    except StopIteration as stop:
        result = stop.value
    if not isinstance(result, AggResult):
        raise AggregationError(f"aggregation generator returned {type(result).__name__}, not AggResult")
    return result


def run_chunked(
    aggregator: Aggregator,
    chunks: Sequence[torch.Tensor],
    *,
    seed: int | None = None,
) -> list[AggResult]:
    """Aggregate column chunks as the network does; one result per chunk.

    ``chunks[j]`` is an (n, c_j) tensor: the same n rows restricted to chunk
    j's columns. One generator runs per chunk; at each step the statistics
    they yield are summed in chunk order (a fixed order, so the sum is
    identical for everyone) and the same total is sent to every generator.
    Concatenating the values gives the whole aggregate.

    Raises AggregationError if the generators disagree on the number or the
    shapes of their yields (a protocol bug).
    """
    if len(chunks) == 0:
        raise AggregationError("run_chunked needs at least one chunk")
    gens = [aggregator.steps(c, seed=seed) for c in chunks]
    results: list[AggResult | None] = [None] * len(gens)
    try:
        stats: list[torch.Tensor] = [next(g) for g in gens]
    except StopIteration as stop:  # a rule that never yields is a protocol bug
        raise AggregationError("aggregation generator finished without yielding") from stop
    while True:
        shapes = {tuple(s.shape) for s in stats}
        if len(shapes) != 1:
            raise AggregationError(f"chunk owners yielded different shapes: {sorted(shapes)}")
        total = stats[0].to(torch.float64).clone()
        for s in stats[1:]:
            total = total + s.to(torch.float64)
        finished = 0
        next_stats: list[torch.Tensor] = []
        for j, g in enumerate(gens):
            try:
                next_stats.append(g.send(total.clone()))
            except StopIteration as stop:
                results[j] = stop.value
                finished += 1
        if finished == len(gens):
            return [r for r in results if r is not None]
        if finished:
            raise AggregationError(
                f"chunk owners disagree on the number of steps: {finished} of "
                f"{len(gens)} finished"
            )
        stats = next_stats

"""A run as series over rounds: loss, validation, bytes, round durations, aborts, exclusions.

Contract: ``run_series(events) -> Series`` is a pure function of trace events
(``TraceReader.events()``, any mix of files: the simulator's, each peer's,
the coordinator's). Per committed round (a ``round`` event of any source):

* ``t``: the earliest ``round`` event of that round (seconds, the trace's
  clock: wall clock for a swarm, virtual for the simulator);
* ``duration_s``: ``t`` minus the previous round's ``t`` (None for the first
  round, and after a round missing from the traces);
* ``loss``: the mean of the ``loss`` events of that round over the peers
  that recorded one (a peer's or the simulator's: the local training loss of
  the round's last step); without any, the ``loss`` the coordinator put in
  its ``round`` event (the mean its members reported), else None;
* ``bytes``: the payload bytes of that round's ``bytes`` events, summed over
  every sender in the traces (so: what the peers whose traces were given
  sent); without any ``bytes`` event in the traces, the ``bytes`` the
  coordinator put in its ``round`` event; else None;
* ``aborts``: aborted attempts of that round: per source, its ``abort``
  events of the round; the largest count over the sources (each process
  records its own view of one abort).

``evals``: every ``eval`` event (round None, an evaluation before any round,
is kept as such); ``losses``: every ``loss`` event (per peer);
``aborts``: every ``abort`` event; ``exclusions``: every ``exclude`` and
``evict`` event. Times stay on the trace's clock; ``t0`` is the earliest
event's ``t``. ``Series.to_json()`` is JSON-ready (no NaN).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .recorder import Event


@dataclass(frozen=True)
class RoundPoint:
    round: int
    t: float  # s, the trace's clock
    duration_s: float | None
    loss: float | None
    bytes: float | None  # payload bytes
    aborts: int


@dataclass(frozen=True)
class EvalPoint:
    round: int | None  # None: before the first round
    t: float
    peer: str | None
    metric: str
    value: float | None  # the validation metric
    loss: float | None  # the validation loss
    step: int | None


@dataclass(frozen=True)
class LossPoint:
    round: int | None
    t: float
    peer: str | None
    loss: float | None


@dataclass(frozen=True)
class Mark:
    """An abort, exclusion or eviction: where it happened and why."""

    kind: str  # "abort", "exclude" or "evict"
    round: int | None
    t: float
    peer: str | None  # the blamed, excluded or evicted peer
    source: str
    reason: str


@dataclass(frozen=True)
class Series:
    t0: float
    rounds: tuple[RoundPoint, ...]
    evals: tuple[EvalPoint, ...]
    losses: tuple[LossPoint, ...]
    aborts: tuple[Mark, ...]
    exclusions: tuple[Mark, ...]
    metric: str

    def aborted_attempts(self) -> dict[int, int]:
        """Aborted attempts per round, committed or not (per source, its ``abort``
        events of the round; the largest count over the sources)."""
        return _abort_counts(self.aborts)

    def to_json(self) -> dict[str, Any]:
        return _finite(asdict(self))


def _abort_counts(aborts: Sequence[Mark]) -> dict[int, int]:
    by_source: dict[tuple[int, str], int] = defaultdict(int)
    for m in aborts:
        if m.round is not None:
            by_source[(m.round, m.source)] += 1
    counts: dict[int, int] = {}
    for (rnd, _source), n in by_source.items():
        counts[rnd] = max(counts.get(rnd, 0), n)
    return counts


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def run_series(events: Sequence[Event]) -> Series:
    """The run's series (module docstring) from ``events`` in time order."""
    times = [e.t for e in events if math.isfinite(e.t)]
    t0 = min(times) if times else 0.0
    committed: dict[int, float] = {}
    coord_loss: dict[int, float] = {}
    coord_bytes: dict[int, float] = {}
    losses: dict[int, list[float]] = defaultdict(list)
    sent: dict[int, float] = defaultdict(float)
    any_bytes = False
    evals: list[EvalPoint] = []
    loss_points: list[LossPoint] = []
    aborts: list[Mark] = []
    exclusions: list[Mark] = []
    metric = ""
    for e in events:
        if e.kind == "round" and e.round is not None and math.isfinite(e.t):
            committed[e.round] = min(e.t, committed.get(e.round, math.inf))
            if (v := _number(e.detail.get("loss"))) is not None:
                coord_loss[e.round] = v
            if (v := _number(e.detail.get("bytes"))) is not None:
                coord_bytes[e.round] = v
        elif e.kind == "loss":
            value = _number(e.value)
            loss_points.append(LossPoint(e.round, e.t, e.peer, value))
            if e.round is not None and value is not None:
                losses[e.round].append(value)
        elif e.kind == "bytes":
            any_bytes = True
            if e.round is not None and e.value is not None:
                sent[e.round] += e.value
        elif e.kind == "eval":
            metric = str(e.detail.get("metric") or metric)
            step = e.detail.get("step")
            evals.append(EvalPoint(e.round, e.t, e.peer, str(e.detail.get("metric") or ""), _number(e.value),
                                   _number(e.detail.get("loss")), step if isinstance(step, int) else None))
        elif e.kind == "abort":
            aborts.append(Mark("abort", e.round, e.t, e.peer, e.source, str(e.detail.get("reason") or "")))
        elif e.kind in ("exclude", "evict"):
            why = e.detail.get("rule") if e.kind == "exclude" else e.detail.get("reason")
            exclusions.append(Mark(e.kind, e.round, e.t, e.peer, e.source, str(why or "")))
    abort_count = _abort_counts(aborts)
    rounds = []
    for rnd in sorted(committed):  # a round that never committed has no point (its aborts stay in ``aborts``)
        t = committed[rnd]
        before = committed.get(rnd - 1)
        loss = statistics.fmean(losses[rnd]) if losses.get(rnd) else coord_loss.get(rnd)
        nbytes = (sent.get(rnd, 0.0) if any_bytes else coord_bytes.get(rnd))
        rounds.append(RoundPoint(rnd, t, t - before if before is not None else None, loss, nbytes, abort_count.get(rnd, 0)))
    return Series(t0=t0, rounds=tuple(rounds), evals=tuple(evals), losses=tuple(loss_points), aborts=tuple(aborts),
                  exclusions=tuple(exclusions), metric=metric)

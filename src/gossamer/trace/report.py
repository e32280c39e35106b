"""What a trace says: who was slow, who failed, who was excluded, what it cost.

Contract: pure functions over a ``TraceReader`` (they read events, never write).

``summarize(reader) -> Report``:

* per peer (every peer an event is about): rounds seen, median local compute
  seconds, that median over the swarm median (the median of every ``compute``
  event), median seconds it waited at the barrier, median seconds others waited
  for it per round it was seen, ``straggler`` events, payload bytes sent and
  received (``bytes`` events: ``peer`` sent to ``other``). A peer is *slow* when
  its median compute (over at least ``MIN_SAMPLES`` = 3 rounds: one warm-up
  round says nothing) is above ``SLOW_FACTOR`` (1.5) times the swarm median, or
  when a ``straggler`` event names it. Barrier waits are blamed on the
  ``other`` of the ``barrier_wait`` event when the recorder knew whom it waited
  for, else on the peer with the longest compute in that round.
* failures: ``abort`` events grouped by blamed peer (``None`` when nobody was
  blamed), with counts per reason and the rounds; ``evict`` events.
* exclusions: peer, round, rule, evidence of each ``exclude`` event.
* rounds committed: distinct round numbers of ``round`` events; rounds for
  which sources recorded different hashes are listed as divergent.
* series: the run per round (loss, validation, payload bytes, duration,
  aborts, exclusions; ``series.run_series``), which ``render_text``
  summarizes in one line and ``runplot.plot_run`` draws.

``render_text(report) -> str``: plain-text tables, no colour, no markup.
``plot_timeline(reader, path)``: a PNG (matplotlib, Agg backend, no window),
one row per peer, x = seconds since the first event.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from .recorder import Event, TraceReader
from .results import _finite
from .series import Series, run_series

SLOW_FACTOR = 1.5
#: Compute samples a peer needs before it can be called slow (a warm-up round says nothing).
MIN_SAMPLES = 3


@dataclass(frozen=True)
class PeerStats:
    peer: str
    rounds: int
    compute_events: int
    median_compute_s: float | None
    compute_vs_swarm: float | None  # median compute / swarm median compute
    median_wait_s: float | None  # this peer's own waits at the barrier
    median_wait_caused_s: float | None  # per round seen: seconds others waited for this peer
    stragglers: int
    bytes_sent: float
    bytes_received: float
    slow: bool


@dataclass(frozen=True)
class Failure:
    peer: str | None  # the blamed peer; None when the abort blamed nobody
    aborts: int
    reasons: dict[str, int]
    rounds: tuple[int, ...]


@dataclass(frozen=True)
class Eviction:
    peer: str | None
    round: int | None
    t: float
    reason: str


@dataclass(frozen=True)
class Exclusion:
    peer: str | None
    round: int | None
    t: float
    rule: str
    evidence: Any
    accuser: str | None


@dataclass(frozen=True)
class Report:
    files: tuple[str, ...]
    sources: tuple[str, ...]
    events: int
    duration_s: float
    swarm_median_compute_s: float | None
    peers: tuple[PeerStats, ...]
    failures: tuple[Failure, ...]
    evictions: tuple[Eviction, ...]
    exclusions: tuple[Exclusion, ...]
    rounds_committed: int
    divergent_rounds: tuple[int, ...] = field(default=())
    series: Series | None = None

    @property
    def slow_peers(self) -> tuple[str, ...]:
        return tuple(p.peer for p in self.peers if p.slow)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and inf written as null)."""
        d = asdict(self)
        d["slow_peers"] = list(self.slow_peers)
        return _finite(json.loads(json.dumps(d, default=str)))


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(reader: TraceReader) -> Report:
    events = reader.events()
    sources = sorted({e.source for e in events if e.source is not None})
    times = [e.t for e in events if math.isfinite(e.t)]
    duration = (max(times) - min(times)) if times else 0.0

    compute: dict[str, list[float]] = defaultdict(list)
    compute_by_round: dict[int, dict[str, float]] = defaultdict(dict)
    waits: dict[str, list[float]] = defaultdict(list)
    rounds_seen: dict[str, set[int]] = defaultdict(set)
    stragglers: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    received: Counter[str] = Counter()
    peers: set[str] = set()
    for e in events:
        if e.peer is not None:
            peers.add(e.peer)
            if e.round is not None:
                rounds_seen[e.peer].add(e.round)
        if e.kind == "compute" and e.peer is not None and e.value is not None:
            compute[e.peer].append(e.value)
            if e.round is not None:
                compute_by_round[e.round][e.peer] = max(e.value, compute_by_round[e.round].get(e.peer, 0.0))
        elif e.kind == "barrier_wait" and e.peer is not None and e.value is not None:
            waits[e.peer].append(e.value)
        elif e.kind == "straggler" and e.peer is not None:
            stragglers[e.peer] += 1
        elif e.kind == "bytes" and e.value is not None:
            if e.peer is not None:
                sent[e.peer] += e.value
            if e.other is not None:
                received[e.other] += e.value
                peers.add(e.other)

    # Barrier waits caused: per (round, blamed peer), the longest wait of anyone else.
    caused: dict[str, dict[int, float]] = defaultdict(dict)
    for e in events:
        if e.kind != "barrier_wait" or e.value is None or e.round is None:
            continue
        blamed = e.other
        if blamed is None and compute_by_round.get(e.round):
            by_peer = compute_by_round[e.round]
            blamed = max(sorted(by_peer), key=lambda p: by_peer[p])
        if blamed is None or blamed == e.peer:
            continue
        caused[blamed][e.round] = max(e.value, caused[blamed].get(e.round, 0.0))

    swarm_median = _median([v for vs in compute.values() for v in vs])
    stats = []
    for peer in sorted(peers):
        med = _median(compute[peer])
        ratio = med / swarm_median if med is not None and swarm_median else None
        seen = rounds_seen[peer]
        caused_per_round = [caused[peer].get(r, 0.0) for r in sorted(seen)] if seen else list(caused[peer].values())
        stats.append(PeerStats(
            peer=peer,
            rounds=len(seen),
            compute_events=len(compute[peer]),
            median_compute_s=med,
            compute_vs_swarm=ratio,
            median_wait_s=_median(waits[peer]),
            median_wait_caused_s=_median(caused_per_round),
            stragglers=stragglers[peer],
            bytes_sent=float(sent[peer]),
            bytes_received=float(received[peer]),
            slow=(ratio is not None and ratio > SLOW_FACTOR and len(compute[peer]) >= MIN_SAMPLES) or stragglers[peer] > 0,
        ))

    aborts: dict[str | None, list[Event]] = defaultdict(list)
    for e in events:
        if e.kind == "abort":
            aborts[e.peer].append(e)
    failures = [
        Failure(peer=peer, aborts=len(evs),
                reasons=dict(Counter(str(e.detail.get("reason", "?")) for e in evs).most_common()),
                rounds=tuple(sorted({e.round for e in evs if e.round is not None})))
        for peer, evs in aborts.items()
    ]
    failures.sort(key=lambda f: (-f.aborts, f.peer is None, f.peer or ""))

    evictions = tuple(Eviction(e.peer, e.round, e.t, str(e.detail.get("reason", "?"))) for e in events if e.kind == "evict")
    exclusions = tuple(
        Exclusion(e.peer, e.round, e.t, str(e.detail.get("rule", "?")), e.detail.get("evidence"), e.other)
        for e in events if e.kind == "exclude"
    )

    hashes: dict[int, set[str]] = defaultdict(set)
    unnumbered = 0
    for e in events:
        if e.kind == "round":
            if e.round is None:
                unnumbered += 1
            elif "hash" in e.detail:
                hashes[e.round].add(str(e.detail["hash"]))
            else:
                hashes.setdefault(e.round, set())
    divergent = tuple(sorted(r for r, hs in hashes.items() if len(hs) > 1))

    return Report(
        files=tuple(str(p) for p in reader.paths),
        sources=tuple(sources),
        events=len(events),
        duration_s=duration,
        swarm_median_compute_s=swarm_median,
        peers=tuple(stats),
        failures=tuple(failures),
        evictions=evictions,
        exclusions=exclusions,
        rounds_committed=len(hashes) + unnumbered,
        divergent_rounds=divergent,
        series=run_series(events),
    )


# --- text --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], *, right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _s(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def _short(obj: Any, limit: int = 80) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _curves(s: Series) -> str:
    """One line: the loss, validation, bytes and durations of the committed rounds."""
    parts = []
    loss = [p for p in s.rounds if p.loss is not None]
    if loss:
        parts.append(f"loss {loss[0].loss:.4g} (round {loss[0].round}) -> {loss[-1].loss:.4g} (round {loss[-1].round})")
    evals = [e for e in s.evals if e.value is not None]
    if evals:
        where = lambda e: "start" if e.round is None else f"round {e.round}"  # noqa: E731
        parts.append(f"{s.metric or 'validation'} {evals[0].value:.4g} ({where(evals[0])}) -> "
                     f"{evals[-1].value:.4g} ({where(evals[-1])})")
    sent = [p.bytes for p in s.rounds if p.bytes is not None]
    if sent:
        parts.append(f"payload bytes per round: median {_bytes(statistics.median(sent))}, total {_bytes(sum(sent))}")
    durations = [p.duration_s for p in s.rounds if p.duration_s is not None]
    if durations:
        parts.append(f"round duration: median {statistics.median(durations):.3g} s, max {max(durations):.3g} s")
    return "curves: " + ("; ".join(parts) if parts else "-")


def render_text(report: Report) -> str:
    """The report as plain-text tables (no colour, no markup)."""
    out = [
        f"trace: {', '.join(report.files)}",
        f"sources: {', '.join(report.sources) or '-'}; {report.events} events over {report.duration_s:.1f} s; "
        f"rounds committed: {report.rounds_committed}"
        + (f"; DIVERGENT hashes in rounds {', '.join(map(str, report.divergent_rounds))}" if report.divergent_rounds else ""),
        *([_curves(report.series)] if report.series is not None and report.series.rounds else []),
        "",
        f"peers (slow: median compute > {SLOW_FACTOR}x the swarm median {_s(report.swarm_median_compute_s)} s, or a straggler event)",
    ]
    rows = [[p.peer, "SLOW" if p.slow else "", str(p.rounds), _s(p.median_compute_s),
             "-" if p.compute_vs_swarm is None else f"{p.compute_vs_swarm:.2f}x",
             _s(p.median_wait_s), _s(p.median_wait_caused_s), str(p.stragglers), _bytes(p.bytes_sent), _bytes(p.bytes_received)]
            for p in report.peers]
    out.append(_table(["peer", "slow", "rounds", "compute s", "vs swarm", "waited s", "others waited s", "stragglers", "sent", "received"],
                      rows, right=set(range(2, 10))) if rows else "  (no peers)")
    out += ["", "failures (aborts by blamed peer)"]
    if report.failures:
        out.append(_table(["blamed", "aborts", "reasons", "rounds"],
                          [[f.peer or "(nobody)", str(f.aborts), "; ".join(f"{r} x{n}" for r, n in f.reasons.items()),
                            _short(",".join(map(str, f.rounds)) or "-", 40)] for f in report.failures], right={1}))
    else:
        out.append("  (none)")
    out += ["", "evictions"]
    if report.evictions:
        out.append(_table(["peer", "round", "reason"],
                          [[e.peer or "-", "-" if e.round is None else str(e.round), e.reason] for e in report.evictions], right={1}))
    else:
        out.append("  (none)")
    out += ["", "exclusions"]
    if report.exclusions:
        out.append(_table(["peer", "round", "rule", "accuser", "evidence"],
                          [[x.peer or "-", "-" if x.round is None else str(x.round), x.rule, x.accuser or "-", _short(x.evidence)]
                           for x in report.exclusions], right={1}))
    else:
        out.append("  (none)")
    return "\n".join(out) + "\n"


# --- plot --------------------------------------------------------------------------------------


def plot_timeline(reader: TraceReader, path: str | PathLike[str], *, title: str | None = None) -> None:
    """Write a PNG timeline: one row per peer, x = seconds since the first event;
    compute spans as bars (barrier waits as pale bars), aborts as red markers on
    the blamed peer's row, exclusions as black X, joins/leaves/evictions as ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [e for e in reader.events() if math.isfinite(e.t)]
    fig, ax = plt.subplots(figsize=(11, timeline_height(events)))
    draw_timeline(ax, events)
    ax.set_title(title or f"timeline: {', '.join(Path(p).name for p in reader.paths)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _timeline_rows(events: list[Event]) -> list[str]:
    peers = sorted({e.peer for e in events if e.peer is not None} | {e.other for e in events if e.kind == "bytes" and e.other})
    nobody = any(e.kind == "abort" and e.peer is None for e in events)
    return peers + (["(nobody)"] if nobody else [])


def timeline_height(events: list[Event], *, cap: float = 12.0) -> float:
    """Inches a timeline of ``events`` needs (0.45 per peer row, at most ``cap``)."""
    return min(cap, max(2.5, 0.45 * len(_timeline_rows(events)) + 1.5))


def draw_timeline(ax: Any, events: list[Event]) -> None:
    """Draw the timeline of ``events`` (finite ``t``) on the matplotlib axes ``ax``
    (see ``plot_timeline``), with its legend."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t0 = min((e.t - (e.value or 0.0) if e.kind in ("compute", "barrier_wait") and e.value else e.t for e in events), default=0.0)
    rows = _timeline_rows(events)
    y = {p: i for i, p in enumerate(rows)}

    handles: dict[str, Any] = {}
    spans: dict[str, dict[str, list[tuple[float, float]]]] = {"compute": defaultdict(list), "barrier_wait": defaultdict(list)}
    for e in events:
        if e.kind in spans and e.peer is not None and e.value is not None and e.value > 0:
            spans[e.kind][e.peer].append((e.t - e.value - t0, e.value))
    for kind, colour, alpha, label in (("barrier_wait", "tab:orange", 0.35, "barrier wait"), ("compute", "tab:blue", 0.8, "compute")):
        for peer, bars in spans[kind].items():
            ax.broken_barh(bars, (y[peer] - 0.3, 0.6), facecolors=colour, alpha=alpha)
        if spans[kind]:
            handles[label] = Patch(facecolor=colour, alpha=alpha, label=label)

    markers = {
        "abort": dict(marker="o", color="red", ms=8, label="abort (blamed peer)"),
        "exclude": dict(marker="X", color="black", ms=10, label="excluded"),
        "join": dict(marker="|", color="tab:green", ms=14, label="join"),
        "leave": dict(marker="|", color="tab:gray", ms=14, label="leave"),
        "evict": dict(marker="v", color="tab:purple", ms=8, label="evicted"),
        "straggler": dict(marker="^", color="tab:brown", ms=7, label="straggler"),
    }
    for kind, style in markers.items():
        pts = [(e.t - t0, y[e.peer if e.peer is not None else "(nobody)"]) for e in events
               if e.kind == kind and (e.peer is not None or kind == "abort")]
        if not pts:
            continue
        style = dict(style)
        label = style.pop("label")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", zorder=3, **style)
        handles[label] = Line2D([], [], linestyle="none", label=label, **style)

    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(-0.8, max(len(rows), 1) - 0.2)
    ax.invert_yaxis()
    ax.set_xlabel("time since the first event (s)")
    ax.set_ylabel("peer")
    ax.grid(True, axis="x", alpha=0.3)
    if handles:
        ax.legend(handles=list(handles.values()), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", va="center")

"""``gossamer report --plot``: one PNG of a whole run, from its traces.

Contract: ``plot_run(reader, path, title=None)`` writes a PNG (matplotlib's
Agg backend, no window) with four panels over the run's series
(``series.run_series``), the first three sharing the x axis (round):

1. training loss per round (the mean over the peers, thin lines per peer
   when at most ``PEER_LINES`` peers recorded losses) and, on a second y
   axis, the validation metric of every ``eval`` event (an evaluation before
   round 0 is drawn at round -1);
2. payload bytes per round (bars);
3. round duration in seconds (bars: time between consecutive commits);
4. the timeline of ``report.plot_timeline`` (one row per peer, x = seconds).

Rounds with aborted attempts are marked on panels 1-3 by red dashed lines
(their count in panel 2's legend), exclusions and evictions by black
dash-dotted lines with an X at the top of panel 1. A trace without rounds
still gets a figure ("no committed rounds").
"""

from __future__ import annotations

import math
from collections import defaultdict
from os import PathLike
from pathlib import Path

from .recorder import TraceReader
from .report import draw_timeline, timeline_height
from .series import Series, run_series

#: Peers drawn with their own thin loss line (more: only the mean).
PEER_LINES = 16


def plot_run(reader: TraceReader, path: str | PathLike[str], *, title: str | None = None) -> Series:
    """Write the run's PNG to ``path`` (module docstring); returns the series drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    events = [e for e in reader.events() if math.isfinite(e.t)]
    s = run_series(events)
    heights = [3.0, 1.8, 1.8, timeline_height(events, cap=8.0)]
    fig = plt.figure(figsize=(11, sum(heights) + 1.2))
    grid = fig.add_gridspec(4, 1, height_ratios=heights, hspace=0.5, top=1 - 0.7 / (sum(heights) + 1.2), bottom=0.06)
    ax_loss = fig.add_subplot(grid[0])
    ax_bytes = fig.add_subplot(grid[1], sharex=ax_loss)
    ax_dur = fig.add_subplot(grid[2], sharex=ax_loss)
    ax_time = fig.add_subplot(grid[3])

    rounds = [p.round for p in s.rounds]
    # 1. loss (and validation)
    by_peer: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for p in s.losses:
        if p.round is not None and p.loss is not None and p.peer is not None:
            by_peer[p.peer].append((p.round, p.loss))
    if len(by_peer) <= PEER_LINES:
        for peer, pts in sorted(by_peer.items()):
            ax_loss.plot([r for r, _ in pts], [v for _, v in pts], lw=0.7, alpha=0.45)
    mean = [(p.round, p.loss) for p in s.rounds if p.loss is not None]
    handles = []
    if mean:
        (line,) = ax_loss.plot([r for r, _ in mean], [v for _, v in mean], color="tab:blue", lw=2,
                               label="training loss (mean over peers)")
        handles.append(line)
    ax_loss.set_ylabel("training loss")
    evals = [(-1 if e.round is None else e.round, e.value) for e in s.evals if e.value is not None]
    if evals:
        ax_val = ax_loss.twinx()
        (line,) = ax_val.plot([r for r, _ in evals], [v for _, v in evals], color="tab:green", marker="o", ms=4,
                              lw=1.2, label=f"validation {s.metric or 'metric'}")
        ax_val.set_ylabel(s.metric or "validation metric")
        handles.append(line)
    if not rounds:
        ax_loss.text(0.5, 0.5, "no committed rounds", transform=ax_loss.transAxes, ha="center", va="center")

    # 2. bytes and 3. durations
    pts = [(p.round, p.bytes) for p in s.rounds if p.bytes is not None]
    ax_bytes.bar([r for r, _ in pts], [b for _, b in pts], width=0.8, color="tab:purple")
    ax_bytes.set_ylabel("payload bytes")
    pts = [(p.round, p.duration_s) for p in s.rounds if p.duration_s is not None]
    ax_dur.bar([r for r, _ in pts], [d for _, d in pts], width=0.8, color="tab:orange")
    ax_dur.set_ylabel("round (s)")
    ax_dur.set_xlabel("round")

    # aborts and exclusions on the round panels
    attempts = s.aborted_attempts()
    abort_rounds = sorted(attempts)
    excluded = [m for m in s.exclusions if m.round is not None]
    for ax in (ax_loss, ax_bytes, ax_dur):
        for r in abort_rounds:
            ax.axvline(r, color="red", ls="--", lw=0.9, alpha=0.7, zorder=0)
        for m in excluded:
            ax.axvline(m.round, color="black", ls="-.", lw=1.0, alpha=0.8, zorder=0)
        ax.grid(True, alpha=0.3)
    for m in excluded:
        ax_loss.plot([m.round], [1.0], marker="X", color="black", ms=9, transform=ax_loss.get_xaxis_transform(),
                     clip_on=False, zorder=4)
    marks = []
    if abort_rounds:
        aborted = sum(attempts.values())
        marks.append(Line2D([], [], color="red", ls="--", label=f"aborted attempts ({aborted} in {len(abort_rounds)} rounds)"))
    if excluded:
        marks.append(Line2D([], [], color="black", ls="-.", marker="X",
                            label=f"excluded or evicted ({', '.join(sorted({str(m.peer) for m in excluded}))})"[:80]))
    if handles or marks:
        ax_loss.legend(handles=handles + marks, loc="upper right", fontsize="small")

    # 4. timeline
    draw_timeline(ax_time, events)
    fig.suptitle(title or f"run: {', '.join(Path(p).name for p in reader.paths)}"[:120])
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return s

"""The plot of a plan: predicted total time and bytes sent per peer, one bar per algorithm and codec.

Contract: ``plot_plan(plan, path)`` writes one PNG with two horizontal bar
panels (total time in hours, with the compute part shaded, on a log axis
when the rows differ more than 20x; bytes sent per peer on a log axis), in the plan's row order; matplotlib's Agg backend, no
window.
"""

from __future__ import annotations

from pathlib import Path

from .plan import Plan


def plot_plan(plan: Plan, path: str | Path, *, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = plan.rows
    labels = [f"{r.algorithm} [{r.codec}]" for r in rows]
    y = list(range(len(rows)))[::-1]
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.55 * max(1, len(rows))))
    hours = [r.total_time_s / 3600 for r in rows]
    compute = [min(r.compute_time_s, r.total_time_s) / 3600 for r in rows]
    ax_t.barh(y, hours, color="#bbbbbb", label="waiting on the network")
    ax_t.barh(y, compute, color="#4c72b0", label="compute")
    for yi, r, h in zip(y, rows, hours):
        ax_t.text(h, yi, f" {100 * r.compute_utilisation:.0f}%", va="center", fontsize=8)
    if len(rows) > 1 and max(hours) > 20 * min(hours):  # one slow row would flatten the others
        ax_t.set_xscale("log")
    ax_t.set_xlabel("predicted total time (h)")
    ax_t.legend(loc="lower right", fontsize=8)
    ax_b.barh(y, [max(r.bytes_sent_per_peer, 1.0) for r in rows], color="#dd8452")
    ax_b.set_xscale("log")
    ax_b.set_xlabel("bytes sent per peer (whole run)")
    for ax in (ax_t, ax_b):
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.grid(True, axis="x", alpha=0.3)
    ax_b.set_yticklabels([])
    fig.suptitle(title or f"plan: {plan.params:,} parameters, {plan.peers} peers, link {plan.link}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

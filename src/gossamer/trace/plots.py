"""Plots of results: validation loss against bytes sent and against simulated time.

Contract: ``plot_results(results, path)`` writes one PNG with two panels, one
curve per run; it uses matplotlib's non-interactive Agg backend and never
opens a window. The bytes axis is logarithmic, so curve points at 0 bytes
(the start, before anything was sent) are left out of that panel only. The
loss axis names the unit in ``results.extra["loss_unit"]`` when present
(the task's ``loss_unit``, e.g. "nats per character").
"""

from __future__ import annotations

from pathlib import Path

from .results import Results


def plot_results(results: Results, path: str | Path, *, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in results.runs:
        label = run.algorithm + (f" [{run.codec}]" if run.codec not in ("none", "fp32") else "")
        pts = [p for p in run.curve if p.val_loss == p.val_loss]
        sent = [p for p in pts if p.bytes_sent_per_peer > 0]  # 0 has no place on a log axis
        ax_b.plot([p.bytes_sent_per_peer for p in sent], [p.val_loss for p in sent], marker="o", ms=3, label=label)
        ax_t.plot([p.sim_time_s for p in pts], [p.val_loss for p in pts], marker="o", ms=3, label=label)
    ax_b.set_xscale("log")
    ax_b.set_xlabel("bytes sent per peer")
    ax_t.set_xlabel("simulated wall-clock (s)")
    unit = results.extra.get("loss_unit") or ""
    for ax in (ax_b, ax_t):
        ax.set_ylabel("validation loss" + (f" ({unit})" if unit else ""))
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title or f"{results.task}: {results.peers} peers, link {results.link}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

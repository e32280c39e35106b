"""``gossamer bench robust``: final accuracy for every aggregator x attack.

Contract: ``run_robust_bench(...)`` simulates the same swarm (default: digits,
10 peers, 3 Byzantine, Dirichlet(1.0) shards, DDP) once per (aggregator,
attack) pair, including no attack, where the would-be Byzantine peers train
honestly but the aggregator is still configured for ``f = byzantine``. It
returns a ``Results`` whose runs carry ``attack`` and ``byzantine``, plus a
summary: the clean accuracy of each aggregator, its worst drop under attack,
the best configuration, and whether the plain mean collapsed. Plain ``mean``
is the baseline that is expected to collapse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..sim.runner import run_algorithm, task_for
from ..sim.scenario import Scenario
from ..trace.results import Results

DEFAULT_AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "geomed", "cclip", "nnm+cclip", "nnm+krum")
#: Local steps per peer when not given: enough for digits to converge, small
#: enough that the 64-run matrix takes minutes.
DEFAULT_STEPS = 150
DEFAULT_ATTACKS = ("none", "signflip", "ipm", "alie", "gaussian", "labelflip", "mimic", "freerider")


def run_robust_bench(
    *,
    task: str = "digits",
    peers: int = 10,
    byzantine: int = 3,
    alpha: float | None = 1.0,
    algorithm: str = "ddp",
    steps: int | None = None,
    seed: int = 0,
    aggregators: Sequence[str] = DEFAULT_AGGREGATORS,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    link: str = "100mbit,50ms",
    progress: Callable[[str, int, int], None] | None = None,
) -> Results:
    steps = steps or DEFAULT_STEPS
    base = Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, alpha=alpha, seed=seed, link=link, evals=2)
    task_obj = task_for(base)
    for agg in aggregators:  # every configuration is checked before any run starts
        Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, alpha=alpha, seed=seed, link=link,
                 aggregator=agg, tolerate=byzantine)
    for attack in attacks:
        if attack != "none":
            Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, alpha=alpha, seed=seed, link=link,
                     byzantine=byzantine, attack=attack)
    results = Results(task=task, peers=peers, link=link, seed=seed)
    total = len(aggregators) * len(attacks)
    done = 0
    for agg in aggregators:
        for attack in attacks:
            clean = attack == "none"
            scenario = Scenario(
                task=task, algorithms=(algorithm,), peers=peers, steps=steps, alpha=alpha, seed=seed, link=link, evals=2,
                aggregator=agg, byzantine=0 if clean else byzantine, attack=None if clean else attack, tolerate=byzantine,
            )
            run = run_algorithm(scenario, algorithm, task=task_obj)
            run.extra["attack"] = attack
            run.extra["byzantine"] = 0 if clean else byzantine
            results.runs.append(run)
            done += 1
            if progress is not None:
                progress(f"{agg} / {attack}", done, total)
    results.extra["robustness"] = summarize(results, aggregators, attacks)
    results.extra.update({"algorithm": algorithm, "alpha": alpha, "byzantine": byzantine})
    return results


def matrix(results: Results) -> dict[str, dict[str, float]]:
    """``{aggregator: {attack: final metric}}``."""
    out: dict[str, dict[str, float]] = {}
    for r in results.runs:
        out.setdefault(r.aggregator, {})[r.extra["attack"]] = r.final_val_metric
    return out


def summarize(results: Results, aggregators: Sequence[str], attacks: Sequence[str]) -> dict[str, Any]:
    m = matrix(results)
    clean_ref = max(m[a]["none"] for a in aggregators if "none" in m[a]) if "none" in attacks else None
    per_agg = {}
    for a in aggregators:
        row = m[a]
        worst = min(row[x] for x in attacks if x != "none") if len(attacks) > 1 else row.get("none")
        per_agg[a] = {"clean": row.get("none"), "worst": worst, "worst_drop_vs_best_clean": None if clean_ref is None else clean_ref - worst}
    best = min(per_agg, key=lambda a: (per_agg[a]["worst_drop_vs_best_clean"] or 0.0))
    mean_row = m.get("mean")
    mean_collapse = None
    if mean_row and "none" in mean_row and len(attacks) > 1:
        mean_collapse = mean_row["none"] - min(mean_row[x] for x in attacks if x != "none")
    return {"best_clean": clean_ref, "aggregators": per_agg, "best": best, "mean_worst_drop": mean_collapse}


def plot_heatmap(results: Results, path: str, *, title: str | None = None) -> None:
    """Aggregators (rows) x attacks (columns), coloured and annotated by final accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = matrix(results)
    aggs = list(dict.fromkeys(r.aggregator for r in results.runs))
    atts = list(dict.fromkeys(r.extra["attack"] for r in results.runs))
    grid = np.array([[m[a].get(x, np.nan) for x in atts] for a in aggs])
    fig, ax = plt.subplots(figsize=(1.1 * len(atts) + 2.5, 0.55 * len(aggs) + 1.8))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(atts)), atts, rotation=30, ha="right")
    ax.set_yticks(range(len(aggs)), aggs)
    for i in range(len(aggs)):
        for j in range(len(atts)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j] * 100:.0f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="final validation accuracy")
    ax.set_title(title or f"{results.task}: {results.peers} peers, {results.extra.get('byzantine')} Byzantine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_matrix(results: Results) -> str:
    """The matrix as a Markdown table of final metric values (percent for accuracies)."""
    m = matrix(results)
    aggs = list(dict.fromkeys(r.aggregator for r in results.runs))
    atts = list(dict.fromkeys(r.extra["attack"] for r in results.runs))
    lines = ["| aggregator | " + " | ".join(atts) + " |", "|---|" + "---:|" * len(atts)]
    for a in aggs:
        lines.append(f"| `{a}` | " + " | ".join(f"{m[a][x] * 100:.1f}" if x in m[a] else "-" for x in atts) + " |")
    return "\n".join(lines) + "\n"

"""``gossamer bench frontier``: bytes against loss, from per-step DDP down to a fraction of a bit per parameter.

Contract: ``run_frontier_bench(task, peers, steps, runs, progress)`` simulates
every entry of ``runs`` on the same task, shards, seed and number of training
samples per peer (``steps x batch_size``), ddp first: ddp is the baseline
measured in the same run. Each entry is a ``FrontierRun`` (a label, an
algorithm, a codec spec, H and algorithm options). It returns a ``Results``
(the schema of docs/results.md) whose runs carry, besides the usual fields,

* ``label``: the entry's name;
* ``inner_steps``: H (1 for ddp);
* ``bytes_ratio_vs_ddp`` = ddp's bytes sent per peer / this run's;
* ``loss_gap_vs_ddp`` = this run's final validation loss / ddp's - 1 (0.02 = 2% worse);
* ``meets_target``: ratio >= ``target_ratio`` and gap <= ``target_gap``.

Bytes are the transport's counters of bytes sent per peer (payload and
framing, both phases of every collective; docs/results.md), never
arithmetic: framing makes the ratios slightly conservative. ``plot_frontier`` draws
validation loss against bytes sent per peer, log x-axis, one curve per run
(the 0-byte start point is left out: it has no place on a log axis), with
ddp's loss + ``target_gap`` and ddp's bytes / ``target_ratio`` as guides.

Defaults, chosen so the whole bench runs in under 30 minutes on 2 cores:
charlm with its default model (``d_model=128, n_layers=2, n_heads=4,
context=128, batch_size=4``), 8 peers, 600 steps per peer, H = 15 (40
outer steps) unless a run names its own; see ``DEFAULT_RUNS`` for what runs
and docs/codecs.md for the measured table. That is the regime where dense
DiLoCo comes within a few percent of ddp at equal samples (with a 64-wide
model, 64-character context, dense DiLoCo stayed 15-19% behind ddp at 600
and 1,500 steps, so no compressed run could be near ddp there). The
simulated compute time per step is fixed (0.02 s), so results do not depend
on the machine's load.

No printing: pass ``progress(label, step, of)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..sim.runner import run_algorithm, task_for
from ..sim.scenario import Scenario
from ..trace.results import Results

TARGET_RATIO = 5000.0
TARGET_GAP = 0.02
TASK_OPTIONS: dict[str, Any] = {"d_model": 128, "n_layers": 2, "n_heads": 4, "context": 128, "batch_size": 4}
DEFAULT_STEPS = 600
DEFAULT_H = 15


@dataclass(frozen=True)
class FrontierRun:
    """One point of the frontier: ``algorithm`` with ``codec`` (None: its default) and H = ``inner_steps``."""

    label: str
    algorithm: str
    codec: str | None = None
    inner_steps: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


DEFAULT_RUNS: tuple[FrontierRun, ...] = (
    FrontierRun("ddp", "ddp", "fp32"),
    FrontierRun("diloco fp32", "diloco", "fp32"),
    FrontierRun("diloco int4", "diloco", "int4"),
    FrontierRun("streaming_diloco int4", "streaming_diloco", "int4", options={"fragments": 4, "tau": 5}),
    FrontierRun("diloco int4 H60", "diloco", "int4", inner_steps=60),
    FrontierRun("sparseloco ctopk 2bit", "sparseloco", "ctopk:64:4096:2bit+ef"),
    FrontierRun("sparseloco ctopk 1bit", "sparseloco", "ctopk:16:4096:1bit+ef"),
    FrontierRun("sparseloco crandk 1bit H30", "sparseloco", "crandk:512:4096:1bit+ef", inner_steps=30),
)


def run_frontier_bench(
    task: str = "charlm",
    peers: int = 8,
    steps: int = DEFAULT_STEPS,
    runs: Sequence[FrontierRun] = DEFAULT_RUNS,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    inner_steps: int = DEFAULT_H,
    task_options: dict[str, Any] | None = None,
    seed: int = 0,
    target_ratio: float = TARGET_RATIO,
    target_gap: float = TARGET_GAP,
    compute_time: float = 0.02,
) -> Results:
    """Run every entry of ``runs`` (ddp must be one; it runs first); see the module docstring.

    Raises ConfigError, before any training, for a run list without ddp, a
    duplicate label, or an algorithm, codec or option that does not exist."""
    runs = list(runs)
    if not any(r.algorithm == "ddp" for r in runs):
        raise ConfigError("bench frontier needs a ddp run: it is the baseline every ratio is measured against")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"bench frontier: duplicate run labels in {labels}")
    runs.sort(key=lambda r: r.algorithm != "ddp")
    opts = dict(TASK_OPTIONS if task_options is None and task == "charlm" else task_options or {})
    scenarios = []
    for r in runs:  # validate every scenario before the first run starts
        h = r.inner_steps if r.inner_steps is not None else inner_steps
        scenarios.append(Scenario(
            task=task, algorithms=(r.algorithm,), peers=peers, steps=steps, inner_steps=h, seed=seed,
            codec=r.codec, compute_time=compute_time, task_options=opts,
            algorithm_options={r.algorithm: dict(r.options)} if r.options else {}))
        scenarios[-1].codec_for(r.algorithm)
    task_obj = task_for(scenarios[0])
    results = Results(task=task, peers=peers, link=scenarios[0].link, seed=seed)
    base = None
    for i, (r, sc) in enumerate(zip(runs, scenarios)):
        def step_progress(name: str, step: int, of: int, _label: str = r.label, _i: int = i) -> None:
            if progress is not None:
                progress(_label, _i * steps + step, len(runs) * steps)

        run = run_algorithm(sc, r.algorithm, task=task_obj, progress=step_progress)
        run.extra["label"] = r.label
        run.extra["inner_steps"] = 1 if r.algorithm == "ddp" else sc.inner_steps
        if base is None:
            base = run
        ratio = base.bytes_sent_per_peer / run.bytes_sent_per_peer if run.bytes_sent_per_peer else float("inf")
        gap = run.final_val_loss / base.final_val_loss - 1.0
        run.extra["bytes_ratio_vs_ddp"] = ratio
        run.extra["loss_gap_vs_ddp"] = gap
        run.extra["meets_target"] = bool(ratio >= target_ratio and gap <= target_gap)
        results.runs.append(run)
    results.extra.update({
        "bench": "frontier",
        "steps": steps,
        "inner_steps": inner_steps,
        "task_options": opts,
        "compute_time_s": compute_time,
        "target_ratio": target_ratio,
        "target_gap": target_gap,
        "samples_per_peer": results.runs[0].extra.get("samples_per_peer"),
    })
    return results


def parse_run(text: str) -> FrontierRun:
    """``LABEL=ALGORITHM[:H][@CODEC]`` (e.g. ``sl=sparseloco:40@ctopk:64+ef:0.95``) as a FrontierRun."""
    label, sep, rest = text.partition("=")
    if not sep or not label.strip() or not rest.strip():
        raise ConfigError(f"bad run {text!r}: expected LABEL=ALGORITHM[:H][@CODEC]")
    algo, at, codec = rest.partition("@")
    name, colon, h = algo.partition(":")
    if colon and not (h.isdigit() and int(h) >= 1):
        raise ConfigError(f"bad run {text!r}: H must be an integer >= 1, found {h!r}")
    if at and not codec.strip():
        raise ConfigError(f"bad run {text!r}: a codec spec must follow '@'")
    return FrontierRun(label.strip(), name.strip(), codec.strip() or None, int(h) if h else None)


def plot_frontier(results: Results, path: str | Path) -> None:
    """Validation loss against bytes sent per peer (log x), one curve per run; see the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    base = results.runs[0]
    for run in results.runs:
        pts = [p for p in run.curve if p.val_loss == p.val_loss and p.bytes_sent_per_peer > 0]
        ratio = run.extra.get("bytes_ratio_vs_ddp", 1.0)
        label = f"{run.extra.get('label', run.algorithm)} ({ratio:,.0f}x less)" if run is not base else "ddp (fp32, baseline)"
        ax.plot([p.bytes_sent_per_peer for p in pts], [p.val_loss for p in pts], marker="o", ms=2.5, label=label)
    target_gap = results.extra.get("target_gap", TARGET_GAP)
    target_ratio = results.extra.get("target_ratio", TARGET_RATIO)
    ax.axhline(base.final_val_loss * (1 + target_gap), color="grey", ls="--", lw=0.8,
               label=f"ddp's final loss + {target_gap:.0%}")
    ax.axvline(base.bytes_sent_per_peer / target_ratio, color="grey", ls=":", lw=0.8,
               label=f"ddp's bytes / {target_ratio:,.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent per peer (log scale)")
    ax.set_ylabel("validation loss (nats per character)" if results.task == "charlm" else "validation loss (nats)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    opts = results.extra.get("task_options", {})
    model = f", d_model {opts['d_model']}" if "d_model" in opts else ""
    ax.set_title(f"{results.task}: {results.peers} peers, {results.extra.get('steps')} steps per peer{model}, "
                 f"H {results.extra.get('inner_steps')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(results: Results) -> str:
    """The bench table in Markdown (what docs/codecs.md shows)."""
    head = ["run", "algorithm", "codec", "H", "final val loss", "loss vs ddp", "bytes sent / peer", "fewer bytes than ddp"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results.runs:
        x = r.extra
        lines.append("| " + " | ".join([
            str(x.get("label", r.algorithm)), r.algorithm, f"`{r.codec}`", str(x.get("inner_steps", "")),
            f"{r.final_val_loss:.4f}", f"{x.get('loss_gap_vs_ddp', 0.0):+.2%}", f"{r.bytes_sent_per_peer:,.0f}",
            f"{x.get('bytes_ratio_vs_ddp', 1.0):,.0f}x"]) + " |")
    return "\n".join(lines) + "\n"

"""``gossamer bench compression``: dense DDP against compressed gradients.

Defaults (``DEFAULT_TASK_OPTIONS``, ``DEFAULT_ALGORITHM_OPTIONS``): digits with
a 64-256-256-10 MLP and DDP with momentum SGD (lr 0.1, momentum 0.9), the
setting of Deep Gradient Compression.

Contract: ``run_compression_bench(...)`` simulates DDP on the same swarm once
per codec spec (default: dense fp32, top-k 1% and 0.1% with and without error
feedback, sign + EF, int8, PowerSGD rank 4), at equal samples per peer, and
returns a ``Results`` in the schema of ``gossamer simulate``; each run's
``codec`` is its spec string. The summary compares every run's accuracy and
bytes with the dense run of the same invocation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..sim.runner import run_algorithm, task_for
from ..sim.scenario import Scenario
from ..trace.results import Results

DEFAULT_CODECS = ("none", "topk:0.01", "topk:0.01+ef", "topk:0.001", "topk:0.001+ef", "sign+ef", "int8", "powersgd:4")
#: Deep Gradient Compression's setting: momentum SGD, and a model large enough
#: that 0.1% of its gradient is more than a handful of values (the default
#: digits MLP has 4.8k parameters; this one has 85k).
DEFAULT_TASK_OPTIONS = {"digits": {"hidden": (256, 256)}}
DEFAULT_ALGORITHM_OPTIONS = {"ddp": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}}


def run_compression_bench(
    *,
    task: str = "digits",
    peers: int = 8,
    algorithm: str = "ddp",
    steps: int | None = None,
    seed: int = 0,
    link: str = "100mbit,50ms",
    alpha: float | None = None,
    codecs: Sequence[str] = DEFAULT_CODECS,
    algorithm_options: dict | None = None,
    task_options: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Results:
    results = Results(task=task, peers=peers, link=link, seed=seed)
    if algorithm_options is None:
        algorithm_options = DEFAULT_ALGORITHM_OPTIONS.get(algorithm)
    if task_options is None:
        task_options = DEFAULT_TASK_OPTIONS.get(task)
    opts = {algorithm: dict(algorithm_options)} if algorithm_options else {}
    topts = dict(task_options or {})
    base = Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, seed=seed, link=link, alpha=alpha, algorithm_options=opts, task_options=topts)
    task_obj = task_for(base)
    for i, codec in enumerate(codecs):
        scenario = Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, seed=seed, link=link, alpha=alpha, codec=codec,
                            algorithm_options=opts, task_options=topts)
        results.runs.append(run_algorithm(scenario, algorithm, task=task_obj))
        if progress is not None:
            progress(codec, i + 1, len(codecs))
    dense = next((r for r in results.runs if r.codec in ("none", "fp32")), None)
    if dense is not None:
        results.extra["vs_dense"] = {
            r.codec: {
                "bytes_ratio": dense.bytes_sent_per_peer / r.bytes_sent_per_peer,
                "metric_delta": r.final_val_metric - dense.final_val_metric,
            }
            for r in results.runs
        }
    return results

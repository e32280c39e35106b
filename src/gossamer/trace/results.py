"""Results of training runs, in the one JSON schema every trainer writes.

Schema (documented in docs/results.md)::

    {"task", "peers", "link", "seed", "runs": [
        {"algorithm", "codec", "aggregator", "final_val_loss", "final_val_metric",
         "bytes_sent_per_peer", "peak_bytes_per_round", "sim_time_s", "wall_time_s",
         "steps", "rounds", "curve": [{"step", "sim_time_s", "bytes_sent_per_peer", "val_loss"}], ...}]}

``task`` is the task's name: a built-in task's (``"charlm"``), or a user's
task object's ``name`` attribute, else its class name (docs/own-task.md);
never a built-in name standing in for a user's task.

Runs may carry extra keys (``metric_name``, ``attack``, ``byzantine``,
``state_hashes_equal``, ``device``, ``saved_model`` ...); readers ignore keys
they do not know. ``samples_per_peer`` is null when the task does not say
how many samples a batch holds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CurvePoint:
    step: int
    sim_time_s: float
    bytes_sent_per_peer: float
    val_loss: float
    val_metric: float


@dataclass
class RunResult:
    algorithm: str
    codec: str
    aggregator: str
    final_val_loss: float
    final_val_metric: float
    metric_name: str
    bytes_sent_per_peer: float
    peak_bytes_per_round: int
    sim_time_s: float
    wall_time_s: float
    steps: int
    rounds: int
    curve: list[CurvePoint] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: final shared parameters when the run was asked to keep them (tensors; never serialised)
    final_params: list[Any] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(replace(self, final_params=None))
        d.pop("final_params")
        extra = d.pop("extra")
        d.update(extra)
        return _finite(d)


@dataclass
class Results:
    task: str  #: the task's name (see the module docstring)
    peers: int
    link: str
    seed: int
    runs: list[RunResult] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "peers": self.peers, "link": self.link, "seed": self.seed}
        out.update(_finite(self.extra))
        out["runs"] = [r.to_json() for r in self.runs]
        return out

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj

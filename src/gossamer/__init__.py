"""gossamer: train one model across many machines that are far apart, come and go, and may not be honest.

The public surface. Everything a user imports lives here; the submodules
behind these names are implementation and may move. Names are loaded on first
use (PEP 562), so ``import gossamer`` stays cheap and does not import torch.

Simulate (one process, a modelled network)::

    import gossamer
    results = gossamer.simulate(task="digits", algorithms=("ddp", "sparseloco"), peers=4, steps=100)
    for run in results.runs:
        print(run.algorithm, run.final_val_loss, run.bytes_sent_per_peer)

``simulate(scenario=None, *, progress=None, **fields)`` takes a ``Scenario``
or its fields (docs/concepts.md) and returns ``Results`` (docs/results.md).

Your own training loop: ``Optimizer`` wraps any ``torch.optim.Optimizer``
and runs the outer sync over a real swarm or a ``SimulatedSwarm``
(docs/optimizer.md).

Real swarm: ``Coordinator``, ``LocalCoordinator``, ``Peer`` and ``Identity``
(a peer's key; docs/swarm.md). Traces: ``TraceWriter``, ``TraceReader``
(docs/trace.md). Attacks for red-teaming: ``make_attack`` (docs/robustness.md). Building blocks:
``make_codec`` (docs/codecs.md), ``make_aggregator`` (docs/robustness.md),
``make_algorithm`` (docs/algorithms.md), ``make_task``. Your own model and
data in the simulator: ``Task`` and ``Shard`` (docs/own-task.md), as
``simulate(task=MyTask(...))``. Errors: every error
gossamer raises on purpose is a ``GossamerError``; ``ConfigError`` for bad
configuration (raised before any work starts), ``CodecError``,
``AggregationError``, ``ProtocolError``, ``PeerError``, ``TaskError``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import (
    AggregationError,
    CodecError,
    ConfigError,
    GossamerError,
    PeerError,
    ProtocolError,
    ShardError,
    TaskError,
)

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("gossamer")
except PackageNotFoundError:  # pragma: no cover - a source tree without an install
    __version__ = "0.0.0+unknown"

_LAZY: dict[str, tuple[str, str]] = {
    "simulate": ("gossamer.sim.runner", "simulate"),
    "Scenario": ("gossamer.sim.scenario", "Scenario"),
    "Results": ("gossamer.trace.results", "Results"),
    "Coordinator": ("gossamer.swarm.coordinator", "Coordinator"),
    "Peer": ("gossamer.swarm.peer", "Peer"),
    "make_codec": ("gossamer.codecs", "make_codec"),
    "make_aggregator": ("gossamer.aggregate", "make_aggregator"),
    "make_algorithm": ("gossamer.algorithms", "make_algorithm"),
    "ALGORITHM_NAMES": ("gossamer.algorithms", "ALGORITHM_NAMES"),
    "make_task": ("gossamer.tasks", "make_task"),
    "Task": ("gossamer.tasks", "Task"),
    "Shard": ("gossamer.tasks", "Shard"),
    "Optimizer": ("gossamer.optimizer", "Optimizer"),
    "SimulatedSwarm": ("gossamer.optimizer", "SimulatedSwarm"),
    "LocalCoordinator": ("gossamer.swarm.local", "LocalCoordinator"),
    "Identity": ("gossamer.transport.identity", "Identity"),
    "make_attack": ("gossamer.sim.attacks", "make_attack"),
    "TraceWriter": ("gossamer.trace", "TraceWriter"),
    "TraceReader": ("gossamer.trace", "TraceReader"),
}

__all__ = [
    "__version__", *sorted(_LAZY),
    "GossamerError", "ConfigError", "CodecError", "AggregationError", "ProtocolError", "PeerError", "TaskError",
    "ShardError",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gossamer' has no attribute {name!r}") from None
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

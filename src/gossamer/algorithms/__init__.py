"""The outer loops. ``make_algorithm(name, model, loss_fn, comm, **options)``
builds one; ``ALGORITHMS`` maps each name to its class and config."""

from __future__ import annotations

from typing import Any

import torch

from ..comm import Communicator
from ..errors import ConfigError
from .base import Algorithm, config_from_options
from .ddp import DDP, DDPConfig
from .diloco import DiLoCo, DiLoCoConfig, SparseLoCo, SparseLoCoConfig
from .fedavg import FedAvg, FedAvgConfig
from .gossip import Gossip, GossipConfig
from .noloco import NoLoCo, NoLoCoConfig
from .spsa import SPSA, SPSAConfig
from .streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig

ALGORITHMS: dict[str, tuple[type[Algorithm], type]] = {
    "ddp": (DDP, DDPConfig),
    "fedavg": (FedAvg, FedAvgConfig),
    "diloco": (DiLoCo, DiLoCoConfig),
    "sparseloco": (SparseLoCo, SparseLoCoConfig),
    "streaming_diloco": (StreamingDiLoCo, StreamingDiLoCoConfig),
    "noloco": (NoLoCo, NoLoCoConfig),
    "spsa": (SPSA, SPSAConfig),
    "gossip": (Gossip, GossipConfig),
}
ALGORITHM_NAMES = tuple(ALGORITHMS)


def algorithm_config(name: str, **options: Any) -> Any:
    """The validated config of algorithm ``name``."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; accepted: {', '.join(ALGORITHM_NAMES)}")
    return config_from_options(ALGORITHMS[name][1], options, what=name)


def run_options(name: str, *, steps: int, inner_steps: int | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options algorithm ``name`` runs with, the same in the simulator and
    the swarm: the run's ``inner_steps`` (where the algorithm has H), the run's
    ``steps`` as ``total_steps`` (for learning-rate schedules), then
    ``overrides``. Raises ``ConfigError`` for an unknown algorithm."""
    import dataclasses

    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; accepted: {', '.join(ALGORITHM_NAMES)}")
    fields = {f.name for f in dataclasses.fields(ALGORITHMS[name][1])}
    opts: dict[str, Any] = {}
    if "inner_steps" in fields and inner_steps is not None:
        opts["inner_steps"] = inner_steps
    if "total_steps" in fields:
        opts["total_steps"] = steps
    opts.update(overrides or {})
    return opts


def check_algorithm_names(names: Any) -> tuple[str, ...]:
    """``names`` as a tuple, checked: not empty, each one known, none twice
    (``ConfigError`` naming the problem and the accepted names)."""
    algos = tuple(names)
    if not algos:
        raise ConfigError(f"no algorithms given; accepted: {', '.join(ALGORITHM_NAMES)}")
    for a in algos:
        if a not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {a!r}; accepted: {', '.join(ALGORITHM_NAMES)}")
    if len(set(algos)) != len(algos):
        raise ConfigError(f"algorithm listed twice in {','.join(algos)}")
    return algos


def check_own_optimizer(name: str, options: dict[str, Any]) -> None:
    """Raise ``ConfigError`` unless algorithm ``name`` can run with a user's own
    inner optimizer (``Algorithm.use_optimizer``) and ``options`` hold none of
    the options that configure gossamer's own (``INNER_OPTIMIZER_OPTIONS``)."""
    from .base import INNER_OPTIMIZER_OPTIONS

    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; accepted: {', '.join(ALGORITHM_NAMES)}")
    refusal = ALGORITHMS[name][0].own_optimizer_refusal
    if refusal:
        raise ConfigError(f"{name} cannot run with your own optimizer: {refusal}")
    clash = sorted(set(options) & set(INNER_OPTIMIZER_OPTIONS))
    if clash:
        raise ConfigError(f"option(s) {', '.join(clash)} configure gossamer's own inner optimizer; "
                          f"with your optimizer, set them on it instead")


def make_algorithm(name: str, model: torch.nn.Module, loss_fn: Any, comm: Communicator, **options: Any) -> Algorithm:
    config = algorithm_config(name, **options)
    return ALGORITHMS[name][0](model, loss_fn, comm, config)


__all__ = ["ALGORITHMS", "ALGORITHM_NAMES", "Algorithm", "algorithm_config", "check_algorithm_names", "check_own_optimizer", "make_algorithm", "run_options"]

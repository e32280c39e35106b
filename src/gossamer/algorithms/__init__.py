"""The outer loops. ``make_algorithm(name, model, loss_fn, comm, **options)``
builds one; ``ALGORITHMS`` maps each name to its class and config."""

from __future__ import annotations

from typing import Any

import torch

from ..comm import Communicator
from ..errors import ConfigError
from .base import Algorithm, config_from_options
from .ddp import DDP, DDPConfig
from .diloco import DiLoCo, DiLoCoConfig
from .fedavg import FedAvg, FedAvgConfig
from .gossip import Gossip, GossipConfig
from .noloco import NoLoCo, NoLoCoConfig
from .spsa import SPSA, SPSAConfig
from .streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig

ALGORITHMS: dict[str, tuple[type[Algorithm], type]] = {
    "ddp": (DDP, DDPConfig),
    "fedavg": (FedAvg, FedAvgConfig),
    "diloco": (DiLoCo, DiLoCoConfig),
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


def make_algorithm(name: str, model: torch.nn.Module, loss_fn: Any, comm: Communicator, **options: Any) -> Algorithm:
    config = algorithm_config(name, **options)
    return ALGORITHMS[name][0](model, loss_fn, comm, config)


__all__ = ["ALGORITHMS", "ALGORITHM_NAMES", "Algorithm", "algorithm_config", "make_algorithm"]

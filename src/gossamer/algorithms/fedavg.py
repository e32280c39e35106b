"""FedAvg / local SGD (McMahan et al. 2017; Stich 2019).

Each peer takes H local optimizer steps from the shared parameters, then the
peers average their parameters:

    theta <- theta_start - (1/n) sum_i (theta_start - theta_i)  =  (1/n) sum_i theta_i

The average is taken over the pseudo-gradients ``theta_start - theta_i`` (so a
codec compresses deltas, not weights). Communication falls by H against DDP.
The shared parameters stay bit-identical on all peers; the inner optimizer's
state is local.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LocalUpdateAlgorithm, positive


@dataclass(frozen=True)
class FedAvgConfig:
    inner_steps: int = 50
    inner_optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        positive("inner_steps", self.inner_steps, what="fedavg")
        positive("lr", self.lr, what="fedavg")
        positive("total_steps", self.total_steps, what="fedavg", allow_zero=True)
        positive("warmup_steps", self.warmup_steps, what="fedavg", allow_zero=True)
        positive("weight_decay", self.weight_decay, what="fedavg", allow_zero=True)
        positive("grad_clip", self.grad_clip, what="fedavg", allow_zero=True)


class FedAvg(LocalUpdateAlgorithm):
    name = "fedavg"

    def outer_update(self, avg_delta: list[torch.Tensor]) -> None:
        for s, d in zip(self.start, avg_delta):
            s.sub_(d)

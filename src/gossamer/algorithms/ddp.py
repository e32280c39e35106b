"""Data-parallel training (DDP): the byte baseline.

Every step, every peer computes the gradient on its batch, the gradients are
all-reduced (mean), and every peer applies the same optimizer step:

    g = (1/n) sum_i grad L_i(theta);   theta <- Opt(theta, g)

Every peer sends the full fp32 gradient (or its codec encoding) every step:
``2 (n-1)/n * 4 * |theta|`` bytes per peer per step with the butterfly
all-reduce. Parameters and optimizer state stay bit-identical on all peers.

State. The shared state is the parameters and the optimizer state (AdamW:
``step``, ``exp_avg``, ``exp_avg_sq`` per parameter; SGD with momentum: the
momentum buffer), as zeros before the first step, so its layout never
changes and a joiner can load it. The local gradient of the last step is
per-peer state (``sync`` reads it and never overwrites it, so a retried
sync sends the same gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import Algorithm, make_optimizer, make_schedule, positive


@dataclass(frozen=True)
class DDPConfig:
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    momentum: float = 0.0
    schedule: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        positive("lr", self.lr, what="ddp")
        positive("total_steps", self.total_steps, what="ddp", allow_zero=True)
        positive("momentum", self.momentum, what="ddp", allow_zero=True)
        positive("warmup_steps", self.warmup_steps, what="ddp", allow_zero=True)
        positive("weight_decay", self.weight_decay, what="ddp", allow_zero=True)
        positive("grad_clip", self.grad_clip, what="ddp", allow_zero=True)


class DDP(Algorithm):
    name = "ddp"
    own_optimizer_refusal = ("its optimizer state is shared state (every peer, joiners included, must hold the same), "
                             "which gossamer can only build for its own adamw/sgd; use diloco (inner_steps=1 "
                             "averages every step) or run ddp with Peer(...).train")

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Any, config: DDPConfig) -> None:
        super().__init__(model, loss_fn, comm, config)
        self.opt = make_optimizer(config.optimizer, self.params, config.lr, config.weight_decay, what="ddp", momentum=config.momentum)
        self.schedule = make_schedule(self.opt, config, what="ddp")

        self.grads = [torch.zeros_like(p) for p in self.params]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}  # the optimizer state is shared (see shared_state)

    def local_step(self, batch: Any) -> float:
        loss = self._backward(batch)
        self.grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        return loss

    def wants_sync(self, step: int) -> bool:
        return True

    async def sync(self, step: int) -> None:
        self.comm.round = step
        avg = await self.comm.all_reduce(self.grads, name="ddp.gradient")
        for p, g in zip(self.params, avg):
            p.grad = g
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.opt.step()
        if self.schedule is not None:
            self.schedule.step()
        self.rounds += 1

    def _state_keys(self) -> tuple[str, ...]:
        if self.config.optimizer == "adamw":
            return ("step", "exp_avg", "exp_avg_sq")
        return ("momentum_buffer",) if self.config.momentum > 0 else ()

    def _ensure_opt_state(self) -> None:
        """Give every parameter its optimizer state (zeros, step 0) if it has none yet."""
        for p in self.params:
            st = self.opt.state[p]
            for key in self._state_keys():
                if key not in st or st[key] is None:
                    st[key] = torch.zeros((), dtype=torch.float32) if key == "step" else torch.zeros_like(p, memory_format=torch.preserve_format)

    def shared_state(self) -> list[torch.Tensor]:
        self._ensure_opt_state()
        state = [p.detach() for p in self.params]
        for p in self.params:
            for key in self._state_keys():
                state.append(self.opt.state[p][key])
        return state

    def local_state(self) -> dict[str, Any]:
        return {"params": [], "optimizers": {}, "grads": [g.clone() for g in self.grads]}

    def load_local_state(self, local: dict[str, Any] | None) -> None:
        if local is None:
            self.grads = [torch.zeros_like(p) for p in self.params]
        else:
            self.grads = [g.clone() for g in local["grads"]]

"""The algorithm contract: the outer loop of one peer.

An algorithm owns a peer's model and optimizers and decides what to send,
when, and how to apply what comes back. The runtime (simulator or real peer)
drives it identically:

    for step in range(steps):
        loss = algo.local_step(batch)          # pure compute, no communication
        if algo.wants_sync(step):
            await algo.sync(step)              # collectives through algo.comm

Contract:

- ``local_step`` never communicates; ``sync`` communicates only through
  ``self.comm`` (a ``Communicator``), so it runs unchanged over the simulated
  network and over TCP.
- ``shared_state()`` lists the tensors that must be bit-identical on every
  honest peer after each ``sync`` (parameters and outer optimizer state); it is
  what ``verify.state_hash`` hashes.
- ``eval_model()`` returns the model that represents the swarm's current
  shared result (for DiLoCo, the outer parameters, not the drifting local
  ones).
- Configs are frozen dataclasses; ``config_from_options`` rejects unknown or
  invalid options with a ``ConfigError`` naming them.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..comm import Communicator
from ..errors import ConfigError


def config_from_options(cls: type, options: dict[str, Any], *, what: str) -> Any:
    """Build the frozen dataclass ``cls`` from ``options``, rejecting unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {what}; accepted: {', '.join(sorted(names))}")
    return cls(**options)


def positive(name: str, value: float, *, what: str, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{what}: {name} must be {bound}, got {value}")


def make_optimizer(
    kind: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float, *, what: str, momentum: float = 0.0
) -> torch.optim.Optimizer:
    """The inner optimizers: ``adamw`` (betas 0.9/0.95 as in DiLoCo) or ``sgd`` (heavy-ball ``momentum``)."""
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ConfigError(f"{what}: unknown inner optimizer {kind!r}; accepted: adamw, sgd")


SCHEDULES = ("constant", "cosine")


def make_schedule(opt: torch.optim.Optimizer, config: Any, *, what: str) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The learning-rate schedule of ``config`` (fields ``schedule``, ``total_steps``,
    ``warmup_steps``, ``min_lr_ratio``), stepped once per optimizer step:

        constant:  lr_t = lr                      (after a linear warm-up, if any)
        cosine:    lr_t = lr (r + (1 - r) (1 + cos(pi t / T)) / 2),  r = min_lr_ratio, T = total_steps

    ``None`` when the schedule is constant with no warm-up. Every peer runs the
    same schedule, so shared state stays bit-identical."""
    import math

    kind = getattr(config, "schedule", "constant")
    if kind not in SCHEDULES:
        raise ConfigError(f"{what}: unknown schedule {kind!r}; accepted: {', '.join(SCHEDULES)}")
    warmup, total, floor = getattr(config, "warmup_steps", 0), getattr(config, "total_steps", 0), getattr(config, "min_lr_ratio", 0.1)
    if kind == "cosine" and total <= 0:
        raise ConfigError(f"{what}: the cosine schedule needs total_steps > 0 (the run's local steps)")
    if kind == "constant" and warmup == 0:
        return None

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if kind == "constant":
            return 1.0
        frac = min(t, total) / total
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Algorithm(ABC):
    """One peer's outer loop; see the module docstring."""

    name: ClassVar[str]
    #: True when the collective carries each peer's individual contribution, so
    #: robust aggregation and attacks apply.
    individual_contributions: ClassVar[bool] = True
    #: True when every honest peer holds the same shared state after each sync
    #: (checked by hashing). Gossip-style algorithms set it False.
    bit_parity: ClassVar[bool] = True
    #: True when the runtime must end a run with a ``sync`` after the last
    #: step if one did not just happen (so the final model is a shared one).
    ends_with_sync: ClassVar[bool] = False
    #: Codec spec of the communicator when the run names none ("none": raw fp32).
    default_codec: ClassVar[str] = "none"

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Communicator, config: Any) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.comm = comm
        self.config = config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rounds = 0
        self._eval_model: torch.nn.Module | None = None

    @abstractmethod
    def local_step(self, batch: Any) -> float:
        """One step of local computation on ``batch``; returns the batch loss."""

    @abstractmethod
    def wants_sync(self, step: int) -> bool:
        """Whether ``sync`` follows local step ``step`` (0-based)."""

    @abstractmethod
    async def sync(self, step: int) -> None:
        """Communicate and apply the result."""

    def shared_state(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.params]

    def eval_model(self) -> torch.nn.Module:
        return self.model

    def _model_with(self, tensors: list[torch.Tensor]) -> torch.nn.Module:
        """A private copy of the model (made once) holding ``tensors`` as its trainable parameters."""
        if self._eval_model is None:
            self._eval_model = copy.deepcopy(self.model)
        with torch.no_grad():
            for p, t in zip((q for q in self._eval_model.parameters() if q.requires_grad), tensors):
                p.copy_(t)
        return self._eval_model

    def _inner_step(self, batch: Any) -> float:
        """One local optimizer step of ``self.inner`` (gradient, clipping at
        ``config.grad_clip`` when > 0, step, schedule); returns the batch loss."""
        loss = self._backward(batch)
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.inner.step()
        schedule = getattr(self, "schedule", None)
        if schedule is not None:
            schedule.step()
        return loss

    def _backward(self, batch: Any) -> float:
        for p in self.params:
            p.grad = None
        loss = self.loss_fn(self.model, batch)
        loss.backward()
        return float(loss.detach())


class LocalUpdateAlgorithm(Algorithm):
    """Shared machinery of algorithms that take H local steps, then average the
    pseudo-gradient ``delta = theta_start - theta_local`` and apply an outer update."""

    ends_with_sync = True

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Communicator, config: Any) -> None:
        super().__init__(model, loss_fn, comm, config)
        self.start = [p.detach().clone() for p in self.params]
        self.inner = make_optimizer(config.inner_optimizer, self.params, config.lr, config.weight_decay, what=self.name)
        self.schedule = make_schedule(self.inner, config, what=self.name)

    def local_step(self, batch: Any) -> float:
        return self._inner_step(batch)

    def wants_sync(self, step: int) -> bool:
        return (step + 1) % self.config.inner_steps == 0

    async def sync(self, step: int) -> None:
        with torch.no_grad():
            delta = [s - p.detach() for s, p in zip(self.start, self.params)]
        self.comm.round = self.rounds
        avg = await self.comm.all_reduce(delta, name=f"{self.name}.pseudo_gradient")
        with torch.no_grad():
            self.outer_update(avg)
            for p, s in zip(self.params, self.start):
                p.copy_(s)
        self.rounds += 1

    @abstractmethod
    def outer_update(self, avg_delta: list[torch.Tensor]) -> None:
        """Update ``self.start`` (the shared parameters) from the averaged pseudo-gradient."""

    def shared_state(self) -> list[torch.Tensor]:
        return list(self.start)

    def eval_model(self) -> torch.nn.Module:
        return self._model_with(self.start)

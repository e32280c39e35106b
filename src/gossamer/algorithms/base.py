"""The algorithm contract: the outer loop of one peer.

An algorithm owns a peer's model and optimizers and decides what to send,
when, and how to apply what comes back. The one round loop
(``algorithms.driver.RoundLoop``) drives it identically in the simulator, the
swarm peer and the tests:

    while algo.steps < total_steps:
        loss = algo.step(batch)                # local_step: pure compute, no communication
        if algo.sync_due(total_steps):
            await algo.synchronize()           # sync: collectives through algo.comm

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
- ``state_dict()`` / ``load_state_dict(sd)`` hold everything a joiner, a
  retried attempt or a restarted peer needs, as data:

      {"shared": {"tensors": [...], "counters": {...}},   # equal on every honest peer (bit parity)
       "local":  {"params": [...], "optimizers": {...}, ...}}  # this peer's own

  ``shared.tensors`` are clones of ``shared_state()`` (parameters, outer
  optimizer state); ``shared.counters`` are plain ints (local steps taken,
  syncs done, algorithm round, schedule position, work in flight). The
  shared part is what ``shared_hash()`` hashes and what a joiner fetches;
  ``load_state_dict`` without ``"local"`` derives the local part from the
  shared one (a joiner starts its local model from the shared model, and
  its learning-rate schedule from the swarm's position). Loading and then
  re-running ``synchronize()`` repeats the sync exactly: ``sync`` changes
  nothing that ``state_dict`` does not hold.
- Configs are frozen dataclasses; ``config_from_options`` rejects unknown or
  invalid options with a ``ConfigError`` naming them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..codecs.base import all_finite
from ..comm import Communicator
from ..errors import ConfigError

log = logging.getLogger(__name__)


def config_from_options(cls: type, options: dict[str, Any], *, what: str) -> Any:
    """Build the frozen dataclass ``cls`` from ``options``, rejecting unknown keys
    and values of the wrong type (an int is accepted for a float; a bool is
    never a number) with a ``ConfigError`` naming the option."""
    import typing

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {what}; accepted: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        want = hints.get(key)
        ok = True
        if want is bool:
            ok = isinstance(value, bool)
        elif want is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif want is str:
            ok = isinstance(value, str)
        if not ok:
            kind = getattr(want, "__name__", str(want))
            raise ConfigError(f"{what}: option {key} must be {'a' if kind != 'int' else 'an'} {kind}, got {value!r}")
    return cls(**{k: float(v) if hints.get(k) is float else v for k, v in options.items()})


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


#: Options that configure the inner optimizer gossamer builds; they do not
#: apply when a user brings their own (``Algorithm.use_optimizer``).
INNER_OPTIMIZER_OPTIONS = ("inner_optimizer", "optimizer", "lr", "weight_decay", "momentum", "schedule",
                           "warmup_steps", "min_lr_ratio")


class Gradients:
    """A batch that stands for gradients the caller already computed.

    ``Algorithm.step(Gradients(loss))`` runs the local update on the
    ``.grad`` of the model's parameters as they are (the caller ran the
    forward and ``loss.backward()``), instead of computing them from a batch
    with ``loss_fn``. ``loss`` (float, may be NaN) is only reported.
    ``seconds`` is the compute time of that step for a simulated clock (None:
    unknown). Used by ``gossamer.Optimizer``, where the user keeps the loop.
    """

    __slots__ = ("loss", "seconds")

    def __init__(self, loss: float = float("nan"), seconds: float | None = None) -> None:
        self.loss = float(loss)
        self.seconds = seconds


SCHEDULES = ("constant", "cosine")


def make_schedule(opt: torch.optim.Optimizer, config: Any, *, what: str) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The learning-rate schedule of ``config`` (fields ``schedule``, ``total_steps``,
    ``warmup_steps``, ``min_lr_ratio``), stepped once per optimizer step:

        constant:  lr_t = lr                      (after a linear warm-up, if any)
        cosine:    lr_t = lr (r + (1 - r) (1 + cos(pi t / T)) / 2),  r = min_lr_ratio, T = total_steps

    ``None`` when the schedule is constant with no warm-up. Every peer runs the
    same schedule, so shared state stays bit-identical."""
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


def check_optimizer(optimizer: Any, params: list[torch.nn.Parameter], *, what: str) -> None:
    """Raise ``ConfigError`` unless ``optimizer`` is a ``torch.optim.Optimizer``
    whose parameter groups hold exactly ``params`` (each once)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"{what}: the inner optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    held = [p for group in optimizer.param_groups for p in group["params"]]
    want = {id(p) for p in params}
    got = {id(p) for p in held}
    if len(held) != len(got) or got != want:
        extra, missing = len(got - want), len(want - got)
        raise ConfigError(f"{what}: the optimizer must hold exactly the model's {len(params)} trainable parameters; "
                          f"it holds {len(held)} ({missing} of the model's missing, {extra} other tensors)")


def apply_schedule(schedule: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set the optimizer's learning rates to the schedule's value at its
    position ``last_epoch`` (after that position was loaded)."""
    lrs = [base * fn(schedule.last_epoch) for base, fn in zip(schedule.base_lrs, schedule.lr_lambdas)]
    for group, lr in zip(schedule.optimizer.param_groups, lrs):
        group["lr"] = lr


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
    #: False when no payload of the algorithm goes through a codec (spsa's byte).
    uses_codec: ClassVar[bool] = True
    #: Why a user's own inner optimizer cannot replace this algorithm's
    #: (``use_optimizer``); empty when it can.
    own_optimizer_refusal: ClassVar[str] = ""

    @classmethod
    def check_codec(cls, spec: str) -> None:
        """Raise ConfigError if the algorithm cannot run with the codec ``spec``
        (runtimes call it before any work); every codec is fine by default."""

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Communicator, config: Any) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.comm = comm
        self.config = config
        self.params = [p for p in model.parameters() if p.requires_grad]
        #: The algorithm's own round counter (what its collectives are tagged with).
        self.rounds = 0
        #: Local steps taken (``step``) and syncs completed (``synchronize``).
        self.steps = 0
        self.syncs = 0
        #: The run's length in local steps, once the round loop has said it (``sync_due``).
        self.run_steps: int | None = None
        self._eval_model: torch.nn.Module | None = None

    # ------------------------------------------------------------------ driving
    def step(self, batch: Any) -> float:
        """One local step (``local_step``), counted; returns the batch loss."""
        loss = self.local_step(batch)
        self.steps += 1
        return loss

    def sync_due(self, total_steps: int) -> bool:
        """Whether a sync follows the local step just taken: the algorithm
        wants one, or it is the run's last step and the algorithm ends runs
        with a sync (so the final model is a shared one)."""
        self.run_steps = total_steps
        last = self.steps - 1
        return self.wants_sync(last) or (self.steps == total_steps and self.ends_with_sync)

    def is_last_step(self, step: int) -> bool:
        """Whether local step ``step`` (0-based) is the run's last (as far as the
        round loop has told ``sync_due``): a sync there must leave nothing in flight."""
        return self.run_steps is not None and step + 1 >= self.run_steps

    async def synchronize(self) -> None:
        """The sync after the local step just taken, counted."""
        await self.sync(self.steps - 1)
        self.syncs += 1

    def use_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Take ``optimizer`` (any ``torch.optim.Optimizer`` over exactly this
        model's trainable parameters) as the inner optimizer, in place of the
        one built from the config; the config's learning-rate schedule is
        dropped (the user's own scheduler, if any, drives the optimizer).
        Its state is local, saved and rolled back like the built one's.

        Raises ``ConfigError`` when the algorithm cannot take one
        (``own_optimizer_refusal`` says why) or the optimizer holds other
        tensors than the model's trainable parameters."""
        if self.own_optimizer_refusal or not hasattr(self, "inner"):
            raise ConfigError(f"{self.name} cannot run with your own optimizer: "
                              f"{self.own_optimizer_refusal or 'it has no inner optimizer'}")
        check_optimizer(optimizer, self.params, what=self.name)
        self.inner = optimizer
        self.schedule = None

    # ------------------------------------------------------------------ state as data
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """This peer's local optimizers by name (their state is per-peer)."""
        inner = getattr(self, "inner", None)
        return {"inner": inner} if inner is not None else {}

    def counters(self) -> dict[str, Any]:
        """The shared counters (see the module docstring)."""
        out: dict[str, Any] = {"steps": self.steps, "syncs": self.syncs, "rounds": self.rounds}
        schedule = getattr(self, "schedule", None)
        if schedule is not None:
            out["schedule_step"] = int(schedule.last_epoch)
        return out

    def load_counters(self, counters: dict[str, Any]) -> None:
        self.steps, self.syncs, self.rounds = int(counters["steps"]), int(counters["syncs"]), int(counters["rounds"])
        schedule = getattr(self, "schedule", None)
        if schedule is not None and "schedule_step" in counters:
            schedule.last_epoch = int(counters["schedule_step"])
            apply_schedule(schedule)

    def local_state(self) -> dict[str, Any]:
        """This peer's own state: local parameters, local optimizer state and
        the communicator's codec state (error-feedback memory: ``"comm"``)."""
        return {"params": [p.detach().clone() for p in self.params],
                "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers().items()},
                "comm": self.comm.state_dict()}

    def load_local_state(self, local: dict[str, Any] | None) -> None:
        """Restore ``local_state()``; ``None`` (a joiner): derive it from the shared
        state. The communicator's codec state is restored with it (and
        forgotten for a joiner); ``load_state_dict`` makes sure of that even
        for a subclass whose override does not call this one."""
        self._load_comm_state(local)
        if local is None:
            self.reset_local()
            return
        with torch.no_grad():
            for p, t in zip(self.params, local["params"]):
                p.copy_(t)
        for k, opt in self.optimizers().items():
            if k in local.get("optimizers", {}):
                opt.load_state_dict(copy.deepcopy(local["optimizers"][k]))
        # load_state_dict restores the learning rate the peer had; the shared schedule position wins
        schedule = getattr(self, "schedule", None)
        if schedule is not None:
            apply_schedule(schedule)

    def reset_local(self) -> None:
        """Local state of a peer that only has the shared state (a joiner): by
        default the local parameters are the shared ones and local optimizer
        state starts empty."""
        for opt in self.optimizers().values():
            opt.state.clear()

    #: While ``load_state_dict`` runs: whether the codec state was restored already.
    _comm_state_loaded = False
    _loading_state = False

    def _load_comm_state(self, local: dict[str, Any] | None) -> None:
        """Restore the communicator's codec state from ``local["comm"]``; forget
        it when there is none (a joiner, or a state saved without it). Done
        once per ``load_state_dict``."""
        if self._comm_state_loaded:
            return
        self._comm_state_loaded = self._loading_state
        if local is not None and "comm" in local:
            self.comm.load_state_dict(local["comm"])
        else:
            self.comm.reset_state()

    def state_dict(self) -> dict[str, Any]:
        """See the module docstring. Tensors are copies. ``local["comm"]`` is the
        communicator's codec state (error-feedback memory), also for a
        subclass whose ``local_state`` leaves it out."""
        local = self.local_state()
        if "comm" not in local:
            local["comm"] = self.comm.state_dict()
        return {"shared": self.shared_state_dict(), "local": local}

    def shared_state_dict(self) -> dict[str, Any]:
        """The ``"shared"`` part of ``state_dict()`` alone (copies): what a joiner
        loads, without copying this peer's local state."""
        return {"tensors": [t.detach().clone() for t in self.shared_state()], "counters": self.counters()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (or only its ``"shared"`` part, for a joiner).

        Raises ``ConfigError`` when the shared tensors do not match this
        algorithm's layout (count, shapes, dtypes)."""
        shared = sd["shared"]
        self.load_counters(shared["counters"])
        live = self.shared_state()
        tensors = shared["tensors"]
        if len(live) != len(tensors):
            raise ConfigError(f"{self.name}: state has {len(tensors)} shared tensors, this model needs {len(live)}")
        for i, (t, s) in enumerate(zip(live, tensors)):
            if t.shape != s.shape or t.dtype != s.dtype:
                raise ConfigError(f"{self.name}: shared tensor {i} is {s.dtype} {tuple(s.shape)}, expected {t.dtype} {tuple(t.shape)}")
        with torch.no_grad():
            for t, s in zip(live, tensors):
                t.copy_(s)
        self.after_load_shared()
        self._loading_state, self._comm_state_loaded = True, False
        try:
            self.load_local_state(sd.get("local"))
            self._load_comm_state(sd.get("local"))  # if the subclass's load_local_state did not
        finally:
            self._loading_state = self._comm_state_loaded = False

    def after_load_shared(self) -> None:
        """Hook: rebuild derived structures after the shared state changed."""

    def shared_hash(self) -> str:
        """BLAKE2b of the shared state: tensors and counters (``verify.state_hash``)."""
        from ..verify import state_hash

        return state_hash(self.shared_state(), meta=self.counters())

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

    def in_agreement(self) -> bool:
        """Whether every honest peer holds the same shared state right now
        (always, for algorithms with bit parity; after the final merge, for gossip)."""
        return self.bit_parity

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
        if isinstance(batch, Gradients):  # the caller ran the backward pass itself
            return batch.loss
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
        finite = all(all_finite(d) for d in delta)
        self.comm.round = self.rounds
        avg = await self.comm.all_reduce(delta, name=f"{self.name}.pseudo_gradient")
        with torch.no_grad():
            self.outer_update(avg)
            for p, s in zip(self.params, self.start):
                p.copy_(s)
        if not finite:
            # our pseudo-gradient was withheld (comm never applies a non-finite
            # one); the inner optimizer's moments are poisoned too: start over
            # from the shared state so the next round contributes again
            log.warning("%s: local state went non-finite before round %d; inner optimizer state reset",
                        self.name, self.rounds)
            for opt in self.optimizers().values():
                opt.state.clear()
        self.rounds += 1

    def reset_local(self) -> None:
        super().reset_local()
        with torch.no_grad():
            for p, s in zip(self.params, self.start):
                p.copy_(s)

    @abstractmethod
    def outer_update(self, avg_delta: list[torch.Tensor]) -> None:
        """Update ``self.start`` (the shared parameters) from the averaged pseudo-gradient."""

    def shared_state(self) -> list[torch.Tensor]:
        return list(self.start)

    def eval_model(self) -> torch.nn.Module:
        return self._model_with(self.start)

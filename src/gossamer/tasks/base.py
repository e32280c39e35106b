"""The workload interface: a ``Task`` builds models, shards data and evaluates.

Contract
--------
* ``make_task(name, **options)`` builds one of ``TASK_NAMES``. An unknown name
  raises ``ConfigError`` listing the accepted names; an unknown option raises
  ``ConfigError`` naming it and the accepted options; a bad option value
  raises ``ConfigError`` naming the option and the value.
* ``Task.make_model(seed)`` is deterministic: the same seed gives bit-identical
  parameters on every call and every machine (same torch build). Models are
  built on the ``meta`` device and initialised from an explicit
  ``torch.Generator``, so the global torch RNG is never read or advanced.
* ``Task.loss(model, batch)`` is the scalar mean loss, differentiable.
* ``Task.shard(peer, n_peers, seed=..., label_flip=...)`` returns that peer's
  ``Shard``. Shard membership is a pure function of the task config,
  ``n_peers`` and ``seed``; ``Shard.next_batch()`` is a deterministic stream
  seeded by ``(seed, peer)``. No global RNG state is used anywhere.
* ``Task.evaluate(model)`` returns ``(val_loss, val_metric)`` on a fixed
  validation set that does not depend on any run seed.
* Data comes only from what ships with Python and scikit-learn: no downloads.
* A user's own task need not subclass ``Task``: any object with
  ``make_model``, ``loss``, ``shard`` and ``evaluate`` will do; the optional
  attributes and their defaults, and the checks made before training, are in
  ``gossamer.tasks.protocol`` (and docs/own-task.md). Subclassing ``Task``
  supplies those defaults as class attributes.
* Devices: the runtimes move the model and every batch to the run's device
  (``gossamer.devices``); ``evaluate`` receives the model there and moves its
  own validation data to ``next(model.parameters()).device``, as the built-in
  tasks do. Shards hand out CPU batches.

This package imports only ``gossamer.errors`` from gossamer.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import torch

from gossamer.errors import ConfigError
from gossamer.seeding import derive_seed
from gossamer.seeding import generator as torch_generator

__all__ = ["TASK_NAMES", "Shard", "Task", "make_task", "derive_seed", "torch_generator"]

TASK_NAMES: tuple[str, ...] = ("charlm", "digits", "quadratic")


class Shard(ABC):
    """One peer's slice of the training data.

    ``next_batch()`` returns the next batch of a deterministic, endless stream
    seeded by ``(seed, peer)``: a tensor, or tuples, lists or dicts of tensors
    (the runtimes move every tensor in it to the run's device), of whatever
    type ``Task.loss`` of the same task takes. ``next_batch`` is the only
    member the runtimes use; the built-in shards also set ``num_samples``
    (training samples the shard holds: characters, images, rows) and
    ``samples_per_batch`` (samples in one batch).
    """

    peer: int
    n_peers: int
    num_samples: int
    samples_per_batch: int

    @abstractmethod
    def next_batch(self) -> Any:
        """The next batch; its type is what ``Task.loss`` of the same task takes."""


class Task(ABC):
    """A workload: model factory, loss, data shards and a fixed validation set.

    Subclass it for your own task (docs/own-task.md) and implement the four
    methods; the attributes below are optional, with these defaults:

    * ``name``: what results call the task; absent, the class name.
    * ``metric_name``: the name of ``evaluate``'s second value (e.g.
      ``"val_accuracy"``); ``None``: the task has no metric and ``evaluate``
      returns the validation loss alone (results name it ``"val_loss"``).
    * ``metric_higher_is_better``: ``None`` means True with a metric, False without.
    * ``samples_per_batch``: samples in one batch; ``None``: unknown.
    * ``loss_unit``: what the loss measures (``"nats per character"``), or "".
    * ``default_steps`` / ``default_inner_steps``: a run's ``steps`` and
      ``inner_steps`` when it gives none; ``None``: a run must give
      ``steps``, and each algorithm uses its own default ``inner_steps``.
    """

    name: str
    metric_name: str | None = None
    metric_higher_is_better: bool | None = None
    samples_per_batch: int | None = None
    default_steps: int | None = None
    default_inner_steps: int | None = None
    loss_unit: str = ""
    """What the loss measures, for axis labels and table headers (e.g.
    ``"nats per character"``); empty if the task does not say."""

    @abstractmethod
    def make_model(self, seed: int) -> torch.nn.Module:
        """A fresh model on the CPU; same seed -> bit-identical parameters.

        For a user's task the runtimes call it with torch's global RNG
        seeded with ``seed`` (inside ``torch.random.fork_rng``), so plain
        ``nn.Linear`` initialisation is deterministic too. It must have at
        least one trainable floating-point parameter."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Scalar mean loss of ``model`` on ``batch`` (a one-element floating
        tensor), differentiable; ``model`` and ``batch`` are on the run's device."""

    @abstractmethod
    def shard(self, peer: int, n_peers: int, *, seed: int, label_flip: bool = False) -> Shard:
        """Peer ``peer``'s shard out of ``n_peers`` (an object with
        ``next_batch()``); iid or non-iid per the config.

        ``label_flip=True`` poisons the shard (for simulating a Byzantine peer)
        where the task defines what that means; tasks where it is meaningless
        raise ``ConfigError``. A user's task may leave the keyword out: it is
        passed only for the ``labelflip`` attack. Raise ``ShardError`` when
        the data cannot be split over ``n_peers``.
        """

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> Any:
        """``(val_loss, val_metric)`` (two floats) on the fixed validation set,
        deterministic; a task with ``metric_name = None`` returns ``val_loss``
        alone. ``model`` is in eval mode, on the run's device."""


def check_peer(peer: int, n_peers: int, seed: int) -> None:
    """Raise ``ConfigError`` unless ``0 <= peer < n_peers`` and seed is an int."""
    if isinstance(n_peers, bool) or not isinstance(n_peers, int) or n_peers < 1:
        raise ConfigError(f"n_peers must be an int >= 1, got {n_peers!r}")
    if isinstance(peer, bool) or not isinstance(peer, int) or not 0 <= peer < n_peers:
        raise ConfigError(f"peer must be an int in [0, {n_peers}), got {peer!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")


def check_seed(seed: int) -> None:
    """Raise ``ConfigError`` unless ``seed`` is an int (bools rejected)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")


_C = TypeVar("_C")


def _type_ok(value: object, hint: object) -> bool:
    """Whether ``value`` fits the simple annotation ``hint`` (bool is not int)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _accepts_int(hint: object) -> bool:
    """Whether the annotation ``hint`` admits a plain ``int``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_int(h) for h in typing.get_args(hint))
    return hint is int


def config_from_options(cls: type[_C], task_name: str, options: dict[str, Any]) -> _C:
    """Build the frozen config dataclass ``cls`` from keyword ``options``.

    Unknown keys raise ``ConfigError`` naming them and the accepted ones; a
    value of the wrong type raises ``ConfigError`` naming the option and
    value. Range checks live in each config's ``__post_init__``.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    accepted = sorted(f.name for f in fields)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for task {task_name!r}; "
            f"accepted: {', '.join(accepted)}"
        )
    hints = typing.get_type_hints(cls)
    coerced: dict[str, Any] = {}
    for key, value in options.items():
        hint = hints[key]
        if hint == tuple[int, ...]:
            if isinstance(value, list):
                value = tuple(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                value = (value,)
        if not _type_ok(value, hint):
            raise ConfigError(
                f"task {task_name!r}: option {key}={value!r} has the wrong type; expected {hint}"
            )
        if isinstance(value, int) and not isinstance(value, bool) and not _accepts_int(hint):
            value = float(value)  # an int where only a float is declared
        coerced[key] = value
    return cls(**coerced)


def make_task(name: str, **options: Any) -> Task:
    """Build the task ``name`` (one of ``TASK_NAMES``) with config ``options``."""
    if name == "charlm":
        from gossamer.tasks.charlm import CharLMTask

        return CharLMTask.from_options(**options)
    if name == "digits":
        from gossamer.tasks.digits import DigitsTask

        return DigitsTask.from_options(**options)
    if name == "quadratic":
        from gossamer.tasks.quadratic import QuadraticTask

        return QuadraticTask.from_options(**options)
    raise ConfigError(f"unknown task {name!r}; accepted: {', '.join(TASK_NAMES)}")


class _ConfiguredTask(Task):
    """Helper base: tasks built from a frozen config dataclass ``Config``."""

    Config: ClassVar[type]

    @classmethod
    def from_options(cls, **options: Any) -> Task:
        return cls(config_from_options(cls.Config, cls.name, options))  # type: ignore[call-arg]

    def __init__(self, config: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

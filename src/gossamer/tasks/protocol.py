"""A user's own task: the protocol, its checks, and the adapter the runtimes use.

A task is any object with four methods (subclassing ``gossamer.Task`` is
optional; it only supplies the defaults below)::

    make_model(seed: int) -> torch.nn.Module        # same seed -> same parameters
    loss(model, batch) -> torch.Tensor              # scalar, differentiable
    shard(peer: int, n_peers: int, *, seed: int)    # -> an object with next_batch()
    evaluate(model) -> (val_loss, val_metric)       # or val_loss alone: a task without a metric

and these optional attributes:

=====================  =========================================  ==========================
attribute              meaning                                    default
=====================  =========================================  ==========================
``name``               what results, tables and traces call it     the class name
``metric_name``        the name of ``evaluate``'s second value     none: ``evaluate`` returns
                       (e.g. ``"val_accuracy"``)                   the loss alone, reported as
                                                                   the metric ``"val_loss"``
``metric_higher_is_``  whether a larger metric is better           True with a metric, False
``better``                                                         without
``samples_per_batch``  samples in one batch (for samples/peer)     unknown (reported as null)
``loss_unit``          what the loss measures, for axis labels     ``""``
``default_steps``      local steps per peer when a run gives none  none: the run must give
                                                                   ``steps``
``default_inner_steps``  H when a run gives none                   each algorithm's default
=====================  =========================================  ==========================

``shard`` needs a ``label_flip`` keyword only for the ``labelflip`` attack
(the simulator passes ``label_flip=True`` to the Byzantine peers' shards and
never passes it otherwise).

Contract of this module:

* ``check_task(obj)`` checks the shape of the object without calling its
  code: the four methods exist, are callable and accept the arguments
  gossamer passes (where their signature can be read), the optional attributes
  have the right types. It raises ``TaskError`` naming the task and the
  first thing wrong (a class passed instead of an instance, a missing
  method, ``metric_name = 3`` ...).
* ``as_task(obj)`` returns a built-in task unchanged and wraps anything else
  in a ``UserTask``, a ``Task`` whose attributes are the resolved ones
  (defaults filled in) and whose methods call the user's and check what
  comes back, raising ``TaskError`` naming the method, what was expected and
  what was found: ``make_model`` must return an ``nn.Module`` with at least
  one trainable floating-point parameter; ``loss`` a one-element floating
  tensor (that requires grad whenever grad mode is on); ``shard`` an object
  with a callable ``next_batch``; ``evaluate`` one number (no metric) or a
  pair of numbers (with ``metric_name``). A Python number, a numpy scalar or
  a one-element tensor counts as a number.
* ``UserTask.make_model(seed)`` runs the user's factory with torch's global
  RNG seeded with ``seed`` inside ``torch.random.fork_rng``: a model built
  with plain ``nn.Linear(...)`` (global RNG) is the same on every peer, and
  the caller's global RNG state is left untouched.
* ``task_name(obj)`` is the name results carry: ``obj.name`` or the class
  name, never a built-in's name for a user's task.

This module imports only ``gossamer.errors`` from gossamer.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import torch

from gossamer.errors import TaskError

from .base import Shard, Task, _ConfiguredTask

__all__ = ["REQUIRED_METHODS", "UserTask", "as_task", "check_task", "is_builtin", "supports_label_flip", "task_name"]

REQUIRED_METHODS = ("make_model", "loss", "shard", "evaluate")

#: how gossamer calls each method (placeholder arguments), and that call's shape for the error message
_CALLS: tuple[tuple[str, tuple[tuple[Any, ...], dict[str, Any]], str], ...] = (
    ("make_model", ((0,), {}), "make_model(seed)"),
    ("loss", ((None, None), {}), "loss(model, batch)"),
    ("shard", ((0, 1), {"seed": 0}), "shard(peer, n_peers, *, seed)"),
    ("evaluate", ((None,), {}), "evaluate(model)"),
)

_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "metric_name": (str,),
    "metric_higher_is_better": (bool,),
    "samples_per_batch": (int,),
    "loss_unit": (str,),
    "default_steps": (int,),
    "default_inner_steps": (int,),
}


def is_builtin(obj: Any) -> bool:
    """Whether ``obj`` is one of the built-in tasks (charlm, digits, quadratic)."""
    return isinstance(obj, _ConfiguredTask)


def task_name(obj: Any) -> str:
    """``obj.name`` when it is set, else the class name (see the module docstring)."""
    if isinstance(obj, str):
        return obj
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name.strip() else type(obj).__name__


def check_task(obj: Any) -> None:
    """Raise ``TaskError`` unless ``obj`` has the task protocol's shape (module docstring)."""
    if isinstance(obj, type):
        raise TaskError(f"task is the class {obj.__name__}, not a task object: pass {obj.__name__}(...)")
    if is_builtin(obj):
        return
    label = f"task {task_name(obj)!r}"
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise TaskError(f"{label} ({type(obj).__name__}) has no method {', '.join(missing)}; "
                        f"a task needs {', '.join(REQUIRED_METHODS)} (docs/own-task.md)")
    for method, (args, kwargs), shape in _CALLS:
        try:
            signature = inspect.signature(getattr(obj, method))
        except (TypeError, ValueError):  # no signature to read (a builtin or C callable): let the call decide
            continue
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TaskError(f"{label}: {method} must accept {shape} ({exc})") from None
    name = getattr(obj, "name", None)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TaskError(f"task {type(obj).__name__}: name must be a non-empty string, got {name!r}")
    for attr, kinds in _OPTIONAL_TYPES.items():
        value = getattr(obj, attr, None)
        if value is None:
            continue
        if not isinstance(value, kinds) or (kinds == (int,) and isinstance(value, bool)):
            raise TaskError(f"{label}: {attr} must be a {' or '.join(k.__name__ for k in kinds)} (or absent), got {value!r}")
        if kinds == (int,) and value <= 0:
            raise TaskError(f"{label}: {attr} must be a positive integer, got {value!r}")
    if getattr(obj, "metric_name", None) == "":
        raise TaskError(f"{label}: metric_name must be a non-empty string, or absent for a task without a metric")


def supports_label_flip(obj: Any) -> bool:
    """Whether ``obj.shard`` takes a ``label_flip`` keyword (the label-flip attack needs it)."""
    if is_builtin(obj):
        return obj.name == "digits"
    target = obj.task if isinstance(obj, UserTask) else obj
    try:
        params = inspect.signature(target.shard).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin or C callable): let the call decide
        return True
    return "label_flip" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def as_task(obj: Any) -> Task:
    """A built-in task as it is; anything else checked and wrapped in ``UserTask``."""
    check_task(obj)
    if is_builtin(obj) or isinstance(obj, UserTask):
        return obj
    return UserTask(obj)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is one number (Python, numpy or a one-element tensor), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            return None
        return float(value.detach().reshape(()).cpu())
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


class UserTask(Task):
    """A user's task behind the ``Task`` interface, with every answer checked
    (see the module docstring). ``task`` is the user's object."""

    def __init__(self, task: Any) -> None:
        check_task(task)
        self.task = task
        self.name = task_name(task)
        given = getattr(task, "metric_name", None)
        #: whether ``evaluate`` returns a (loss, metric) pair
        self.has_metric = given is not None
        self.metric_name = given if given is not None else "val_loss"
        better = getattr(task, "metric_higher_is_better", None)
        self.metric_higher_is_better = better if better is not None else self.has_metric
        self.samples_per_batch = getattr(task, "samples_per_batch", None)
        self.loss_unit = getattr(task, "loss_unit", None) or ""
        self.default_steps = getattr(task, "default_steps", None)
        self.default_inner_steps = getattr(task, "default_inner_steps", None)

    def _fail(self, what: str) -> TaskError:
        return TaskError(f"task {self.name!r}: {what}")

    def make_model(self, seed: int) -> torch.nn.Module:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model = self.task.make_model(seed)
        if not isinstance(model, torch.nn.Module):
            raise self._fail(f"make_model({seed}) must return a torch.nn.Module, returned {_describe(model)}")
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise self._fail(f"make_model({seed}) returned a {type(model).__name__} with no trainable parameters")
        bad = [p.dtype for p in trainable if not p.is_floating_point()]
        if bad:
            raise self._fail(f"make_model({seed}): trainable parameters must be floating point, found {bad[0]}")
        return model

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        out = self.task.loss(model, batch)
        if not isinstance(out, torch.Tensor) or out.numel() != 1 or not out.is_floating_point():
            raise self._fail(f"loss(model, batch) must return a scalar floating-point tensor, returned {_describe(out)}")
        if torch.is_grad_enabled() and not out.requires_grad:
            raise self._fail("loss(model, batch) returned a tensor that does not require grad: "
                             "compute it from the model's output, without .item(), .detach() or torch.no_grad()")
        return out

    def shard(self, peer: int, n_peers: int, *, seed: int, label_flip: bool = False) -> Shard:
        if label_flip:
            if not supports_label_flip(self):
                raise self._fail("the label-flip attack needs shard(peer, n_peers, *, seed, label_flip) to accept label_flip")
            shard = self.task.shard(peer, n_peers, seed=seed, label_flip=True)
        else:
            shard = self.task.shard(peer, n_peers, seed=seed)
        if not callable(getattr(shard, "next_batch", None)):
            raise self._fail(f"shard({peer}, {n_peers}, seed={seed}) must return an object with a next_batch() method, "
                             f"returned {_describe(shard)}")
        return shard  # type: ignore[no-any-return]

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        out = self.task.evaluate(model)
        if self.has_metric:
            pair = tuple(out) if isinstance(out, (tuple, list)) else None
            if pair is None or len(pair) != 2 or _number(pair[0]) is None or _number(pair[1]) is None:
                raise self._fail(f"evaluate(model) must return (val_loss, {self.metric_name}), two numbers, "
                                 f"returned {_describe(out)}")
            return _number(pair[0]), _number(pair[1])  # type: ignore[return-value]
        loss = _number(out)
        if loss is None:
            if isinstance(out, (tuple, list)) and len(out) == 2:
                raise self._fail("evaluate(model) returned two values but the task has no metric_name: "
                                 "set metric_name (e.g. 'val_accuracy'), or return the loss alone")
            raise self._fail(f"evaluate(model) must return the validation loss (a number), returned {_describe(out)}")
        return loss, loss

    def __repr__(self) -> str:
        return f"<task {self.name!r}: {type(self.task).__name__}>"

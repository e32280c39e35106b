"""Where models run: one device string, checked once, used by every runtime.

Contract:

* ``resolve_device(spec)`` turns ``None``, ``"cpu"``, ``"cuda"`` or
  ``"cuda:N"`` (or a ``torch.device``) into a ``torch.device``, or raises
  ``ConfigError`` with one line naming the problem: an unknown or unsupported
  device type (``mps``, ``meta`` ...), CUDA asked for where this torch build
  or this machine has none, or a GPU index past the last one. It never
  allocates anything on the device. ``"cuda"`` resolves to the current CUDA
  device with its index (``cuda:0``), so every peer of a run names the same one.
* ``device_arg`` is the argparse type of ``--device`` (``gossamer simulate
  --device`` and ``gossamer peer --device``): the same checks at parse time,
  so a bad device is one error line and exit status 2 before any work;
  ``add_device_argument(parser)`` adds the option with its help text.
* ``to_device(batch, device)`` moves every tensor in a batch (a tensor, or
  tuples, lists and dicts of them, nested; namedtuples keep their type) to
  ``device`` and leaves anything else as it is. Tensors already there are
  returned as they are (no copy).
* ``module_device(model)`` is the device of a model's first parameter (or
  buffer); CPU for a model with neither.

What stays on the CPU whatever the device: everything that crosses the wire
(codecs encode to CPU bytes and decode to CPU tensors; the collectives of
``gossamer.comm`` return results on the device and dtype of their inputs),
state hashes, checkpoints and saved models.

torch is imported on first use, so importing this module is cheap (the
command line imports it to build its parser).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ACCEPTED", "DEVICE_HELP", "add_device_argument", "device_arg", "module_device", "resolve_device", "to_device"]

#: What ``resolve_device`` accepts, for error messages and help.
ACCEPTED = "cpu, cuda, cuda:N"

DEVICE_HELP = ("where the model runs: cpu (default), cuda or cuda:N; the wire stays CPU bytes. "
               "Only the CPU path is tested on this project's machines (docs/concepts.md, Devices)")


def resolve_device(spec: Any = None) -> "torch.device":
    """The ``torch.device`` named by ``spec`` (``None``: CPU); see the module docstring.

    Raises ``ConfigError`` (one line) for an unknown or unsupported device, or
    CUDA where none is available."""
    import torch

    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, torch.device):
        dev = spec
    elif isinstance(spec, str):
        text = spec.strip().lower()
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise ConfigError(f"unknown device {spec!r}; accepted: {ACCEPTED}") from None
    else:
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda:0', got {spec!r}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"device {str(spec)!r} is not supported; accepted: {ACCEPTED}")
    if torch.version.cuda is None:
        raise ConfigError(f"device {str(spec)!r} is not available: this torch build ({torch.__version__}) "
                          f"has no CUDA support; use cpu, or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {str(spec)!r} is not available: no CUDA GPU is visible on this machine "
                          f"(torch.cuda.is_available() is False); use cpu")
    count = torch.cuda.device_count()
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if not 0 <= index < count:
        raise ConfigError(f"device {str(spec)!r} is not available: this machine has {count} CUDA "
                          f"device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def device_arg(text: str) -> str:
    """argparse type of ``--device``: the canonical device string (``"cpu"``,
    ``"cuda:0"`` ...) or ``argparse.ArgumentTypeError`` (one line, exit 2)."""
    try:
        return str(resolve_device(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_argument(parser: argparse.ArgumentParser, *, help: str = DEVICE_HELP) -> None:
    """Add ``--device`` (type ``device_arg``, default ``None`` meaning CPU) to ``parser``."""
    parser.add_argument("--device", type=device_arg, default=None, metavar="DEVICE", help=help)


def to_device(batch: Any, device: "torch.device | str") -> Any:
    """``batch`` with every tensor in it on ``device`` (see the module docstring)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, tuple):
        items = [to_device(b, device) for b in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    if isinstance(batch, list):
        return [to_device(b, device) for b in batch]
    if isinstance(batch, Mapping):
        moved = {k: to_device(v, device) for k, v in batch.items()}
        try:
            return type(batch)(moved)
        except TypeError:  # a mapping type that cannot be built from a dict
            return moved
    return batch


def module_device(model: "torch.nn.Module") -> "torch.device":
    """The device of ``model``'s first parameter (else first buffer; else CPU)."""
    import torch

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")

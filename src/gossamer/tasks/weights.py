"""A trained model on disk: safetensors that plain torch loads.

Contract:

* ``save_model(model, path, metadata=None)`` writes ``model.state_dict()``
  (parameters and persistent buffers, every dtype as it is) to ``path`` as
  safetensors. Tensors are copied to the CPU and made contiguous; tied
  weights (one tensor under two names) are stored once per name, so the file
  holds exactly the state dict's keys. Afterwards::

      model = task.make_model(seed)
      model.load_state_dict(safetensors.torch.load_file(path))   # strict

  restores every value bit for bit. The file is written to a temporary
  name next to ``path`` and renamed into place, so a crash never leaves a
  half-written model under ``path``. ``metadata`` (str -> str) goes into the
  file's header next to ``{"format": "pt"}`` (what transformers expects).
* Errors: an ``OSError`` from the file system as it is (the command lines
  turn it into one line); a metadata value that is not a string raises
  ``ConfigError``.

This module imports only ``gossamer.errors`` from gossamer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gossamer.errors import ConfigError

__all__ = ["save_model"]


def save_model(model: torch.nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` to ``path`` as safetensors; returns the path
    written. See the module docstring."""
    from safetensors.torch import save_file

    meta = {"format": "pt"}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"safetensors metadata must map strings to strings, got {k!r}: {v!r}")
        meta[k] = v
    target = Path(path).expanduser()
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target

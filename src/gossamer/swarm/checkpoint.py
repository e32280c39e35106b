"""Peer checkpoints: an algorithm's ``state_dict`` on disk, safetensors for the
tensors and JSON for everything else.

Contract:

- ``save_checkpoint(folder, state, meta)`` writes ``folder/state.safetensors``
  (every tensor of ``state``, under its path in the nested structure, e.g.
  ``shared.tensors.0`` or ``local.optimizers.inner.state.3.exp_avg``) and
  ``folder/state.json`` (``{"version": 1, "meta": meta, "state": structure}``,
  where each tensor is ``{"__tensor__": path}``). Both are written to
  temporary names and renamed, the JSON last, so a crash leaves either the
  previous checkpoint or the new one, never a mix (the JSON names the
  tensor file it belongs to).
- ``load_checkpoint(folder)`` returns ``(state, meta)`` with the same
  structure and bit-identical tensors; a missing, truncated or inconsistent
  checkpoint raises ``ConfigError`` naming the file.
- ``meta`` holds the swarm round the state was committed at and its agreed
  hash; the peer checks the loaded state against that hash before using it.

Nothing is pickled: the state's non-tensor leaves must be JSON values (ints,
floats, strings, bools, None, lists, string-keyed maps); optimizer state's
integer keys are kept as ``{"__int_keys__": ...}``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

VERSION = 1


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if obj and all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {"__int_keys__": [[k, _flatten(v, f"{path}.{k}", tensors)] for k, v in obj.items()]}
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ConfigError(f"checkpoint: key {k!r} at {path} is neither text nor an integer")
            out[k] = _flatten(v, f"{path}.{k}", tensors)
        return out
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ConfigError(f"checkpoint: cannot store a {type(obj).__name__} at {path}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in tensors:
                raise ConfigError(f"checkpoint {where}: tensor {key!r} is missing from the tensor file")
            return tensors[key]
        if set(obj) == {"__int_keys__"}:
            return {int(k): _unflatten(v, tensors, where) for k, v in obj["__int_keys__"]}
        return {k: _unflatten(v, tensors, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, where) for v in obj]
    return obj


def save_checkpoint(folder: str | os.PathLike[str], state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` (an ``Algorithm.state_dict()``) and ``meta`` to ``folder``; returns the JSON path."""
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, "state", tensors)
    tag = uuid.uuid4().hex[:12]
    tensor_name = f"state-{tag}.safetensors"
    tmp_tensors = root / f".{tensor_name}.tmp"
    save_file(tensors, str(tmp_tensors))
    os.replace(tmp_tensors, root / tensor_name)
    doc = {"version": VERSION, "tensors": tensor_name, "meta": meta, "state": structure}
    tmp_json = root / ".state.json.tmp"
    tmp_json.write_text(json.dumps(doc))
    with open(tmp_json, "rb") as f:
        os.fsync(f.fileno())
    old = None
    if (root / "state.json").exists():
        try:
            old = json.loads((root / "state.json").read_text()).get("tensors")
        except (OSError, ValueError):
            old = None
    os.replace(tmp_json, root / "state.json")
    if old and old != tensor_name:
        (root / old).unlink(missing_ok=True)
    return root / "state.json"


def load_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, meta)`` from ``folder`` (see the module docstring)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(folder)
    path = root / "state.json"
    if not path.is_file():
        raise ConfigError(f"no checkpoint in {root}: {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"checkpoint {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("tensors"), str):
        raise ConfigError(f"checkpoint {path} has an unknown format (expected version {VERSION})")
    tensor_path = root / Path(doc["tensors"]).name
    try:
        tensors = load_file(str(tensor_path))
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"checkpoint tensors {tensor_path} cannot be read: {exc}") from None
    state = _unflatten(doc["state"], tensors, str(path))
    meta = doc.get("meta") or {}
    if not isinstance(state, dict) or "shared" not in state or not isinstance(meta, dict):
        raise ConfigError(f"checkpoint {path} holds no algorithm state")
    return state, meta

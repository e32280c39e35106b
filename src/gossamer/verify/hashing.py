"""State hashing for bit parity.

Contract: ``state_hash(tensors)`` is a BLAKE2b-256 hex digest over the dtype,
shape and raw little-endian bytes of each tensor, in order. Two peers get the
same digest if and only if (up to hash collisions) their shared states are
bit-identical. Equal values with different dtypes or shapes hash differently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch


def state_hash(tensors: Iterable[torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """BLAKE2b-256 of the tensors' dtypes, shapes and bytes, in order, and of
    ``meta`` (plain JSON-able counters, hashed as sorted-key JSON) when given."""
    h = hashlib.blake2b(digest_size=32)
    if meta is not None:
        h.update(b"meta|" + json.dumps(dict(meta), sort_keys=True, separators=(",", ":")).encode() + b"|")
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else t
        data = raw.numpy().tobytes() if t.numel() else b""
        if sys.byteorder != "little" and t.element_size() > 1:  # pragma: no cover - big-endian hosts
            data = t.numpy().byteswap().tobytes()
        h.update(data)
    return h.hexdigest()


def combined_hash(hashes: Iterable[str]) -> str:
    """BLAKE2b-256 of hex state hashes in the given order (the swarm's rank
    order): one digest for the states of every peer of an algorithm without
    bit parity. The coordinator commits such rounds with this digest."""
    return hashlib.blake2b("".join(hashes).encode(), digest_size=32).hexdigest()

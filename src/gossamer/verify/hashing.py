"""State hashing for bit parity.

Contract: ``state_hash(tensors)`` is a BLAKE2b-256 hex digest over the dtype,
shape and raw little-endian bytes of each tensor, in order. Two peers get the
same digest if and only if (up to hash collisions) their shared states are
bit-identical. Equal values with different dtypes or shapes hash differently.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable

import torch


def state_hash(tensors: Iterable[torch.Tensor]) -> str:
    """BLAKE2b-256 of the tensors' dtypes, shapes and bytes, in order."""
    h = hashlib.blake2b(digest_size=32)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        raw = t.view(torch.uint8) if t.numel() else t
        data = raw.numpy().tobytes() if t.numel() else b""
        if sys.byteorder != "little" and t.element_size() > 1:  # pragma: no cover - big-endian hosts
            data = t.numpy().byteswap().tobytes()
        h.update(data)
    return h.hexdigest()

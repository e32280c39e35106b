"""Stable seed derivation (leaf module).

Contract: ``derive_seed(*parts)`` maps any tuple of ints and strings to a
63-bit seed that is the same on every machine and in every process (unlike
Python's ``hash``, which is salted per process). Use it for every generator
that must agree across peers or across runs.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed determined only by ``parts``."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))

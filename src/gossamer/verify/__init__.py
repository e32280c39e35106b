"""State hashes and parity checks."""

from .hashing import state_hash

__all__ = ["state_hash"]

"""State hashes and parity checks."""

from .hashing import combined_hash, state_hash

__all__ = ["combined_hash", "state_hash"]

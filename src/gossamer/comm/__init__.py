"""Collectives over any transport: see ``collectives``."""

from .collectives import Communicator, CollectiveStats, chunk_bounds, flatten, unflatten

__all__ = ["Communicator", "CollectiveStats", "chunk_bounds", "flatten", "unflatten"]

"""Collectives over any transport: see ``collectives``."""

from typing import Any

from .collectives import CollectiveHandle, Communicator, CollectiveStats, chunk_bounds, flatten, unflatten


def make_run_codec(spec: str) -> Any:
    """The run's payload codec for ``spec`` ("none"/"fp32": raw fp32, None);
    resolved once per run and handed to the ``Communicator``, the only place
    that calls it. A bad spec raises ``ConfigError``."""
    from ..codecs import make_codec

    return None if spec in ("none", "fp32") else make_codec(spec)


__all__ = ["CollectiveHandle", "Communicator", "CollectiveStats", "chunk_bounds", "flatten", "make_run_codec", "unflatten"]

"""The error hierarchy of gossamer.

Contract: every error gossamer raises on purpose is a ``GossamerError``. The
subclasses say which layer found the fault. Messages state what was expected,
what was found, and from which peer or file.

This module is a leaf (it imports nothing), so every layer, ``codecs`` and
``aggregate`` included, may import it without breaking the layering rule.
"""

from __future__ import annotations


class GossamerError(Exception):
    """Base class of every error gossamer raises deliberately."""


class ConfigError(GossamerError, ValueError):
    """A configuration value is invalid (bad spec string, count, key...)."""


class CodecError(GossamerError, ValueError):
    """A payload could not be encoded or failed validation while decoding."""


class AggregationError(GossamerError, ValueError):
    """Contributions could not be aggregated (wrong shapes, too few honest)."""


class ProtocolError(GossamerError):
    """A frame or message broke the wire protocol."""


class PeerError(GossamerError):
    """A peer failed, vanished or misbehaved during an operation."""


class TaskError(GossamerError):
    """A workload could not be built (missing data, bad shard spec)."""


class ShardError(TaskError, ConfigError):
    """The training data cannot be split as asked (more peers than training
    files, samples or rows): a workload fault that is also a configuration
    error, so the command line answers it with one line and exit status 2."""

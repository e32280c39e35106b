"""Robust aggregation of n contributions, in chunked generator form.

Pure tensor code: imports nothing of gossamer except :mod:`gossamer.errors`.
Every rule can run on one chunk of columns inside a butterfly all-reduce,
getting whole-vector quantities (distances, norms) as sums of chunk-wise
partial statistics; see :mod:`gossamer.aggregate.base` for the protocol and
:mod:`gossamer.aggregate.registry` for the spec grammar.

Quick use::

    agg = make_aggregator("nnm+cclip:0.5", f=2)
    out = agg(x)                              # x: (n, d) -> (d,)
    res = run_local(agg.steps(x))             # AggResult(value, dropped)
    parts = run_chunked(agg, x.split(64, 1))  # what the network does
"""

from __future__ import annotations

from gossamer.aggregate.base import AggResult, Aggregator, Steps, run_chunked, run_local
from gossamer.aggregate.bucketing import Bucketing
from gossamer.aggregate.cclip import CenteredClip
from gossamer.aggregate.geomed import GeoMed
from gossamer.aggregate.krum import Krum
from gossamer.aggregate.mean import Mean
from gossamer.aggregate.median import Median
from gossamer.aggregate.nnm import NNM
from gossamer.aggregate.registry import (
    AGGREGATOR_NAMES,
    PREAGGREGATOR_NAMES,
    make_aggregator,
)
from gossamer.aggregate.trimmed_mean import TrimmedMean

__all__ = [
    "AGGREGATOR_NAMES",
    "PREAGGREGATOR_NAMES",
    "AggResult",
    "Aggregator",
    "Bucketing",
    "CenteredClip",
    "GeoMed",
    "Krum",
    "Mean",
    "Median",
    "NNM",
    "Steps",
    "TrimmedMean",
    "make_aggregator",
    "run_chunked",
    "run_local",
]

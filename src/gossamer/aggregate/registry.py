"""Spec strings -> aggregators.

Grammar (whitespace-free, case-sensitive)::

    spec      := (pre "+")* rule
    pre       := "nnm" | "bucketing:" S            S: int >= 1
    rule      := "mean" | "median" | "trimmed_mean" | "krum"
               | "multikrum" [":" m]               m: int >= 1 (default n - f)
               | "geomed" [":" iters]              iters: int >= 1 (default 16)
               | "cclip" [":" tau [":" iters]]     tau: float > 0 (1.0), iters: int >= 1 (3)

Pre-aggregators apply left to right: ``nnm+bucketing:2+krum`` mixes first,
then buckets the mixed rows, then runs Krum on the bucket means.

Contract: ``make_aggregator(spec, f, seed=...)`` returns a fresh
:class:`~gossamer.aggregate.base.Aggregator` or raises
:class:`~gossamer.errors.ConfigError` naming the accepted forms. It does not
know ``n``; call ``agg.check(n)`` to validate the bound early.
"""

from __future__ import annotations

from gossamer.aggregate.base import Aggregator
from gossamer.aggregate.bucketing import Bucketing
from gossamer.aggregate.cclip import CenteredClip
from gossamer.aggregate.geomed import GeoMed
from gossamer.aggregate.krum import Krum
from gossamer.aggregate.mean import Mean
from gossamer.aggregate.median import Median
from gossamer.aggregate.nnm import NNM
from gossamer.aggregate.trimmed_mean import TrimmedMean
from gossamer.errors import ConfigError

#: The aggregation rules (what may end a spec).
AGGREGATOR_NAMES: tuple[str, ...] = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "geomed",
    "cclip",
)
#: The pre-aggregators (what may prefix a rule with "+").
PREAGGREGATOR_NAMES: tuple[str, ...] = ("nnm", "bucketing")

ACCEPTED_FORMS = (
    "mean, median, trimmed_mean, krum, multikrum[:m], geomed[:iters], "
    "cclip[:tau[:iters]], and pre-aggregators nnm+RULE, bucketing:S+RULE"
)


def _bad(spec: str, why: str) -> ConfigError:
    return ConfigError(f"bad aggregator spec {spec!r}: {why}; accepted: {ACCEPTED_FORMS}")


def _int(spec: str, text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(spec, f"{what} must be an int, got {text!r}") from None
    if value < 1:
        raise _bad(spec, f"{what} must be >= 1, got {value}")
    return value


def _rule(spec: str, part: str, f: int) -> Aggregator:
    name, *args = part.split(":")
    if name in ("mean", "median", "trimmed_mean", "krum") and args:
        raise _bad(spec, f"{name} takes no parameters")
    if name == "mean":
        return Mean(f)
    if name == "median":
        return Median(f)
    if name == "trimmed_mean":
        return TrimmedMean(f)
    if name == "krum":
        return Krum(f)
    if name == "multikrum":
        if len(args) > 1:
            raise _bad(spec, "multikrum takes at most one parameter m")
        return Krum(f, _int(spec, args[0], "multikrum m") if args else None, multi=True)
    if name == "geomed":
        if len(args) > 1:
            raise _bad(spec, "geomed takes at most one parameter iters")
        return GeoMed(f, _int(spec, args[0], "geomed iters")) if args else GeoMed(f)
    if name == "cclip":
        if len(args) > 2:
            raise _bad(spec, "cclip takes at most tau and iters")
        tau = 1.0
        if args:
            try:
                tau = float(args[0])
            except ValueError:
                raise _bad(spec, f"cclip tau must be a number, got {args[0]!r}") from None
            if not (tau > 0 and tau != float("inf")):
                raise _bad(spec, f"cclip tau must be a finite number > 0, got {args[0]!r}")
        iters = _int(spec, args[1], "cclip iters") if len(args) > 1 else 3
        return CenteredClip(f, tau, iters)
    if name in PREAGGREGATOR_NAMES:
        raise _bad(spec, f"{name} is a pre-aggregator and needs a rule after '+'")
    raise _bad(spec, f"unknown rule {name!r}")


def make_aggregator(spec: str, f: int, *, seed: int = 0) -> Aggregator:
    """Build the aggregator described by ``spec`` tolerating ``f`` Byzantine rows.

    ``seed`` is the default seed of randomised pre-aggregators (bucketing);
    ``steps(chunk, seed=...)`` overrides it per call. All chunk owners of one
    reduction must use the same seed.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"aggregator spec must be a non-empty string, got {spec!r}; accepted: {ACCEPTED_FORMS}")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ConfigError(f"f must be a non-negative int, got {f!r}")
    parts = spec.split("+")
    if any(p == "" for p in parts):
        raise _bad(spec, "empty component")
    agg = _rule(spec, parts[-1], f)
    for part in reversed(parts[:-1]):
        name, *args = part.split(":")
        if name == "nnm":
            if args:
                raise _bad(spec, "nnm takes no parameters")
            agg = NNM(agg)
        elif name == "bucketing":
            if len(args) != 1:
                raise _bad(spec, "bucketing needs exactly one parameter, the bucket size S")
            agg = Bucketing(_int(spec, args[0], "bucketing S"), agg, seed=seed)
        elif name in AGGREGATOR_NAMES:
            raise _bad(spec, f"{name} is a rule and can only come last")
        else:
            raise _bad(spec, f"unknown pre-aggregator {name!r}")
    agg.seed = int(seed)
    return agg

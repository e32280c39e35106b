"""Spec parsing, f bounds (ConfigError with the bound) and non-finite rows."""

from __future__ import annotations

import math

import pytest
import torch

from gossamer.aggregate import (
    AGGREGATOR_NAMES,
    PREAGGREGATOR_NAMES,
    Aggregator,
    make_aggregator,
    run_local,
)
from gossamer.errors import AggregationError, ConfigError


def test_every_name_builds() -> None:
    assert set(AGGREGATOR_NAMES) == {
        "mean", "median", "trimmed_mean", "krum", "multikrum", "geomed", "cclip"
    }
    assert set(PREAGGREGATOR_NAMES) == {"nnm", "bucketing"}
    for name in AGGREGATOR_NAMES:
        agg = make_aggregator(name, 1)
        assert isinstance(agg, Aggregator) and agg.f == 1


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("multikrum:4", "multikrum:4"),
        ("geomed:5", "geomed:5"),
        ("cclip", "cclip:1:3"),
        ("cclip:0.25", "cclip:0.25:3"),
        ("cclip:2:7", "cclip:2:7"),
        ("nnm+bucketing:2+krum", "nnm+bucketing:2+krum"),
    ],
)
def test_spec_parameters(spec: str, canonical: str) -> None:
    assert make_aggregator(spec, 1).spec == canonical


@pytest.mark.parametrize(
    "spec",
    ["", "avg", "krum:3", "multikrum:0", "multikrum:x", "cclip:-1", "cclip:nan", "cclip:1:0",
     "geomed:1:2", "nnm", "nnm+", "bucketing+median", "bucketing:0+median", "median+nnm",
     "nnm:2+mean", "krum+median"],
)
def test_bad_specs_list_accepted_forms(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_aggregator(spec, 1)
    if spec:
        assert "multikrum[:m]" in str(err.value) and "bucketing:S+RULE" in str(err.value)


@pytest.mark.parametrize("f", [-1, 1.5, True])
def test_bad_f(f: object) -> None:
    with pytest.raises(ConfigError, match="f must be"):
        make_aggregator("median", f)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "n", "f", "needle"),
    [
        ("krum", 5, 2, "krum needs n > 2f + 2, got n=5, f=2"),
        ("multikrum", 6, 2, "n > 2f + 2"),
        ("multikrum:6", 7, 2, "m <= n - f"),
        ("median", 4, 2, "median needs n > 2f, got n=4, f=2"),
        ("trimmed_mean", 6, 3, "trimmed_mean needs n > 2f, got n=6, f=3"),
        ("geomed", 2, 1, "n > 2f"),
        ("cclip", 3, 2, "n > 2f"),
        ("nnm+median", 4, 2, "n > 2f for nnm"),
        ("bucketing:2+median", 6, 2, "on n = ceil(n/2) buckets, got n=6, f=2"),
    ],
)
def test_f_too_large_states_the_bound(spec: str, n: int, f: int, needle: str) -> None:
    agg = make_aggregator(spec, f)
    with pytest.raises(ConfigError) as err:
        agg.check(n)
    assert needle in str(err.value)
    with pytest.raises(ConfigError):
        next(agg.steps(torch.zeros(n, 3)))


@pytest.mark.parametrize(
    ("spec", "n", "f"),
    [("krum", 7, 2), ("median", 5, 2), ("trimmed_mean", 3, 1), ("nnm+krum", 5, 1),
     ("bucketing:2+median", 10, 2), ("multikrum:3", 8, 2)],
)
def test_f_at_the_bound_is_accepted(spec: str, n: int, f: int) -> None:
    make_aggregator(spec, f).check(n)


def test_mean_accepts_any_f() -> None:
    make_aggregator("mean", 10).check(3)


@pytest.mark.parametrize(
    "spec", ["mean", "median", "trimmed_mean", "krum", "multikrum", "geomed", "cclip", "nnm+krum", "bucketing:2+median"]
)
def test_non_finite_rows_are_dropped_and_reported(spec: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=g)
    x[1, 2] = math.nan
    x[7, 0] = math.inf
    agg = make_aggregator(spec, 2, seed=1)
    res = run_local(agg.steps(x))
    assert res.dropped == (1, 7)
    assert torch.isfinite(res.value).all()
    clean = x[[0, 2, 3, 4, 5, 6, 8]]
    # dropped rows count against f only as far as the bound needs
    f_eff = min(2, agg.max_f(7))
    torch.testing.assert_close(res.value, make_aggregator(spec, f_eff, seed=1)(clean))


def test_dropped_rows_keep_full_tolerance_when_the_bound_allows() -> None:
    # n=9, f=2, one NaN row: 8 survivors still allow f=2 for the median, so
    # two outliers among the survivors are still tolerated
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [1e9], [1e9], [math.nan]])
    res = run_local(make_aggregator("trimmed_mean", 2).steps(x))
    assert res.dropped == (8,)
    assert res.value.item() == pytest.approx((2 + 3 + 4 + 5) / 4)


def test_dropped_rows_lower_f_only_as_far_as_sound() -> None:
    # krum n=5 f=1: one NaN leaves 4 rows where krum tolerates f=0 = f - 1: fine
    x = torch.tensor([[0.0], [1.0], [2.0], [math.nan], [3.0]])
    assert run_local(make_aggregator("krum", 1).steps(x)).dropped == (3,)
    # three NaNs leave 2 rows: krum needs n > 2 even with f=0
    x = torch.tensor([[0.0], [math.nan], [math.nan], [math.nan], [3.0]])
    with pytest.raises(AggregationError, match="dropped as non-finite"):
        run_local(make_aggregator("krum", 1).steps(x))


def test_all_rows_non_finite() -> None:
    with pytest.raises(AggregationError, match="all 3 contributions"):
        make_aggregator("mean", 0)(torch.full((3, 2), math.nan))


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(3, 2, dtype=torch.int64), "x"])
def test_bad_chunks(bad: object) -> None:
    with pytest.raises(AggregationError):
        next(make_aggregator("median", 1).steps(bad))  # type: ignore[arg-type]

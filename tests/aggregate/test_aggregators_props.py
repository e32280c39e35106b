"""Robustness properties (hypothesis) and permutation invariance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.aggregate import make_aggregator
from gossamer.aggregate.median import coordinate_median

FAST = settings(max_examples=60, deadline=None)


@st.composite
def honest_and_byzantine(draw: st.DrawFn, krum: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Honest rows, Byzantine rows (count <= f), and f satisfying the rule's bound."""
    f = draw(st.integers(0, 3))
    n_min = 2 * f + 3 if krum else 2 * f + 1
    n = draw(st.integers(max(n_min, 1), n_min + 4))
    b = draw(st.integers(0, f))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(n - b, d, generator=g, dtype=torch.float64)
    scale = draw(st.sampled_from([1.0, 1e3, 1e9]))
    byz = (torch.rand(b, d, generator=g, dtype=torch.float64) * 2 - 1) * scale
    return honest, byz, f


@FAST
@given(data=honest_and_byzantine(), rule=st.sampled_from(["median", "trimmed_mean"]))
def test_coordinatewise_rules_stay_in_honest_range(
    data: tuple[torch.Tensor, torch.Tensor, int], rule: str
) -> None:
    honest, byz, f = data
    x = torch.cat([byz, honest])  # Byzantine rows first: index order must not matter
    out = make_aggregator(rule, f)(x)
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())


@FAST
@given(
    data=honest_and_byzantine(krum=True),
    distance=st.sampled_from([1e2, 1e4, 1e8]),
    spread=st.booleans(),
)
def test_krum_selects_an_honest_vector_against_far_outliers(
    data: tuple[torch.Tensor, torch.Tensor, int], distance: float, spread: bool
) -> None:
    honest, byz, f = data
    # Byzantine rows far away: either clustered together (they support each
    # other) or spread out
    far = byz / (float(byz.abs().max()) + 1.0) if spread and byz.numel() else torch.zeros_like(byz)
    byz = far + distance
    x = torch.cat([honest[:1], byz, honest[1:]])
    out = make_aggregator("krum", f)(x)
    assert any(torch.equal(out, h) for h in honest)


@FAST
@given(
    data=honest_and_byzantine(),
    tau=st.sampled_from([1e-3, 0.1, 1.0, 10.0]),
)
def test_one_centered_clipping_iteration_moves_at_most_tau(
    data: tuple[torch.Tensor, torch.Tensor, int], tau: float
) -> None:
    honest, byz, f = data
    x = torch.cat([honest, byz])
    start = coordinate_median(x)
    out = make_aggregator(f"cclip:{tau}:1", f)(x)
    assert float((out - start).norm()) <= tau * (1 + 1e-9)


@FAST
@given(data=honest_and_byzantine())
def test_geomed_stays_near_honest_rows_against_far_outliers(
    data: tuple[torch.Tensor, torch.Tensor, int]
) -> None:
    honest, byz, f = data
    x = torch.cat([honest, byz * 1e6])
    out = make_aggregator("geomed", f)(x)
    # breakdown point 1/2: bounded by the honest cloud's radius times a
    # constant that depends only on the fraction f/n < 1/2
    radius = float((honest - honest.mean(0)).norm(dim=1).max()) + 1.0
    n = x.shape[0]
    assert float((out - honest.mean(0)).norm()) <= radius * (1 + 2 * n)


PERMUTATION_SPECS = [
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "multikrum:2",
    "geomed",
    "cclip:0.5",
    "nnm+mean",
    "nnm+krum",
    "nnm+geomed",
]


@pytest.mark.parametrize("spec", PERMUTATION_SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_permutation_invariant(spec: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 13, generator=g, dtype=torch.float64)
    x[:2] *= 20
    x = x.to(dtype)
    agg = make_aggregator(spec, 2)
    ref = agg(x)
    for trial in range(5):
        perm = torch.randperm(9, generator=g)
        torch.testing.assert_close(agg(x[perm]), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["median", "krum", "geomed", "cclip", "nnm+trimmed_mean", "bucketing:2+krum"])
def test_deterministic(spec: str) -> None:
    x = torch.randn(11, 7, generator=torch.Generator().manual_seed(9))
    agg = make_aggregator(spec, 1, seed=4)
    assert torch.equal(agg(x), agg(x))
    assert torch.equal(agg(x), make_aggregator(spec, 1, seed=4)(x))

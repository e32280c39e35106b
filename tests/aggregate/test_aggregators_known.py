"""Known-answer tests on small hand-made inputs, one or more per rule."""

from __future__ import annotations

import pytest
import torch

from gossamer.aggregate import GeoMed, make_aggregator, run_local
from gossamer.aggregate.bucketing import bucket_means


def col(*values: float) -> torch.Tensor:
    """Contributions of dimension 1: one row per value."""
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_mean() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert torch.equal(make_aggregator("mean", 0)(x), torch.tensor([3.0, 4.0]))


def test_median_odd_and_even() -> None:
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [100.0, -5.0]])
    assert torch.equal(make_aggregator("median", 1)(x), torch.tensor([2.0, 10.0]))
    assert make_aggregator("median", 1)(col(1, 2, 3, 10)).item() == 2.5


def test_trimmed_mean_trims_per_coordinate() -> None:
    x = torch.tensor([[1.0, 50.0], [2.0, 1.0], [3.0, 2.0], [4.0, 3.0], [100.0, -9.0]])
    # column 0 keeps 2,3,4; column 1 keeps 1,2,3
    assert torch.equal(make_aggregator("trimmed_mean", 1)(x), torch.tensor([3.0, 2.0]))
    # f = 0 is the plain mean
    assert make_aggregator("trimmed_mean", 0)(col(1, 2, 6)).item() == 3.0


# points 0, 1, 2, 10, 11 with f = 1: each score sums n - f - 2 = 2 nearest
# squared distances: 0 -> 1+4=5, 1 -> 1+1=2, 2 -> 1+4=5, 10 -> 1+64=65, 11 -> 1+81=82
KRUM_X = col(0, 1, 2, 10, 11)


def test_krum_picks_lowest_score() -> None:
    assert make_aggregator("krum", 1)(KRUM_X).item() == 1.0


def test_multikrum_averages_lowest_scores() -> None:
    assert make_aggregator("multikrum:3", 1)(KRUM_X).item() == 1.0  # {1, 0, 2}
    # default m = n - f = 4 adds 10
    assert make_aggregator("multikrum", 1)(KRUM_X).item() == pytest.approx(13 / 4)


def test_multikrum_breaks_score_ties_by_index() -> None:
    # 0 and 2 both score 5; m = 2 takes row 1 and then the lower index, row 0
    assert make_aggregator("multikrum:2", 1)(KRUM_X).item() == 0.5
    # same with the tied rows swapped in position: now 2 has the lower index
    assert make_aggregator("multikrum:2", 1)(col(2, 1, 0, 10, 11)).item() == 1.5


def test_geomed_of_collinear_points_is_their_median() -> None:
    agg = GeoMed(1, iters=200, ftol=0.0)
    assert agg(col(0, 1, 10)).item() == pytest.approx(1.0, abs=1e-3)


def test_geomed_of_symmetric_points_is_the_centre() -> None:
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [0.0, 0.0]])
    assert torch.allclose(make_aggregator("geomed", 1)(x), torch.zeros(2), atol=1e-12)


def test_geomed_beats_mean_on_its_objective() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]], dtype=torch.float64)
    v = GeoMed(1, iters=200, ftol=0.0)(x)

    def objective(p: torch.Tensor) -> float:
        return float((x - p).norm(dim=1).sum())

    assert objective(v) < objective(x.mean(0))
    for delta in ([1e-3, 0.0], [0.0, 1e-3], [-1e-3, 0.0], [0.0, -1e-3]):
        assert objective(v) <= objective(v + torch.tensor(delta, dtype=torch.float64)) + 1e-9
    # the default (16 iterations or converged) is close to the optimum
    assert objective(make_aggregator("geomed", 1)(x)) <= objective(v) * (1 + 1e-6)


def test_cclip_two_iterations_by_hand() -> None:
    # start: median 0; iter 1: clip(10) -> 1, v = 1/4; iter 2: diffs -1/4 x3 and
    # 9.75 -> 1, v = 1/4 + (-3/4 + 1)/4 = 0.3125
    assert make_aggregator("cclip:1:2", 1)(col(0, 0, 0, 10)).item() == 0.3125


def test_cclip_with_large_tau_from_median_is_mean_after_one_step() -> None:
    # nothing clipped: v1 = v0 + mean(x - v0) = mean(x)
    x = col(0, 1, 5)
    assert make_aggregator("cclip:100:1", 1)(x).item() == pytest.approx(2.0)


def test_nnm_mixes_with_nearest_neighbours() -> None:
    # n=4, f=1: each row -> mean of its 3 nearest (self included)
    # 0 -> {0,1,2}=1; 1 -> {1,0,2}=1; 2 -> {2,1,0}=1; 10 -> {10,2,1}=13/3
    x = col(0, 1, 2, 10)
    assert make_aggregator("nnm+mean", 1)(x).item() == pytest.approx((3 + 13 / 3) / 4)
    assert make_aggregator("nnm+median", 1)(x).item() == pytest.approx(1.0)


def test_bucketing_uses_seeded_permutation() -> None:
    x = col(1, 2, 3, 4, 5, 6, 7)
    seed = 123
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(seed))
    vals = x[perm, 0]
    expected = torch.stack([vals[0:2].mean(), vals[2:4].mean(), vals[4:6].mean(), vals[6:7].mean()])
    assert torch.equal(bucket_means(x, 2, seed)[:, 0], expected)
    agg = make_aggregator("bucketing:2+median", 1, seed=seed)
    assert agg(x).item() == pytest.approx(float(expected.sort().values[1:3].mean()))
    # the per-call seed overrides the constructor's
    other = make_aggregator("bucketing:2+median", 1, seed=0)
    assert other(x, seed=seed).item() == agg(x).item()


def test_bucketing_then_mean_is_the_mean_when_buckets_are_full() -> None:
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for seed in range(5):
        got = make_aggregator("bucketing:2+mean", 0, seed=seed)(x)
        torch.testing.assert_close(got, x.mean(0))


def test_bucketing_size_one_is_the_inner_rule() -> None:
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(make_aggregator("bucketing:1+median", 3)(x), make_aggregator("median", 3)(x))


def test_results_report_no_drops_on_clean_input() -> None:
    res = run_local(make_aggregator("krum", 1).steps(KRUM_X))
    assert res.dropped == ()
    assert res.value.shape == (1,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "spec", ["mean", "median", "trimmed_mean", "krum", "multikrum", "geomed", "cclip", "nnm+krum", "bucketing:2+median"]
)
def test_output_has_input_dtype(spec: str, dtype: torch.dtype) -> None:
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(2)).to(dtype)
    out = make_aggregator(spec, 1)(x)
    assert out.dtype == dtype and out.shape == (3,)


def test_call_accepts_shaped_contributions() -> None:
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(3))
    out = make_aggregator("median", 2)(x)
    assert out.shape == (2, 3)
    assert torch.equal(out, x.median(dim=0).values)  # odd n: torch's median agrees

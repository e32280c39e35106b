"""Chunked == whole: what the butterfly all-reduce does must equal the
whole-vector result, for every rule, dtype and chunking; plus protocol checks."""

from __future__ import annotations

import pytest
import torch

from gossamer.aggregate import AggResult, make_aggregator, run_chunked, run_local
from gossamer.errors import AggregationError

SPECS = [
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "multikrum:3",
    "geomed",
    "cclip",
    "cclip:0.5:4",
    "nnm+mean",
    "nnm+krum",
    "nnm+cclip:2",
    "bucketing:2+median",
    "bucketing:2+geomed",
    "nnm+bucketing:2+trimmed_mean",
]

# column splits of d = 11, including an empty chunk and one-column chunks
SPLITS = [[11], [5, 6], [4, 0, 7], [1, 1, 1, 8], [3, 3, 3, 2]]


def _data(dtype: torch.dtype, n: int = 9, d: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(42)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:2] += 8.0  # two outlying rows, so selections are not ties
    return x.to(dtype)


def _concat(results: list[AggResult]) -> torch.Tensor:
    return torch.cat([r.value for r in results])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("split", SPLITS, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("spec", SPECS)
def test_chunked_equals_whole(spec: str, split: list[int], dtype: torch.dtype) -> None:
    x = _data(dtype)
    agg = make_aggregator(spec, 2, seed=7)
    whole = run_local(agg.steps(x))
    parts = run_chunked(agg, list(x.split(split, dim=1)))
    assert len(parts) == len(split)
    assert [p.value.shape[0] for p in parts] == split
    assert all(p.value.dtype == dtype for p in parts)
    assert all(p.dropped == whole.dropped == () for p in parts)
    torch.testing.assert_close(_concat(parts), whole.value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_chunked_drops_rows_that_are_bad_in_one_chunk_only(spec: str) -> None:
    x = _data(torch.float64)
    x[4, 9] = float("nan")  # only in the last chunk
    x[6, 0] = float("-inf")  # only in the first chunk
    agg = make_aggregator(spec, 2, seed=3)
    parts = run_chunked(agg, list(x.split([4, 4, 3], dim=1)))
    assert all(p.dropped == (4, 6) for p in parts)
    got = _concat(parts)
    assert torch.isfinite(got).all()
    keep = [i for i in range(x.shape[0]) if i not in (4, 6)]
    f_eff = min(2, agg.max_f(len(keep)))  # dropped rows count against f as needed
    torch.testing.assert_close(got, make_aggregator(spec, f_eff, seed=3)(x[keep]), rtol=1e-9, atol=1e-9)


def test_bucketing_same_seed_same_buckets_on_every_chunk() -> None:
    x = _data(torch.float64)
    agg = make_aggregator("bucketing:3+mean", 0)
    a = _concat(run_chunked(agg, list(x.split([2, 9], dim=1)), seed=11))
    b = agg(x, seed=11)
    torch.testing.assert_close(a, b)


def test_driver_must_send_the_reduced_statistic() -> None:
    agg = make_aggregator("krum", 1)
    gen = agg.steps(_data(torch.float64, n=5))
    first = next(gen)
    assert first.shape == (5,) and first.dtype == torch.float64
    with pytest.raises(AggregationError, match="shape"):
        gen.send(torch.zeros(3, dtype=torch.float64))
    gen2 = agg.steps(_data(torch.float64, n=5))
    next(gen2)
    with pytest.raises(AggregationError, match="None"):
        next(gen2)


def test_first_yield_counts_non_finite_entries_per_row() -> None:
    x = torch.zeros(3, 4)
    x[1, 0] = float("nan")
    x[1, 2] = float("inf")
    x[2, 3] = float("-inf")
    gen = make_aggregator("median", 1).steps(x)
    assert torch.equal(next(gen), torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("spec", ["krum", "geomed", "cclip", "nnm+median"])
def test_whole_vector_statistics_are_float64(spec: str) -> None:
    gen = make_aggregator(spec, 1).steps(_data(torch.float32, n=5))
    stat = next(gen)
    while True:
        assert stat.dtype == torch.float64
        try:
            stat = gen.send(stat)
        except StopIteration:
            break

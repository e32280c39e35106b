"""GeoMed: input rows coinciding with the start or an iterate (Vardi-Zhang),
checked against an independent reference minimiser."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.aggregate import GeoMed, make_aggregator, run_chunked, run_local


def objective(x: torch.Tensor, v: torch.Tensor) -> float:
    return float((x.to(torch.float64) - v.to(torch.float64)).norm(dim=1).sum())


def reference_minimum(x: torch.Tensor) -> float:
    """min of g over every row and long Vardi-Zhang runs from the mean and each row.

    Written independently of the library: plain whole-vector float64, 400
    iterations per start, no early stop, no tolerance on the scale.
    """
    x = x.to(torch.float64)
    best = min(objective(x, row) for row in x)
    for start in [x.mean(dim=0), *x]:
        y = start.clone()
        for _ in range(400):
            d = (x - y).norm(dim=1)
            on = d <= 1e-12
            if bool(on.all()):
                break
            w = 1.0 / d[~on]
            t = (w[:, None] * x[~on]).sum(dim=0) / w.sum()
            eta = int(on.sum())
            if eta == 0:
                if float((t - y).norm()) <= 1e-15 * (1 + float(y.norm())):
                    break
                y = t
                continue
            r = float((w[:, None] * (x[~on] - y)).sum(dim=0).norm())
            if r <= eta:
                break
            y = (1 - eta / r) * t + (eta / r) * y
            continue
        best = min(best, objective(x, y))
    return best


def test_start_on_a_row_is_not_stuck() -> None:
    # the issue: the median start [0, 0] is row 4; the smoothed rule stayed there (4.0)
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    v = make_aggregator("geomed", 1)(x)
    assert objective(x, v) == pytest.approx(2 + math.sqrt(3), abs=1e-4)
    assert torch.allclose(v, torch.tensor([1 / math.sqrt(3), 0.0]), atol=2e-3)
    assert objective(x, v) < 3.7320508 + 1e-4


def test_start_extremely_near_a_row_is_not_stuck() -> None:
    x = torch.tensor(
        [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [1e-13, -1e-13]], dtype=torch.float64
    )
    v = make_aggregator("geomed", 1)(x)
    assert objective(x, v) == pytest.approx(2 + math.sqrt(3), abs=1e-4)


def test_optimal_row_is_returned_exactly() -> None:
    # three copies of [2, 2] outweigh the pull of the other two rows (r <= eta)
    x = torch.tensor([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [9.0, 2.0], [2.0, -7.0]], dtype=torch.float64)
    assert torch.equal(make_aggregator("geomed", 2)(x), torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_iterate_converging_onto_a_row_ends_on_it() -> None:
    # the median start [0, 0, 0.5] is not a row; the optimum is row 0
    # (multiplicity 3 against a pull of norm 2.80), approached only slowly by
    # Weiszfeld steps; the nearest-row candidate lands on it and certifies it
    x = torch.tensor(
        [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1], [0, 1, 1]], dtype=torch.float64
    )
    assert torch.equal(make_aggregator("geomed", 2)(x), torch.zeros(3, dtype=torch.float64))
    assert objective(x, torch.zeros(3)) <= reference_minimum(x)


small_rows = st.integers(1, 9).flatmap(
    lambda n: st.integers(1, 4).flatmap(
        lambda d: st.lists(
            st.lists(st.integers(-3, 3), min_size=d, max_size=d), min_size=n, max_size=n
        )
    )
)


@settings(max_examples=300, deadline=None)
@given(small_rows)
def test_objective_matches_reference_on_small_integer_rows(rows: list[list[int]]) -> None:
    x = torch.tensor(rows, dtype=torch.float64)
    v = make_aggregator("geomed", (x.shape[0] - 1) // 2)(x)
    ref = reference_minimum(x)
    assert objective(x, v) <= ref * (1 + 1e-3) + 1e-12


@settings(max_examples=100, deadline=None)
@given(small_rows, st.data())
def test_chunked_equals_whole_on_coinciding_rows(rows: list[list[int]], data: st.DataObject) -> None:
    x = torch.tensor(rows, dtype=torch.float64)
    d = x.shape[1]
    cuts = sorted(data.draw(st.lists(st.integers(0, d), max_size=3)))
    split = [b - a for a, b in zip([0, *cuts], [*cuts, d])]
    agg = GeoMed((x.shape[0] - 1) // 2)
    whole = run_local(agg.steps(x)).value
    parts = torch.cat([r.value for r in run_chunked(agg, list(x.split(split, dim=1)))])
    torch.testing.assert_close(parts, whole, rtol=1e-9, atol=1e-9)

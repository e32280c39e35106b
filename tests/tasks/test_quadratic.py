"""quadratic: closed-form optimum, sharding, heterogeneity, convergence."""

from __future__ import annotations

import pytest
import torch

from gossamer.errors import ConfigError, TaskError
from gossamer.tasks import make_task
from gossamer.tasks.quadratic import QuadraticTask


def _task(**options: object) -> QuadraticTask:
    t = make_task("quadratic", **options)
    assert isinstance(t, QuadraticTask)
    return t


def test_optimum_satisfies_the_normal_equations() -> None:
    t = _task()
    A = torch.from_numpy(t._problem.A.copy())
    b = torch.from_numpy(t._problem.b.copy())
    grad = A.T @ (A @ t.optimum - b)
    assert float(grad.abs().max()) < 1e-9 * float((A.T @ b).abs().max())
    assert t.optimum.dtype == torch.float64 and t.optimum.shape == (32,)
    assert 1.0 < t.condition_number < 5.0
    assert t.objective(t.optimum) == pytest.approx(t.optimum_value)
    assert t.objective(t.optimum + 0.01) > t.optimum_value


def test_evaluate_at_the_optimum() -> None:
    t = _task()
    model = t.make_model(0)
    f0, rel0 = t.evaluate(model)
    assert rel0 > 0.5 and f0 > t.optimum_value
    with torch.no_grad():
        model.x.copy_(t.optimum)
    f, rel = t.evaluate(model)
    assert rel < 1e-6 and f == pytest.approx(t.optimum_value, rel=1e-6)
    assert t.metric_name == "rel_dist_to_opt" and not t.metric_higher_is_better


@pytest.mark.parametrize("iid", [True, False])
def test_gradient_descent_over_peers_reaches_the_optimum(iid: bool) -> None:
    t = _task(iid=iid)
    n = 8
    model = t.make_model(1)
    shards = [t.shard(p, n, seed=0) for p in range(n)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        loss = sum(t.loss(model, s.next_batch()) for s in shards) / n
        loss.backward()
        opt.step()
    _, rel = t.evaluate(model)
    assert rel < 1e-4


def test_average_of_peer_objectives_is_the_global_objective() -> None:
    t = _task(iid=False)
    model = t.make_model(2)
    with torch.no_grad():
        local = sum(float(t.loss(model, t.shard(p, 4, seed=0).next_batch())) for p in range(4)) / 4
    assert local == pytest.approx(t.evaluate(model)[0], rel=1e-5)


def test_shards_partition_the_rows() -> None:
    t = _task()
    rows = sorted(int(r) for p in range(5) for r in t.shard(p, 5, seed=3).rows)
    assert rows == list(range(1024))
    assert not (t.shard(0, 5, seed=3).rows == t.shard(0, 5, seed=4).rows).all()


def test_non_iid_local_optima_differ() -> None:
    def spread(task: QuadraticTask) -> float:
        opts = [task.shard(p, 8, seed=0).local_optimum() for p in range(8)]
        return max(float(torch.linalg.vector_norm(o - task.optimum)) for o in opts)

    assert spread(_task(iid=True)) < 0.2
    assert spread(_task(iid=False)) > 10 * spread(_task(iid=True))
    assert spread(_task(iid=False, heterogeneity=0.0)) < 0.2
    assert spread(_task(iid=False, heterogeneity=0.1)) < spread(_task(iid=False))


def test_stochastic_batches() -> None:
    t = _task(stochastic=True, batch_size=16)
    assert t.samples_per_batch == 16
    a, b, c = t.shard(0, 4, seed=0), t.shard(0, 4, seed=0), t.shard(1, 4, seed=0)
    (Aa, ba), (Ab, bb), (Ac, _) = a.next_batch(), b.next_batch(), c.next_batch()
    assert Aa.shape == (16, 32) and ba.shape == (16,)
    assert torch.equal(Aa, Ab) and torch.equal(ba, bb) and not torch.equal(Aa, Ac)
    assert not torch.equal(a.next_batch()[0], Aa)
    full = _task().shard(0, 4, seed=0)
    assert full.next_batch()[0].shape == (256, 32) and full.samples_per_batch == 256


def test_label_flip_negates_targets() -> None:
    t = _task()
    clean, dirty = t.shard(2, 4, seed=0), t.shard(2, 4, seed=0, label_flip=True)
    assert torch.equal(dirty.b, -clean.b) and torch.equal(dirty.A, clean.A)


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="n_rows=8"):
        _task(n_rows=8, dim=32)
    with pytest.raises(ConfigError, match="-1.0"):
        _task(iid=False, heterogeneity=-1.0)
    with pytest.raises(ConfigError, match="heterogeneity=0.5"):
        _task(heterogeneity=0.5)
    with pytest.raises(TaskError):
        _task(n_rows=64, n_groups=4).shard(0, 65, seed=0)

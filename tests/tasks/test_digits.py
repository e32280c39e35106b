"""digits: split, iid and Dirichlet shards, batches, label flipping, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossamer.errors import ConfigError, TaskError
from gossamer.tasks import make_task
from gossamer.tasks.digits import DigitsTask, dirichlet_partition


def _task(**options: object) -> DigitsTask:
    t = make_task("digits", **options)
    assert isinstance(t, DigitsTask)
    return t


def test_defaults_and_metric() -> None:
    t = _task()
    assert t.config.hidden == (64,) and t.config.iid and t.config.alpha is None
    assert t.metric_name == "val_accuracy" and t.metric_higher_is_better
    model = t.make_model(0)
    assert [tuple(p.shape) for p in model.parameters()] == [(64, 64), (64,), (10, 64), (10,)]


def test_hidden_is_configurable() -> None:
    model = _task(hidden=[32, 16]).make_model(0)
    assert [tuple(p.shape) for p in model.parameters()][::2] == [(32, 64), (16, 32), (10, 16)]
    assert _task(hidden=48).config.hidden == (48,)
    with pytest.raises(ConfigError, match="hidden"):
        _task(hidden=(0,))


def test_split_is_stratified_fixed_and_disjoint() -> None:
    d = _task().data
    assert d.x_train.shape[1] == 64 and len(d.y_val) == 360 and len(d.y_train) == 1797 - 360
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0
    train_rows = {tuple(r) for r in d.x_train.numpy().round(4).tolist()}
    overlap = sum(tuple(r) in train_rows for r in d.x_val.numpy().round(4).tolist())
    assert overlap <= 5  # only genuine duplicate images in the dataset may coincide
    val_counts = np.bincount(d.y_val.numpy(), minlength=10)
    assert val_counts.min() >= 34 and val_counts.max() <= 38
    # independent of the run seed: shards with any seed index the same training set
    assert torch.equal(_task().data.y_val, d.y_val)


def test_iid_shards_partition_the_training_set() -> None:
    t = _task()
    parts = t.partition(6, seed=3)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(len(t.data.y_train)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert not np.array_equal(t.partition(6, seed=4)[0], parts[0])


def _label_hist(t: DigitsTask, n: int, seed: int) -> np.ndarray:
    y = t.data.y_train.numpy()
    return np.stack([np.bincount(y[p], minlength=10) / len(p) for p in t.partition(n, seed)])


def test_dirichlet_shards_are_skewed_by_label() -> None:
    iid = _label_hist(_task(), 8, 0)
    skew = _label_hist(_task(iid=False, alpha=0.1), 8, 0)
    # distance of each peer's label mix from uniform
    assert np.abs(skew - 0.1).sum(axis=1).mean() > 3 * np.abs(iid - 0.1).sum(axis=1).mean()
    parts = _task(iid=False, alpha=0.1).partition(8, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1437))


@pytest.mark.parametrize("alpha, n", [(0.01, 20), (0.05, 50), (100.0, 8)])
def test_dirichlet_shards_are_never_empty(alpha: float, n: int) -> None:
    t = _task(iid=False, alpha=alpha, min_shard_size=5)
    for seed in range(3):
        parts = t.partition(n, seed)
        assert len(parts) == n and min(map(len, parts)) >= 5
        assert sorted(np.concatenate(parts).tolist()) == list(range(1437))


def test_dirichlet_partition_refuses_impossible_minimum() -> None:
    with pytest.raises(TaskError):
        dirichlet_partition(np.zeros(10, dtype=np.int64), 4, 0.5, 3, np.random.default_rng(0))


def test_alpha_requires_non_iid() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        _task(alpha=0.5)
    with pytest.raises(ConfigError, match="-1"):
        _task(iid=False, alpha=-1.0)
    assert _task(iid=False).config.effective_alpha == 0.5


def test_batches_are_deterministic_epochs() -> None:
    t = _task(batch_size=16)
    a, b, c = t.shard(2, 4, seed=1), t.shard(2, 4, seed=1), t.shard(3, 4, seed=1)
    for _ in range(3):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.next_batch()[0], c.next_batch()[0])
    # one epoch's worth of batches sees every sample of the shard exactly once
    s = t.shard(0, 4, seed=0)
    n = s.num_samples
    ys = torch.cat([s.next_batch()[1] for _ in range(n // 16)])
    full = n // 16 * 16
    assert len(ys) == full
    assert (torch.bincount(ys, minlength=10) <= torch.bincount(s.y, minlength=10)).all()


def test_label_flip() -> None:
    t = _task()
    clean, dirty = t.shard(1, 3, seed=0), t.shard(1, 3, seed=0, label_flip=True)
    assert torch.equal(dirty.y, 9 - clean.y)
    assert torch.equal(dirty.x, clean.x)


def test_training_reaches_high_accuracy() -> None:
    t = _task()
    model = t.make_model(0)
    _, acc0 = t.evaluate(model)
    shard = t.shard(0, 1, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = t.loss(model, shard.next_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, acc = t.evaluate(model)
    assert acc0 < 0.3 and acc > 0.93, (acc0, acc)

"""Issue 13.3: a user's own task in the simulator, through ``gossamer`` top-level names only.

The tasks here are written as a user would: a tiny linear regression with
plain ``nn.Linear`` (global-RNG initialisation), one subclassing
``gossamer.Task``, one a plain object. Bad tasks fail before any training
step with an error naming what is wrong.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gossamer


class LinRegShard:
    """Rows ``peer::n_peers`` of the task's data, sampled with a seeded generator."""

    def __init__(self, task: "LinReg", peer: int, n_peers: int, seed: int, flip: bool = False) -> None:
        self.x, self.y = task.x[peer::n_peers], task.y[peer::n_peers]
        if flip:
            self.y = -self.y
        self.gen = torch.Generator().manual_seed(seed * 1009 + peer)
        self.samples_per_batch = 16

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        take = torch.randint(self.x.shape[0], (16,), generator=self.gen)
        return self.x[take], self.y[take]


class LinReg:
    """y = x w* + noise; the model is one nn.Linear. No metric: evaluate returns the loss."""

    name = "linreg"
    samples_per_batch = 16
    loss_unit = "mean squared error"

    def __init__(self, dim: int = 6, rows: int = 240) -> None:
        gen = torch.Generator().manual_seed(1234)
        w = torch.randn(dim, generator=gen)
        self.x = torch.randn(rows, dim, generator=gen)
        self.y = self.x @ w + 0.01 * torch.randn(rows, generator=gen)
        self.val_x = torch.randn(64, dim, generator=gen)
        self.val_y = self.val_x @ w
        self.shards: list[tuple[int, int, bool]] = []

    def make_model(self, seed: int) -> nn.Module:
        return nn.Linear(self.x.shape[1], 1)  # torch's global RNG: gossamer seeds it with ``seed`` first

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((model(x).squeeze(-1) - y) ** 2).mean()

    def shard(self, peer: int, n_peers: int, *, seed: int, label_flip: bool = False) -> LinRegShard:
        self.shards.append((peer, n_peers, label_flip))
        return LinRegShard(self, peer, n_peers, seed, label_flip)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        device = next(model.parameters()).device
        return float(self.loss(model, (self.val_x.to(device), self.val_y.to(device))))


class LinRegR2(gossamer.Task):
    """The same task as a ``gossamer.Task`` subclass, with a metric (R^2) and no name."""

    metric_name = "val_r2"
    default_steps = 30

    def __init__(self) -> None:
        self.inner = LinReg()

    def make_model(self, seed: int) -> nn.Module:
        return self.inner.make_model(seed)

    def loss(self, model, batch):
        return self.inner.loss(model, batch)

    def shard(self, peer, n_peers, *, seed):
        return self.inner.shard(peer, n_peers, seed=seed)

    @torch.no_grad()
    def evaluate(self, model):
        pred = model(self.inner.val_x).squeeze(-1)
        y = self.inner.val_y
        mse = float(((pred - y) ** 2).mean())
        return mse, 1.0 - mse / float(y.var(unbiased=False))


FAST = dict(peers=3, steps=40, inner_steps=5, evals=2, link="1gbit,1ms")


def test_own_task_with_three_algorithms_results_carry_its_name(tmp_path) -> None:
    task = LinReg()
    seen: list[str] = []
    res = gossamer.simulate(task=task, algorithms=("ddp", "diloco", "fedavg"), progress=lambda a, d, t: seen.append(a),
                            algorithm_options={"diloco": {"lr": 0.05}, "ddp": {"lr": 0.05}}, **FAST)
    assert res.task == "linreg"
    assert [r.algorithm for r in res.runs] == ["ddp", "diloco", "fedavg"]
    assert set(seen) == {"ddp", "diloco", "fedavg"}
    for run in res.runs:
        assert run.metric_name == "val_loss" and run.final_val_metric == run.final_val_loss
        assert run.final_val_loss < 0.5 * run.curve[0].val_loss, (run.algorithm, run.curve)  # it learned
        assert run.extra["state_hashes_equal"] and run.bytes_sent_per_peer > 0
        assert run.extra["samples_per_peer"] == 40 * 16
    # every peer's shard once per run, plus the last peer's for the check before training; never poisoned
    assert sorted(set(task.shards)) == [(0, 3, False), (1, 3, False), (2, 3, False)]
    res.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["task"] == "linreg" and data["loss_unit"] == "mean squared error"
    assert "charlm" not in json.dumps(data) and "digits" not in json.dumps(data)


def test_subclass_defaults_metric_and_class_name_and_save(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    res = gossamer.simulate(task=LinRegR2(), algorithms=("diloco",), peers=2, evals=1, save=str(path),
                            algorithm_options={"diloco": {"lr": 0.05, "inner_steps": 5}})
    assert res.task == "LinRegR2"  # no name attribute: the class name
    run = res.runs[0]
    assert run.steps == 30  # default_steps
    assert run.metric_name == "val_r2" and run.final_val_metric > run.curve[0].val_metric
    from safetensors.torch import load_file

    model = LinRegR2().make_model(0)
    model.load_state_dict(load_file(str(path)))  # strict
    assert run.extra["saved_model"] == str(path)


def test_make_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    from gossamer.tasks import as_task

    task = as_task(LinReg())
    state = torch.get_rng_state()
    a, b, c = task.make_model(5), task.make_model(5), task.make_model(6)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_label_flip_reaches_the_byzantine_shard_only() -> None:
    task = LinReg()
    gossamer.simulate(task=task, algorithms=("ddp",), byzantine=1, attack="labelflip", aggregator="median",
                      tolerate=1, peers=4, steps=4, evals=1)
    assert (3, 4, True) in task.shards and (0, 4, True) not in task.shards


# ------------------------------------------------------------------ bad tasks: named errors, before training


class _Broken(LinReg):
    pass


def _no_evaluate():
    t = _Broken()
    t.evaluate = None
    return t


def _make_model_returns(value):
    t = _Broken()
    t.make_model = lambda seed: value
    return t


def _shard_returns(value):
    t = _Broken()
    t.shard = lambda peer, n_peers, *, seed: value
    return t


def _evaluate_returns(value, metric=None):
    t = _Broken()
    t.evaluate = lambda model: value
    if metric:
        t.metric_name = metric
    return t


def _loss_returns(fn):
    t = _Broken()
    t.loss = fn
    return t


def _signature(method, fn):
    t = _Broken()
    setattr(t, method, fn)
    return t


def _random_init():
    t = _Broken()
    gen = torch.Generator().manual_seed(0)

    def make_model(seed):
        m = nn.Linear(6, 1)
        with torch.no_grad():
            m.weight.normal_(generator=gen)  # one generator for every call: each model differs
        return m

    t.make_model = make_model
    return t


BAD = {
    "a class": (lambda: LinReg, gossamer.TaskError, "pass LinReg\\(...\\)"),
    "missing evaluate": (_no_evaluate, gossamer.TaskError, "no method evaluate"),
    "bad name": (lambda: type("T", (LinReg,), {"name": ""})(), gossamer.TaskError, "name must be a non-empty string"),
    "bad metric_name": (lambda: type("T", (LinReg,), {"metric_name": 3})(), gossamer.TaskError, "metric_name must be a str"),
    "model not a module": (lambda: _make_model_returns([1.0]), gossamer.TaskError, "make_model\\(0\\) must return a torch.nn.Module"),
    "model without params": (lambda: _make_model_returns(nn.ReLU()), gossamer.TaskError, "no trainable parameters"),
    "model not deterministic": (_random_init, gossamer.TaskError, "not deterministic"),
    "shard without next_batch": (lambda: _shard_returns([1, 2]), gossamer.TaskError, "next_batch"),
    "shard without seed": (lambda: _signature("shard", lambda peer, n_peers: None), gossamer.TaskError,
                           "shard must accept shard\\(peer, n_peers, \\*, seed\\)"),
    "make_model without seed": (lambda: _signature("make_model", lambda: nn.Linear(6, 1)), gossamer.TaskError,
                                "make_model must accept make_model\\(seed\\)"),
    "loss without batch": (lambda: _signature("loss", lambda model: None), gossamer.TaskError,
                           "loss must accept loss\\(model, batch\\)"),
    "evaluate with an extra argument": (lambda: _signature("evaluate", lambda model, data: None), gossamer.TaskError,
                                        "evaluate must accept evaluate\\(model\\)"),
    "loss a float": (lambda: _loss_returns(lambda m, b: 1.5), gossamer.TaskError, "loss\\(model, batch\\) must return a scalar"),
    "loss detached": (lambda: _loss_returns(lambda m, b: LinReg.loss(None, m, b).detach()), gossamer.TaskError,
                      "does not require grad"),
    "evaluate a string": (lambda: _evaluate_returns("low"), gossamer.TaskError, "must return the validation loss"),
    "evaluate a pair, no metric_name": (lambda: _evaluate_returns((1.0, 0.5)), gossamer.TaskError, "set metric_name"),
    "evaluate one number, with metric_name": (lambda: _evaluate_returns(1.0, "val_acc"), gossamer.TaskError,
                                              "must return \\(val_loss, val_acc\\)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_task_is_named_before_training(case: str) -> None:
    make, error, match = BAD[case]
    steps: list[int] = []
    with pytest.raises(error, match=match):
        gossamer.simulate(task=make(), algorithms=("ddp",), progress=lambda a, d, t: steps.append(d), **FAST)
    assert steps == []  # not one training step


@pytest.mark.parametrize("fields, match", [
    ({"steps": None}, "steps is required with your own task 'linreg'"),
    ({"task_options": {"batch_size": 4}}, "task_options configure built-in tasks"),
    ({"alpha": 0.5}, "alpha and iid choose the shards of built-in tasks"),
    ({"task": "mnist"}, "unknown task 'mnist'"),
])
def test_scenario_errors_for_own_task(fields, match) -> None:
    args = dict(task=LinReg(), algorithms=("ddp",), peers=2, steps=3) | fields
    with pytest.raises(gossamer.ConfigError, match=match):
        gossamer.Scenario(**args)


def test_label_flip_attack_needs_a_shard_that_takes_label_flip() -> None:
    class NoFlip(LinReg):
        def shard(self, peer, n_peers, *, seed):
            return LinRegShard(self, peer, n_peers, seed)

    with pytest.raises(gossamer.ConfigError, match="needs shard\\(peer, n_peers, \\*, seed, label_flip=False\\)"):
        gossamer.Scenario(task=NoFlip(), algorithms=("ddp",), peers=4, steps=3, byzantine=1, attack="labelflip",
                          aggregator="median")


def test_a_built_in_task_object_keeps_its_name_and_defaults() -> None:
    task = gossamer.make_task("quadratic", dim=8)
    scenario = gossamer.Scenario(task=task, algorithms=("diloco",), peers=2, evals=1)
    assert scenario.task_name == "quadratic" and scenario.steps == 200 and scenario.inner_steps == 10
    res = gossamer.simulate(scenario, steps=4, inner_steps=2)
    assert res.task == "quadratic" and res.runs[0].metric_name == "rel_dist_to_opt"

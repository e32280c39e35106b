"""Issue 13.2: gossamer.Optimizer keeps the user's loop and torch optimizer; simulated swarm."""

from __future__ import annotations

import re
import threading

import pytest
import torch

import gossamer
from gossamer.algorithms import algorithm_config
from gossamer.tasks import make_task


def _adamw_like_gossamer(model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = algorithm_config("diloco")
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)


def _run_in_background(swarm, train, timeout: float = 60.0) -> list[BaseException] | None:
    """``swarm.run(train)`` in a thread: the exceptions it raised, or None if it had not ended after ``timeout``."""
    done = threading.Event()
    errors: list[BaseException] = []

    def go() -> None:
        try:
            swarm.run(train)
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=go, daemon=True).start()
    return errors if done.wait(timeout) else None


def test_own_loop_is_bit_identical_to_the_simulator_running_the_same_algorithm():
    # The same model, data, optimizer and clipping: the user's loop through gossamer.Optimizer must end
    # in the very state the built-in simulator reaches, byte counts included.
    task = make_task("quadratic")
    res = gossamer.simulate(task="quadratic", algorithms=("diloco",), peers=3, steps=20, inner_steps=5, seed=3)
    swarm = gossamer.SimulatedSwarm(3, algorithm="diloco", inner_steps=5, total_steps=20, seed=3, grad_clip=1.0)
    losses: dict[int, list[float]] = {}

    def train(rank: int) -> None:
        model = task.make_model(3)
        shard = task.shard(rank, 3, seed=3)
        opt = swarm.optimizer(rank, model, _adamw_like_gossamer(model))
        losses[rank] = []
        for _ in range(20):
            loss = task.loss(model, shard.next_batch())
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[rank].append(loss.item())
        with pytest.raises(gossamer.PeerError, match="run is over"):
            opt.step()

    report = swarm.run(train)
    swarm.close()
    run = res.runs[0]
    assert report.in_agreement and report.final_hashes[0] == run.extra["final_state_hash"]
    assert report.steps == [20, 20, 20] and report.syncs == [4, 4, 4]
    assert sum(report.bytes_sent) / 3 == pytest.approx(run.bytes_sent_per_peer)
    assert all(s > 0 for s in report.sim_time_s)
    assert losses[0][-1] < losses[0][0]


@pytest.mark.parametrize("algorithm", ["sparseloco", "streaming_diloco", "fedavg", "noloco", "gossip"])
def test_every_fitting_algorithm_runs_with_a_plain_sgd(algorithm):
    torch.manual_seed(0)
    x, w = torch.randn(64, 6), torch.randn(6, 1)
    y = x @ w
    swarm = gossamer.SimulatedSwarm(2, algorithm=algorithm, inner_steps=4, total_steps=16, seed=1,
                                    compute_time=0.01)

    def train(rank: int) -> None:
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 1)
        opt = swarm.optimizer(rank, model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        for i in range(16):
            idx = torch.arange(8) + 8 * ((i + rank) % 8)
            torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()
            opt.zero_grad()

    report = swarm.run(train)
    swarm.close()
    assert report.steps == [16, 16] and min(report.syncs) >= 1 and min(report.bytes_sent) > 0
    if algorithm != "noloco":  # noloco's peers are not meant to agree exactly
        assert report.in_agreement, report.final_hashes


def test_what_does_not_fit_is_refused_with_the_reason():
    model = torch.nn.Linear(3, 1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(gossamer.ConfigError, match="ddp cannot run with your own optimizer: its optimizer state is shared"):
        gossamer.SimulatedSwarm(2, algorithm="ddp")
    with pytest.raises(gossamer.ConfigError, match="spsa cannot run with your own optimizer: it takes no gradients"):
        gossamer.SimulatedSwarm(2, algorithm="spsa")
    with pytest.raises(gossamer.ConfigError, match="lr.*set them on it instead"):
        gossamer.SimulatedSwarm(2, algorithm="diloco", lr=0.1)
    with pytest.raises(gossamer.ConfigError, match="unknown option"):
        gossamer.SimulatedSwarm(2, algorithm="diloco", inner_stepz=3)
    with pytest.raises(gossamer.ConfigError, match="total_steps"):
        gossamer.SimulatedSwarm(2, total_steps=0)
    swarm = gossamer.SimulatedSwarm(2, algorithm="diloco", inner_steps=2)
    other = torch.nn.Linear(3, 1)
    with pytest.raises(gossamer.ConfigError, match="exactly the model's 2 trainable parameters"):
        swarm.optimizer(0, model, torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(gossamer.ConfigError, match="must be a torch.optim.Optimizer"):
        swarm.optimizer(0, model, "adamw")  # type: ignore[arg-type]
    with pytest.raises(gossamer.ConfigError, match="rank must be an int in \\[0, 2\\)"):
        swarm.optimizer(2, model, sgd)
    swarm.optimizer(0, model, sgd)
    with pytest.raises(gossamer.ConfigError, match="rank 0 already has an optimizer"):
        swarm.optimizer(0, model, sgd)
    torch.manual_seed(99)
    different = torch.nn.Linear(3, 1)
    with pytest.raises(gossamer.ConfigError, match="differs from the first peer's"):
        swarm.optimizer(1, different, torch.optim.SGD(different.parameters(), lr=0.1))
    with pytest.raises(gossamer.ConfigError, match="exactly one of coordinator"):
        gossamer.Optimizer(model, sgd)
    swarm.close()


def test_a_failing_user_loop_ends_the_run_instead_of_hanging_the_others():
    swarm = gossamer.SimulatedSwarm(3, algorithm="diloco", inner_steps=2, total_steps=10, compute_time=0.01)
    seen: dict[int, BaseException] = {}

    def train(rank: int) -> None:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = swarm.optimizer(rank, model, torch.optim.SGD(model.parameters(), lr=0.1))
        try:
            for step in range(10):
                if rank == 1 and step == 3:
                    raise RuntimeError("user bug in rank 1")
                model(torch.ones(2, 4)).sum().backward()
                opt.step()
                opt.zero_grad()
        except gossamer.PeerError as exc:
            seen[rank] = exc
            raise

    errors = _run_in_background(swarm, train)
    assert errors is not None, "the other peers hung on the failed one"
    assert isinstance(errors[0], RuntimeError) and "user bug in rank 1" in str(errors[0])
    assert set(seen) == {0, 2} and all("gone" in str(e) for e in seen.values())
    swarm.close()


@pytest.mark.parametrize("early", ["no optimizer", "fewer steps"])
def test_a_rank_whose_train_returns_early_ends_the_run_with_a_clear_error(early):
    # A rank that never builds its optimizer, or stops before total_steps, used to leave the others waiting for it
    # for ever; now run() raises a ConfigError naming the rank and the others stop.
    swarm = gossamer.SimulatedSwarm(3, algorithm="diloco", inner_steps=5, total_steps=10, compute_time=0.01)

    def train(rank: int) -> None:
        if rank == 2 and early == "no optimizer":
            return
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = swarm.optimizer(rank, model, torch.optim.SGD(model.parameters(), lr=0.1))
        for _ in range(7 if rank == 2 else 10):
            model(torch.ones(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()

    errors = _run_in_background(swarm, train)
    assert errors is not None, "the other peers hung on the rank that returned early"
    want = "without calling swarm.optimizer\\(2" if early == "no optimizer" else "after 7 of total_steps=10 steps"
    assert isinstance(errors[0], gossamer.ConfigError) and re.search(want, str(errors[0]))
    swarm.close()


def test_what_the_wrapper_cannot_take_is_refused_before_anything_starts():
    model = torch.nn.Linear(3, 1)
    with pytest.raises(gossamer.ConfigError, match="LBFGS cannot be the inner optimizer: its step needs a closure"):
        gossamer.SimulatedSwarm(2).optimizer(0, model, torch.optim.LBFGS(model.parameters()))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(gossamer.ConfigError, match="model must be a torch.nn.Module, got str"):
        gossamer.Optimizer("model", sgd, coordinator="127.0.0.1:7000")  # type: ignore[arg-type]
    for bad, why in (("localhost", "expected HOST:PORT"), ("host:x", "numeric port"), (7000, "must be 'host:port'")):
        with pytest.raises(gossamer.ConfigError, match=why):
            gossamer.Optimizer(model, sgd, coordinator=bad)  # type: ignore[arg-type]
    with pytest.raises(gossamer.ConfigError, match="exactly one of coordinator"):
        gossamer.Optimizer(model, sgd)

"""Issue 13.2: gossamer.Optimizer over a real coordinator process and real TCP peers."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import gossamer


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(128, 8, generator=g)
    return x, x @ torch.linspace(-1, 1, 8).unsqueeze(1)


def _loop(opt: gossamer.Optimizer, model: torch.nn.Module, rank: int, total: int, out: dict) -> None:
    x, y = _data(rank)
    try:
        while opt.steps < total:  # a joiner starts at the swarm's step count
            i = opt.steps % 16
            loss = torch.nn.functional.mse_loss(model(x[8 * i: 8 * i + 8]), y[8 * i: 8 * i + 8])
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad()
            time.sleep(0.02)  # a little compute, so the joiner arrives mid-run
        opt.close()
        out[rank] = opt.report
    except BaseException as exc:  # pragma: no cover - reported by the assertion below
        out[rank] = exc


def test_two_peers_and_a_late_joiner_train_with_their_own_loop_and_agree(procs, tmp_path):
    port = procs.coordinator("--min-peers", "2")
    total, out, threads, models = 60, {}, [], {}

    for rank in range(3):  # every peer starts from the same weights (built here: the global RNG is not per thread)
        torch.manual_seed(0)
        models[rank] = torch.nn.Linear(8, 1)

    def start(rank: int) -> None:
        model = models[rank]
        opt = gossamer.Optimizer(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5),
                                 coordinator=f"127.0.0.1:{port}", algorithm="diloco", inner_steps=5,
                                 total_steps=total, key=str(tmp_path / f"k{rank}.pem"))
        threads.append(threading.Thread(target=_loop, args=(opt, model, rank, total, out)))
        threads[-1].start()

    boot = [threading.Thread(target=start, args=(r,)) for r in (0, 1)]  # both must be there for round 0
    for t in boot:
        t.start()
    for t in boot:
        t.join(60)
    procs.wait_event(lambda ev: ev["event"] == "commit" and ev.get("round", 0) >= 3, 60)
    start(2)  # joins mid-run: the constructor returns once the swarm's state is in its model
    for t in threads:
        t.join(120)
    reports = [out[r] for r in range(3)]
    assert all(isinstance(r, object) and not isinstance(r, BaseException) for r in reports), reports
    assert reports[2].joined_round is not None and reports[2].joined_round >= 3
    finals = {r.final_state_hash for r in reports}
    assert len(finals) == 1, finals
    assert reports[0].rounds_completed == total // 5
    assert reports[2].rounds_completed < reports[0].rounds_completed
    assert reports[0].losses and reports[0].losses[-1]["loss"] < reports[0].losses[0]["loss"]
    assert torch.equal(models[0].weight, models[2].weight)  # the run ended with a sync: one shared model


def test_refusals_come_before_joining_and_an_absent_coordinator_times_out(tmp_path):
    model = torch.nn.Linear(2, 1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(gossamer.ConfigError, match="ddp cannot run with your own optimizer"):
        gossamer.Optimizer(model, sgd, coordinator="127.0.0.1:9", algorithm="ddp")
    with pytest.raises(gossamer.ConfigError, match="weight_decay.*set them on it instead"):
        gossamer.Optimizer(model, sgd, coordinator="127.0.0.1:9", weight_decay=0.1)
    t0 = time.monotonic()
    with pytest.raises(gossamer.PeerError, match="not admitted to the swarm at 127.0.0.1:9 within 1 s"):
        gossamer.Optimizer(model, sgd, coordinator="127.0.0.1:9", join_timeout=1.0, key=str(tmp_path / "k.pem"))
    assert time.monotonic() - t0 < 20

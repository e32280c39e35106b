"""``gossamer bench spsa``: diloco pretraining then one-byte spsa fine-tuning, at tiny sizes."""

from __future__ import annotations

import json

import pytest
import torch

from gossamer.bench.algorithms import run_spsa_finetune_bench
from gossamer.errors import ConfigError
from gossamer.sim.runner import run_algorithm, task_for
from gossamer.sim.scenario import Scenario

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 32, "batch_size": 4, "max_chars": 400_000, "val_windows": 32}


@pytest.fixture(scope="module")
def results():
    return run_spsa_finetune_bench(peers=3, pretrain_steps=60, finetune_steps=150, task_options=TINY, pretrain_inner_steps=10)


def test_finetune_lowers_loss_with_one_byte_per_step_and_equal_hashes(results, tmp_path) -> None:
    pre, fine = results.runs
    assert (pre.algorithm, fine.algorithm) == ("diloco", "spsa")
    e = fine.extra
    assert e["shard_loss_after"] < e["shard_loss_before"]
    assert fine.final_val_loss < fine.curve[0].val_loss
    assert e["state_hashes_equal"] and pre.extra["state_hashes_equal"]
    assert e["payload_bytes_per_peer"] == 150 * (3 - 1) == e["expected_payload_bytes_per_peer"]
    assert fine.bytes_sent_per_peer > e["payload_bytes_per_peer"]  # framing is counted separately
    path = tmp_path / "spsa.json"
    results.write(path)  # tensors kept by keep_state never reach the JSON
    data = json.loads(path.read_text())
    assert "final_params" not in data["runs"][1]
    assert data["runs"][1]["shard_loss_after"] == pytest.approx(e["shard_loss_after"])


def test_init_state_is_applied_to_every_peer() -> None:
    opts = dict(TINY, iid=True)
    pre = Scenario(task="charlm", algorithms=("diloco",), peers=2, steps=20, inner_steps=10, compute_time=0.02, task_options=opts, evals=1)
    task = task_for(pre)
    run = run_algorithm(pre, "diloco", task=task, keep_state=True)
    assert run.final_params is not None
    fresh = Scenario(task="charlm", algorithms=("spsa",), peers=2, steps=2, compute_time=0.02, task_options=opts, evals=1)
    started = run_algorithm(fresh, "spsa", task=task, init_state=run.final_params)
    assert started.curve[0].val_loss == pytest.approx(run.final_val_loss, abs=1e-6)
    baseline = run_algorithm(fresh, "spsa", task=task)
    assert baseline.curve[0].val_loss != pytest.approx(run.final_val_loss, abs=1e-3)
    assert started.extra["state_hashes_equal"]
    with pytest.raises(ConfigError, match="init_state"):
        run_algorithm(fresh, "spsa", task=task, init_state=[torch.zeros(1)])

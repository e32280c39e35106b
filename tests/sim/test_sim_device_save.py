"""Issue 13.5 (simulator) and 13.6: ``--save`` writes the trained model as
safetensors that plain torch loads; ``--device`` is checked before any work.

No GPU is available where these run: CUDA is tested only for its refusal
(one line, exit 2, nothing written) and the device plumbing on ``cpu``
(explicit ``--device cpu`` runs and changes nothing). See
tests/comm/test_collective_devices.py for the collectives.
"""

from __future__ import annotations

import collections
import json

import pytest
import torch
from safetensors.torch import load_file

import gossamer
from gossamer.cli import main
from gossamer.devices import device_arg, resolve_device, to_device
from gossamer.sim.runner import run_algorithm

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot be seen")

RUN = ["--task", "digits", "--peers", "2", "--steps", "6", "--inner-steps", "3", "--evals", "1", "--link", "1gbit,1ms"]


def test_save_one_file_per_algorithm_strict_load_bit_identical(tmp_path, capsys) -> None:
    path = tmp_path / "model.safetensors"
    assert main(["simulate", *RUN, "--algorithms", "ddp,diloco", "--save", str(path), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert not path.exists()
    scenario = gossamer.Scenario(task="digits", algorithms=("ddp", "diloco"), peers=2, steps=6, inner_steps=3, evals=1,
                                 link="1gbit,1ms")
    for algorithm in ("ddp", "diloco"):
        saved = tmp_path / f"model-{algorithm}.safetensors"
        assert f"wrote {saved}" in out
        state = load_file(str(saved))
        model = gossamer.make_task("digits").make_model(0)
        model.load_state_dict(state)  # strict: exactly the model's keys and shapes
        final = run_algorithm(scenario, algorithm, keep_state=True).final_params
        params = [p for p in model.parameters() if p.requires_grad]
        assert len(params) == len(final)
        for p, f in zip(params, final):
            assert p.dtype == f.dtype and torch.equal(p, f)  # bit-identical to the run's final shared model
        fresh = gossamer.make_task("digits").make_model(0)
        assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), params))  # trained, not initial
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert [r["saved_model"] for r in runs] == [str(tmp_path / f"model-{a}.safetensors") for a in ("ddp", "diloco")]


def test_save_one_algorithm_uses_the_path_as_given(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    res = gossamer.simulate(task="quadratic", algorithms=("diloco",), peers=2, steps=4, inner_steps=2, evals=1,
                            save=str(path))
    state = load_file(str(path))
    model = gossamer.make_task("quadratic").make_model(0)
    model.load_state_dict(state)
    assert res.runs[0].extra["saved_model"] == str(path)


def test_save_to_a_missing_folder_is_one_line_before_work(tmp_path, capsys) -> None:
    target = tmp_path / "nope" / "m.safetensors"
    assert main(["simulate", *RUN, "--algorithms", "ddp", "--save", str(target), "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_device_cuda_without_cuda_exits_2_one_line_before_any_work(tmp_path, capsys, device) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", *RUN, "--device", device, "--json", str(tmp_path / "r.json"), "--save", str(tmp_path / "m.st")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --device" in err and "not available" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad, match", [("tpu", "unknown device 'tpu'; accepted: cpu, cuda, cuda:N"),
                                        ("mps", "'mps' is not supported"), ("meta", "'meta' is not supported"),
                                        (3, "device must be a string")])
def test_unknown_or_unsupported_device_is_a_config_error(bad, match) -> None:
    with pytest.raises(gossamer.ConfigError, match=match):
        gossamer.Scenario(task="quadratic", device=bad)


@no_cuda
def test_scenario_device_cuda_is_a_config_error_naming_the_reason() -> None:
    with pytest.raises(gossamer.ConfigError, match="device 'cuda' is not available: .*use cpu"):
        gossamer.simulate(task="quadratic", device="cuda", steps=2)


def test_device_cpu_explicit_runs_and_changes_nothing(tmp_path) -> None:
    assert device_arg(" CPU ") == "cpu" and resolve_device(None) == torch.device("cpu")
    assert main(["simulate", *RUN, "--algorithms", "ddp", "--device", "cpu", "--json", str(tmp_path / "a.json")]) == 0
    assert main(["simulate", *RUN, "--algorithms", "ddp", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["device"] == b["device"] == "cpu"
    assert a["runs"][0]["final_state_hash"] == b["runs"][0]["final_state_hash"]
    assert a["runs"][0]["final_val_loss"] == b["runs"][0]["final_val_loss"]


def test_to_device_moves_every_tensor_of_a_batch() -> None:
    Pair = collections.namedtuple("Pair", "x y")
    x, y = torch.ones(2), torch.zeros(2, dtype=torch.long)
    batch = {"pair": Pair(x, y), "list": [x, "text", 3], "t": (y,)}
    same = to_device(batch, "cpu")
    assert same["pair"].x is x and isinstance(same["pair"], Pair) and same["list"][1:] == ["text", 3]
    moved = to_device(batch, "meta")  # a device that is not the CPU (every torch build has it)
    assert isinstance(moved["pair"], Pair) and moved["pair"].x.device.type == "meta"
    assert moved["pair"].y.dtype == torch.long and moved["list"][0].device.type == "meta"
    assert moved["t"][0].device.type == "meta" and moved["list"][1:] == ["text", 3]

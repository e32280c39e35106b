"""docs/own-task.md runs as written and imports only ``gossamer`` top-level names."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-task.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_imports_only_top_level_gossamer_names() -> None:
    text = DOC.read_text()
    assert not re.search(r"(from|import)\s+gossamer\.", text), "the docs import from gossamer's submodules"


def test_doc_example_runs_and_its_saved_model_loads(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    example = next(b for b in blocks if b.startswith("import torch"))
    load = next(b for b in blocks if b.startswith("from safetensors"))
    scope: dict = {"__name__": "own_task_doc"}
    exec(compile(example, str(DOC), "exec"), scope)  # noqa: S102 - our own documentation
    results = scope["results"]
    assert results.task == "linreg" and [r.algorithm for r in results.runs] == ["ddp", "diloco", "fedavg"]
    for run in results.runs:
        assert run.metric_name == "val_r2" and run.final_val_metric > 0.5, (run.algorithm, run.final_val_metric)
        assert (tmp_path / f"linreg-{run.algorithm}.safetensors").is_file()
    assert '"task": "linreg"' in (tmp_path / "linreg.json").read_text()
    out = capsys.readouterr().out
    assert out.startswith("linreg\n") and "val_r2" in out
    exec(compile(load, str(DOC), "exec"), scope)  # noqa: S102
    assert isinstance(scope["model"].weight, torch.nn.Parameter)

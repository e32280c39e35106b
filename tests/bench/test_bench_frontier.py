"""bench frontier at a toy size: ratios and gaps from the measured runs, schema, plot, CLI errors."""

from __future__ import annotations

import json

import pytest

from gossamer.bench.frontier import FrontierRun, parse_run, plot_frontier, run_frontier_bench
from gossamer.cli import main
from gossamer.errors import ConfigError

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16, "batch_size": 2, "max_chars": 200_000, "val_windows": 8}


def test_ratios_and_gaps_come_from_the_runs(tmp_path):
    runs = [FrontierRun("sparse", "sparseloco", "ctopk:8:256:1bit+ef"), FrontierRun("ddp", "ddp", "fp32"),
            FrontierRun("dense", "diloco", "fp32", inner_steps=4)]
    res = run_frontier_bench(peers=3, steps=16, runs=runs, inner_steps=8, task_options=TINY)
    by = {r.extra["label"]: r for r in res.runs}
    assert res.runs[0].extra["label"] == "ddp"  # the baseline runs first
    base = by["ddp"]
    for label, r in by.items():
        assert r.extra["bytes_ratio_vs_ddp"] == pytest.approx(base.bytes_sent_per_peer / r.bytes_sent_per_peer)
        assert r.extra["loss_gap_vs_ddp"] == pytest.approx(r.final_val_loss / base.final_val_loss - 1)
    assert by["dense"].extra["inner_steps"] == 4 and by["sparse"].extra["inner_steps"] == 8
    assert by["dense"].extra["bytes_ratio_vs_ddp"] == pytest.approx(4, rel=0.05)  # H=4, fp32 both
    assert by["sparse"].extra["bytes_ratio_vs_ddp"] > 50 * 8  # chunked top-k 1-bit at H=8
    data = res.to_json()
    assert data["bench"] == "frontier" and {"bytes_ratio_vs_ddp", "loss_gap_vs_ddp", "meets_target", "curve"} <= set(data["runs"][1])
    png = tmp_path / "f.png"
    plot_frontier(res, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_configurations_fail_before_any_training():
    with pytest.raises(ConfigError, match="needs a ddp run"):
        run_frontier_bench(runs=[FrontierRun("a", "diloco")])
    with pytest.raises(ConfigError, match="duplicate run labels"):
        run_frontier_bench(runs=[FrontierRun("a", "ddp"), FrontierRun("a", "diloco")])
    with pytest.raises(ConfigError, match="bad codec spec"):
        run_frontier_bench(runs=[FrontierRun("ddp", "ddp"), FrontierRun("b", "diloco", "ctopk:0")])
    assert parse_run("s=sparseloco:40@ctopk:64+ef:0.95") == FrontierRun("s", "sparseloco", "ctopk:64+ef:0.95", 40)
    for bad in ("sparseloco", "x=diloco:0", "=ddp", "a=sparseloco:", "a=diloco@"):
        with pytest.raises(ConfigError, match="bad run"):
            parse_run(bad)


def test_cli_errors_exit_2(capsys):
    assert main(["bench", "frontier", "--only", "nope"]) == 2
    assert "unknown run(s) nope" in capsys.readouterr().err
    assert main(["bench", "frontier", "--runs", "x=diloco@zip"]) == 2
    assert "bad codec spec 'zip'" in capsys.readouterr().err
    assert main(["bench", "frontier", "--runs", "x=diloco", "--only", "ddp"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_users_ddp_run_is_the_baseline(tmp_path):
    out = tmp_path / "f.json"
    assert main(["bench", "frontier", "--task", "quadratic", "--peers", "2", "--steps", "6", "--inner-steps", "3",
                 "--runs", "mine=ddp@int8;d=diloco", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["label"] for r in data["runs"]] == ["mine", "d"]  # no second, built-in ddp
    assert data["runs"][0]["codec"] == "int8:256"
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"

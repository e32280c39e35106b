"""Training benchmarks at toy sizes: schema, summaries, plots, CLI."""

from __future__ import annotations

import json

import pytest

from gossamer.bench.compression import run_compression_bench
from gossamer.bench.robust import plot_heatmap, run_robust_bench
from gossamer.cli import main


def test_robust_bench_matrix_schema_and_heatmap(tmp_path):
    res = run_robust_bench(peers=7, byzantine=2, steps=40, aggregators=("mean", "median"), attacks=("none", "signflip"))
    data = res.to_json()
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert {"attack", "byzantine", "aggregator", "final_val_metric", "curve"} <= set(run)
    by = {(r["aggregator"], r["attack"]): r for r in data["runs"]}
    assert by[("mean", "none")]["byzantine"] == 0 and by[("mean", "signflip")]["byzantine"] == 2
    summary = data["robustness"]
    assert set(summary["aggregators"]) == {"mean", "median"}
    # sign-flipping two of seven peers hurts the plain mean more than the median
    assert by[("median", "signflip")]["final_val_metric"] > by[("mean", "signflip")]["final_val_metric"]
    png = tmp_path / "h.png"
    plot_heatmap(res, str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_compression_bench_counts_real_encoded_bytes():
    res = run_compression_bench(peers=4, steps=20, codecs=("none", "int8", "topk:0.01+ef"))
    runs = {r.codec: r for r in res.runs}
    assert set(runs) == {"none", "int8:256", "topk:0.01+ef"}
    ratio_int8 = res.extra["vs_dense"]["int8:256"]["bytes_ratio"]
    assert 3.0 < ratio_int8 < 4.0  # 4 bytes -> 1 byte plus per-block scales and framing
    assert res.extra["vs_dense"]["topk:0.01+ef"]["bytes_ratio"] > 10


def test_bench_cli_commands(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["bench", "codecs", "--sizes", "4K", "--repeats", "1", "--codecs", "int8,fp16", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["codec"] for r in rows} == {"int8:256", "fp16"}
    assert {"codec", "elements", "throughput_MBps", "memcpy_MBps", "throughput_ratio_vs_memcpy", "compression_ratio", "rel_error"} <= set(rows[0])
    assert main(["bench", "codecs", "--sizes", "lots"]) == 2
    assert "bad element count 'lots'" in capsys.readouterr().err
    assert main(["bench", "codecs", "--codecs", "zstd"]) == 2


@pytest.mark.slow
def test_bench_comm_cli_on_quadratic(tmp_path):
    out = tmp_path / "comm.json"
    assert main(["bench", "comm", "--task", "quadratic", "--peers", "3", "--steps", "40", "--inner-steps", "10", "--codec", "none", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["bytes_ratio_ddp_over_diloco"] == pytest.approx(10, rel=0.02)


def test_robust_bench_rejects_an_invalid_configuration_before_running():
    from gossamer.errors import ConfigError

    with pytest.raises(ConfigError, match="bucketing"):
        run_robust_bench(peers=10, byzantine=3, steps=5, aggregators=("mean", "bucketing:2+cclip"), attacks=("none",))


def test_equal_bytes_bench_matches_gossip_bytes_to_diloco(tmp_path):
    out = tmp_path / "eq.json"
    args = ["bench", "equal-bytes", "--task", "digits", "--peers", "4", "--steps", "60", "--inner-steps", "6", "--json", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    dil, gos = data["runs"]
    assert (dil["algorithm"], gos["algorithm"]) == ("diloco", "gossip")
    assert dil["codec"] == gos["codec"] == "int4:128"
    # matched within the bytes of one round either way
    assert 0.75 < data["bytes_ratio"] < 1.25
    assert gos["final_val_metric"] > 0.5  # the merged gossip model learned

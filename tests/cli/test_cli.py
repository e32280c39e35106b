"""The command line: error paths (one line, exit 2, no traceback) and a small end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gossamer.cli import main

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gossamer.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["simulate", "--task", "imagenet"], "unknown task 'imagenet'; accepted: charlm, digits, quadratic"),
        (["simulate", "--algorithms", "ddp,sgd"], "unknown algorithm 'sgd'; accepted: ddp, fedavg, diloco"),
        (["simulate", "--peers", "0"], "expected a positive integer, got 0"),
        (["simulate", "--peers", "-3"], "expected a positive integer, got -3"),
        (["simulate", "--steps", "many"], "expected a positive integer, got 'many'"),
        (["simulate", "--link", "fast"], "bad link spec 'fast'"),
        (["simulate", "--link", "100mbit,50parsecs"], "bad latency"),
        (["simulate", "--codec", "zip"], "zip"),
        (["simulate", "--aggregator", "krum", "--byzantine", "3", "--attack", "ipm", "--peers", "6", "--task", "digits"], "n > 2f + 2"),
        (["simulate", "--byzantine", "2", "--task", "digits"], "no attack"),
        (["simulate", "--attack", "alie", "--task", "digits"], "needs Byzantine peers"),
        (["simulate", "--attack", "labelflip", "--byzantine", "1"], "only the digits task"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment, capsys):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0]


@pytest.mark.parametrize("args", [["simulate", "--task", "imagenet"], ["simulate", "--peers", "0"]])
def test_bad_input_in_a_real_process_has_no_traceback(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_unknown_toml_key_and_bad_toml(tmp_path, capsys):
    bad_key = tmp_path / "s.toml"
    bad_key.write_text('task = "digits"\npeer = 4\n')
    assert main(["simulate", str(bad_key)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) peer" in err and "accepted:" in err and "peers" in err
    broken = tmp_path / "b.toml"
    broken.write_text("task = \n")
    assert main(["simulate", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_simulate_end_to_end_writes_results_json_and_plot(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'task = "digits"\nalgorithms = ["ddp", "diloco"]\npeers = 3\nsteps = 30\ninner_steps = 10\n'
        'link = "10mbit,20ms"\nseed = 3\nevals = 3\ncodec = "none"\n[task_options]\nbatch_size = 16\n'
    )
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["simulate", str(scenario), "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert data["task"] == "digits" and data["peers"] == 3 and data["link"] == "10mbit,20ms" and data["seed"] == 3
    runs = {r["algorithm"]: r for r in data["runs"]}
    keys = {"algorithm", "codec", "aggregator", "final_val_loss", "final_val_metric", "bytes_sent_per_peer",
            "peak_bytes_per_round", "sim_time_s", "wall_time_s", "steps", "rounds", "curve"}
    for r in runs.values():
        assert keys <= set(r)
        assert r["steps"] == 30 and r["state_hashes_equal"] is True
        assert [p["step"] for p in r["curve"]] == [0, 10, 20, 30]
        assert set(r["curve"][0]) >= {"step", "sim_time_s", "bytes_sent_per_peer", "val_loss"}
        assert r["curve"][-1]["bytes_sent_per_peer"] == pytest.approx(r["bytes_sent_per_peer"])
    assert runs["ddp"]["rounds"] == 30 and runs["diloco"]["rounds"] == 3
    # ddp sends every step, diloco every 10 steps: the counters show it
    assert runs["ddp"]["bytes_sent_per_peer"] / runs["diloco"]["bytes_sent_per_peer"] == pytest.approx(10, rel=0.01)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_diloco_sends_int4_pseudo_gradients_by_default(tmp_path):
    out = tmp_path / "d.json"
    args = ["simulate", "--task", "quadratic", "--algorithms", "ddp,diloco", "--peers", "3", "--steps", "20",
            "--inner-steps", "5", "--evals", "1", "--json", str(out)]
    assert main(args) == 0
    runs = {r["algorithm"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["ddp"]["codec"] == "none" and runs["diloco"]["codec"] == "int4:128"
    # 4 rounds instead of 20 (5x), and fewer bytes per round on top (on 32 values the
    # int4 header and framing dominate, so only ~1.5x more here)
    assert runs["ddp"]["bytes_sent_per_peer"] / runs["diloco"]["bytes_sent_per_peer"] > 6


def test_same_seed_same_bytes_and_losses(tmp_path):
    args = ["simulate", "--task", "quadratic", "--algorithms", "diloco", "--peers", "3", "--steps", "20",
            "--inner-steps", "5", "--compute-time", "0.01", "--evals", "2"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main([*args, "--json", str(a)]) == 0
    assert main([*args, "--json", str(b)]) == 0
    ra, rb = json.loads(a.read_text())["runs"][0], json.loads(b.read_text())["runs"][0]
    for key in ("final_val_loss", "bytes_sent_per_peer", "sim_time_s", "final_state_hash", "curve"):
        assert ra[key] == rb[key], key


def test_byzantine_run_records_attack_and_robust_aggregator_holds(tmp_path):
    out = tmp_path / "b.json"
    common = ["simulate", "--task", "quadratic", "--algorithms", "ddp", "--peers", "7", "--steps", "60",
              "--byzantine", "2", "--attack", "signflip", "--evals", "2"]
    assert main([*common, "--aggregator", "median", "--json", str(out)]) == 0
    robust = json.loads(out.read_text())["runs"][0]
    assert robust["attack"] == "signflip" and robust["byzantine"] == 2 and robust["aggregator"] == "median"
    assert main([*common, "--aggregator", "mean", "--json", str(out)]) == 0
    naive = json.loads(out.read_text())["runs"][0]
    assert robust["final_val_metric"] < naive["final_val_metric"]


def test_options_that_do_not_apply_are_one_line_exit_2(tmp_path):
    """An option one runtime accepts, the other accepts too; one that does not
    apply to the chosen algorithm is one line naming it, exit status 2."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "gossamer.cli", *args], capture_output=True, text=True, timeout=120,
                              env={**__import__("os").environ, "GOSSAMER_HOME": str(tmp_path)})

    for args, needle in [
        (["peer", "--coordinator", "127.0.0.1:1", "--algorithm", "spsa", "--inner-steps", "5"], "--inner-steps does not apply to spsa"),
        (["peer", "--coordinator", "127.0.0.1:1", "--algorithm", "gossip", "--option", "fragments=2"], "unknown option(s) fragments for gossip"),
        (["peer", "--coordinator", "127.0.0.1:1", "--algorithm", "diloco", "--option", "oops"], "--option must be KEY=VALUE"),
        (["simulate", "--task", "quadratic", "--algorithms", "diloco", "--option", "topology=ring"], "--option topology applies to none of diloco"),
        (["simulate", "--task", "quadratic", "--json", str(tmp_path / "missing" / "r.json")], "does not exist"),
        (["simulate", "--task", "quadratic", "--algorithms", "diloco", "--option", "lr=abc"], "option lr must be a float"),
        (["peer", "--coordinator", "127.0.0.1:1", "--algorithm", "streaming_diloco", "--option", "fragments=2.5"], "option fragments must be an int"),
        (["peer", "--coordinator", "127.0.0.1:1", "--algorithm", "diloco", "--option", "nesterov=maybe"], "option nesterov must be a bool"),
        (["peer", "--coordinator", "127.0.0.1:1", "--algorithm", "spsa", "--codec", "int8"], "--codec does not apply to spsa"),
        (["simulate", "--task", "quadratic", "--algorithms", "spsa", "--codec", "int8"], "--codec does not apply to spsa"),
        (["simulate", "--task", "quadratic", "--algorithms", "gossip", "--aggregator", "median"], "--aggregator does not apply"),
        (["simulate", "--task", "quadratic", "--inner-steps", "10", "--option", "inner_steps=5"], "inner_steps given twice"),
        (["peer", "--coordinator", "127.0.0.1:1", "--inner-steps", "10", "--option", "inner_steps=5"], "inner_steps given twice"),
        (["simulate", "--task", "quadratic", "--peers", "3", "--peer-ids", "a,b"], "peer_ids must be 3 distinct ids"),
    ]:
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, proc.stderr)


def test_simulate_option_reaches_the_algorithm_and_codec_is_reported(tmp_path):
    """--option sets an algorithm option in the simulator too; results report the
    codec that travelled (streaming_diloco: int4; gossip: fp32 unless --codec)."""
    import json

    out = tmp_path / "r.json"
    assert main(["simulate", "--task", "quadratic", "--algorithms", "gossip,streaming_diloco", "--peers", "4", "--steps", "20",
                 "--inner-steps", "5", "--option", "topology=\"torus\"", "--option", "fragments=2", "--json", str(out)]) == 0
    runs = {r["algorithm"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["gossip"]["codec"] == "none" and runs["gossip"]["options"]["topology"] == "torus"
    assert runs["streaming_diloco"]["codec"] == "int4:128" and runs["streaming_diloco"]["options"]["fragments"] == 2
    assert runs["gossip"]["final_state_hash"] and len(runs["gossip"]["final_state_hashes"]) == 4
    out8 = tmp_path / "r8.json"
    assert main(["simulate", "--task", "quadratic", "--algorithms", "gossip", "--peers", "4", "--steps", "20",
                 "--inner-steps", "5", "--codec", "int8", "--json", str(out8)]) == 0
    g8 = json.loads(out8.read_text())["runs"][0]
    assert g8["codec"].startswith("int8") and g8["bytes_sent_per_peer"] < 0.5 * runs["gossip"]["bytes_sent_per_peer"]


def test_os_level_problems_are_one_line_exit_2_before_any_work(tmp_path):
    """Issue 10.8: --json into a missing folder failed only after the run; a
    --listen address not on this host gave a traceback."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "gossamer.cli", *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "GOSSAMER_HOME": str(tmp_path)})

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = [
            (["peer", "--coordinator", "127.0.0.1:1", "--json", str(tmp_path / "no" / "p.json")], "does not exist"),
            (["coordinator", "--listen", "192.0.2.1:7000"], "cannot listen on 192.0.2.1:7000"),
            (["peer", "--coordinator", "127.0.0.1:1", "--listen", "192.0.2.1:0"], "cannot listen on 192.0.2.1:0"),
            (["coordinator", "--listen", f"127.0.0.1:{busy.getsockname()[1]}"], "cannot listen on"),
            (["coordinator", "--events", str(tmp_path / "no" / "e.jsonl")], "does not exist"),
            (["peer", "--coordinator", "127.0.0.1:1", "--json", str(tmp_path)], "it is a folder"),
            (["peer", "--coordinator", "127.0.0.1:1", "--checkpoint", str(afile)], "checkpoint folder"),
        ]
        for args, needle in cases:
            proc = run(*args)
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, proc.stderr)
    finally:
        busy.close()

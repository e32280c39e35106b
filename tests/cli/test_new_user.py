"""What a new user hit on first contact (issue 13, item 8), each as the user
ran it: the README's usage line, the docs' one-machine swarm, help text,
bench output, table headers and titles, the demo plot, bad peer counts."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossamer.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own exits (help, bad flags)
        return int(exc.code or 0)


def test_alpha_with_charlm_runs_on_module_shards(tmp_path, capsys):
    """README: `gossamer simulate --task charlm ... [--iid | --alpha A]`."""
    out = tmp_path / "r.json"
    code = main(["simulate", "--task", "charlm", "--alpha", "0.5", "--algorithms", "ddp", "--peers", "2",
                 "--steps", "2", "--evals", "1", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "non-iid (alpha 0.5)" in captured.out  # the title says how the data was split
    assert json.loads(out.read_text())["runs"][0]["steps"] == 2


@pytest.mark.parametrize("task,limit", [("charlm", "at most 419 peers"), ("digits", "at most")])
def test_more_peers_than_data_is_one_line_exit_2_before_training(task, limit, capsys):
    t0 = time.perf_counter()
    code = main(["simulate", "--task", task, "--peers", "5000", "--algorithms", "ddp", "--steps", "2"])
    elapsed = time.perf_counter() - t0
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "5000 peers" in lines[0] and "use at most" in lines[0], captured.err
    if task == "charlm":
        assert re.search(r"at most \d+ peers", lines[0])
    assert "steps" not in captured.out  # no progress bar: nothing was trained
    assert elapsed < 60


@pytest.mark.parametrize("argv", [["simulate", "--help"], ["peer", "--help"], ["bench", "parity", "--help"],
                                  ["bench", "algorithms", "--help"]])
def test_help_names_every_algorithm(argv, capsys):
    from gossamer.algorithms import ALGORITHM_NAMES

    assert _exit_code(argv) == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for name in ALGORITHM_NAMES:
        assert re.search(rf"\b{name}\b", text), f"{name} missing from `gossamer {' '.join(argv)}`"


def test_help_does_not_import_torch():
    """Help names the algorithms without importing them (and torch) at start-up."""
    code = "import sys; from gossamer.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_bench_without_a_benchmark_lists_them_and_exits_2(capsys):
    assert _exit_code(["bench"]) == 2
    err = capsys.readouterr().err
    for name in ("comm", "frontier", "codecs", "robust", "parity", "transport"):
        assert re.search(rf"^\s+{name}\b", err, re.M), name
    assert err.strip().splitlines()[-1].startswith("gossamer bench: error:")


def test_bench_comm_prints_no_internal_targets(capsys):
    code = main(["bench", "comm", "--task", "quadratic", "--peers", "2", "--steps", "4", "--inner-steps", "2",
                 "--evals", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "fewer bytes than ddp" in out
    assert "target" not in out


def test_docs_name_no_file_outside_the_repository():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "/work/" not in text, f"{doc.name} points outside the repository"
    assert "issue's target" not in (ROOT / "docs" / "bench.md").read_text()


@pytest.mark.parametrize("task,header", [("digits", "val accuracy"), ("quadratic", "val rel dist to opt")])
def test_metric_column_names_the_metric(task, header, capsys):
    assert main(["simulate", "--task", task, "--algorithms", "ddp", "--peers", "2", "--steps", "2", "--evals", "1"]) == 0
    out = capsys.readouterr().out
    assert header in out
    assert "val metric" not in out


def test_title_names_byzantine_peers_attack_and_aggregator(capsys):
    argv = ["simulate", "--task", "quadratic", "--algorithms", "ddp", "--peers", "5", "--steps", "2", "--evals", "1",
            "--byzantine", "1", "--attack", "signflip"]
    assert main(argv) == 0
    title = " ".join(capsys.readouterr().out.split())
    assert "1 Byzantine (signflip)" in title and "aggregator mean" in title  # the plain mean, under attack, is named
    assert main([*argv, "--aggregator", "median"]) == 0
    assert "aggregator median" in " ".join(capsys.readouterr().out.split())


def test_demo_plot_leaves_out_zero_bytes_and_names_the_loss_unit(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    figures = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    png = tmp_path / "p.png"
    assert main(["simulate", "--task", "digits", "--algorithms", "ddp,diloco", "--peers", "2", "--steps", "8",
                 "--inner-steps", "4", "--evals", "2", "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000
    (fig,) = figures
    by_bytes, by_time = fig.axes[:2]
    assert by_bytes.get_xscale() == "log"
    for line in by_bytes.get_lines():
        assert min(line.get_xdata()) > 1000, "the 0-byte start is drawn on the log axis"
    assert [len(line.get_xdata()) for line in by_time.get_lines()] == [3, 3]  # the start stays on the time axis
    for ax in (by_bytes, by_time):
        assert ax.get_ylabel() == "validation loss (cross-entropy, nats)"


def test_charlm_loss_unit():
    from gossamer.tasks import make_task

    assert make_task("charlm").loss_unit == "nats per character"
    assert make_task("digits").loss_unit == "cross-entropy, nats"


def _swarm_snippet() -> str:
    text = (ROOT / "docs" / "swarm.md").read_text()
    section = text.split("## On one machine", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.slow
def test_swarm_md_one_machine_snippet_returns_and_frees_the_port(tmp_path):
    """docs/swarm.md's snippet, as written but shorter and on a free port:
    it returns once the peers are done, and the coordinator's port is free."""
    snippet = _swarm_snippet()
    assert "127.0.0.1:7000" in snippet and "--steps 1000" in snippet
    port = _free_port()
    script = snippet.replace("127.0.0.1:7000", f"127.0.0.1:{port}").replace("--steps 1000", "--steps 8") \
                    .replace("--inner-steps 20", "--inner-steps 4")
    env = {**os.environ, "GOSSAMER_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("the docs/swarm.md snippet did not return")
    assert proc.returncode == 0, out
    for i in range(3):
        report = json.loads((tmp_path / f"peer{i}.json").read_text())
        assert report, out
    assert _port_is_free(port), "the coordinator still holds its port"


def test_peer_threads_default_to_a_quarter_of_the_cores_and_are_validated():
    import subprocess
    import sys

    from gossamer.swarm.cli import default_threads

    assert [default_threads(c) for c in (1, 2, 4, 7, 16, 64)] == [1, 1, 1, 1, 4, 16]
    run = subprocess.run([sys.executable, "-c", "import sys; from gossamer.cli import main; sys.exit(main(sys.argv[1:]))",
                          "peer", "--coordinator", "127.0.0.1:9", "--task", "digits", "--threads", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--threads" in run.stderr


def test_a_task_whose_metric_is_its_loss_gets_one_loss_column_with_its_unit():
    from rich.console import Console

    from gossamer.cli import _results_table
    from gossamer.trace.results import Results, RunResult

    run = RunResult(algorithm="ddp", codec="none", aggregator="mean", final_val_loss=2.0, final_val_metric=2.0,
                    metric_name="val_loss_nats_per_char", bytes_sent_per_peer=1.0, peak_bytes_per_round=1,
                    sim_time_s=1.0, wall_time_s=1.0, steps=1, rounds=1)
    con = Console(width=300, record=True)
    con.print(_results_table(Results(task="charlm", peers=2, link="x", seed=0, runs=[run]), title="t"))
    text = con.export_text()
    assert "val loss nats per char" in text
    assert text.count("2.0000") == 1  # not the same number twice under two headers

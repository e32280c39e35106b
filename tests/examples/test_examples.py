"""Issue 13.9: every script in examples/ runs, as a user would run it, and says what it promised."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIMIT = 180  # seconds: each example must finish in under 3 minutes on 2 cores


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, GOSSAMER_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")


def _run(tmp_path: Path, *args: str) -> str:
    run = subprocess.run([sys.executable, *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=LIMIT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_every_example_is_covered_here():
    covered = {"own_loop_tcp.py", "own_loop_simulated.py", "resume_from_checkpoint.py", "gpt2_two_peers.py",
               "own_task_simulated.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == covered


def test_own_loop_tcp(tmp_path):
    out = _run(tmp_path, str(EXAMPLES / "own_loop_tcp.py"))
    lines = [ln for ln in out.splitlines() if ln.startswith("peer ")]
    assert len(lines) == 2 and all("10 rounds" in ln for ln in lines), out
    assert len({ln.rsplit(" ", 1)[1] for ln in lines}) == 1, out  # one shared state
    assert all(float(re.search(r"accuracy ([\d.]+)%", ln).group(1)) > 70 for ln in lines), out


def test_own_task_simulated(tmp_path):
    out = _run(tmp_path, str(EXAMPLES / "own_task_simulated.py"))
    assert "task: my-digits" in out, out
    acc = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+) +accuracy +([\d.]+)%", out, re.M)}
    assert set(acc) == {"ddp", "diloco", "sparseloco"} and acc["diloco"] > 70, out
    assert "saved diloco model loads: Sequential" in out and (tmp_path / "my-digits-diloco.safetensors").is_file()


def test_own_loop_simulated(tmp_path):
    out = _run(tmp_path, str(EXAMPLES / "own_loop_simulated.py"))
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert set(rows) == {"diloco", "sparseloco"} and all("peers agree: True" in r for r in rows.values()), out
    kb = {k: float(re.search(r"([\d.]+) kB sent", r).group(1)) for k, r in rows.items()}
    assert kb["sparseloco"] < kb["diloco"] / 5, out


def test_resume_from_checkpoint(tmp_path):
    out = _run(tmp_path, str(EXAMPLES / "resume_from_checkpoint.py"))
    assert out.count("resumed at step 40") == 2, out
    assert out.count("stopped at step 40, 4 rounds committed") == 2, out
    assert out.count("stopped at step 80, 8 rounds committed") == 2, out
    finals = re.findall(r"stopped at step 80.*shared state (\w+)", out)
    assert len(set(finals)) == 1, out


def _coordinator(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """`gossamer coordinator --listen 127.0.0.1:0 --min-peers 2`, as the docs run it; its address."""
    proc = subprocess.Popen([sys.executable, "-m", "gossamer.cli", "coordinator", "--listen", "127.0.0.1:0",
                             "--min-peers", "2"], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, seen = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        m = re.search(r"listening on (\S+:\d+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the coordinator did not start: {seen}")


def _two(tmp_path: Path, commands: list[list[str]]) -> list[str]:
    peers = [subprocess.Popen(c, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    outs = [p.communicate(timeout=LIMIT) for p in peers]
    for p, (out, err) in zip(peers, outs):
        assert p.returncode == 0, out + err[-3000:]
    return [out for out, _ in outs]


def test_gpt2_two_peers_as_the_docstring_says(tmp_path):
    pytest.importorskip("transformers", reason="the examples extra (pip install gossamer[examples]) is not installed")
    coordinator, address = _coordinator(tmp_path)
    try:
        outs = _two(tmp_path, [[sys.executable, str(EXAMPLES / "gpt2_two_peers.py"), address, str(r)] for r in (0, 1)])
        done = [re.search(r"done: (\d+) rounds, \d+ bytes sent, state (\w+)", out) for out in outs]
        assert all(done) and {d.group(1) for d in done} == {"6"} and len({d.group(2) for d in done}) == 1, outs
        losses = [float(x) for x in re.findall(r"loss ([\d.]+)", outs[0])]
        assert losses[-1] < 4.0 < 5.545  # from ln(256) = 5.545 nats for a uniform guess
    finally:
        coordinator.kill()
        coordinator.wait(10)


def test_the_one_page_in_docs_optimizer_md_runs_as_written(tmp_path):
    # docs/optimizer.md: the peer program and the three commands that run it on one machine
    page = (EXAMPLES.parent / "docs" / "optimizer.md").read_text()
    section = page.split("## Two processes on one machine", 1)[1].split("\n## ", 1)[0]
    program = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mypeer.py").write_text(program)
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert commands[0] == "gossamer coordinator --listen 127.0.0.1:7000 --min-peers 2 &"
    coordinator, address = _coordinator(tmp_path)  # the same command, on a free port
    try:
        runs = [c.rstrip(" &").replace("127.0.0.1:7000", address) for c in commands[1:]]
        assert len(runs) == 2 and all(r.startswith('python -c "') for r in runs), commands
        outs = _two(tmp_path, [[sys.executable, "-c", r[len('python -c "'):-1]] for r in runs])
        assert all(re.fullmatch(r"10 rounds, \d+ bytes sent\n", out) for out in outs), outs
    finally:
        coordinator.kill()
        coordinator.wait(10)

"""Issue 13.6: `gossamer peer --device` (no GPU here: the check and the CPU plumbing)."""

from __future__ import annotations

import subprocess
import sys

import torch


def test_a_device_that_is_not_there_is_one_line_and_exit_2_before_connecting(tmp_path):
    if torch.cuda.is_available():  # pragma: no cover - a GPU machine: cuda is there
        return
    run = subprocess.run([sys.executable, "-m", "gossamer.cli", "peer", "--coordinator", "127.0.0.1:9", "--device",
                          "cuda", "--key", str(tmp_path / "k.pem")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "device 'cuda' is not available" in lines[0], run.stderr
    assert not (tmp_path / "k.pem").exists()  # nothing done before the check


def test_explicit_cpu_peers_swarm_with_default_peers_and_agree(procs):
    port = procs.coordinator("--min-peers", "2")
    procs.peer("p0", port, "--inner-steps", "5", "--rounds", "3", "--device", "cpu")
    procs.peer("p1", port, "--inner-steps", "5", "--rounds", "3")
    for name in ("p0", "p1"):
        assert procs.wait(name, 120) == 0, procs.log(name)
    a, b = procs.report("p0"), procs.report("p1")
    assert a["rounds_completed"] == b["rounds_completed"] == 3
    assert a["final_state_hash"] == b["final_state_hash"]

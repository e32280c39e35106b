"""``gossamer simulate --ray``: the runs of a scenario on a real local Ray
cluster give the same results as in one process (wall-clock figures aside),
and without Ray the flag is one line and exit 2.

Ray is installed by ``dev.py`` (the ``ray`` extra); without it the cluster
tests are skipped, saying so."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gossamer.cli import main
from gossamer.sim.runner import MACHINE_KEYS

ARGS = ["simulate", "--task", "digits", "--peers", "4", "--algorithms", "ddp,diloco", "--steps", "10",
        "--inner-steps", "5", "--evals", "2", "--compute-time", "0.01", "--seed", "3"]


def _same_results(a: dict, b: dict, algorithms: list[str]) -> None:
    """Every field equal but the machine's own (wall times, memory)."""
    skip = {"wall_time_s", *MACHINE_KEYS}
    assert {k: v for k, v in a.items() if k != "runs"} == {k: v for k, v in b.items() if k != "runs"}
    assert [r["algorithm"] for r in a["runs"]] == [r["algorithm"] for r in b["runs"]] == algorithms
    for ra, rb in zip(a["runs"], b["runs"]):
        assert set(ra) == set(rb)
        for key in sorted(set(ra) - skip):
            assert ra[key] == rb[key], (ra["algorithm"], key)
        assert ra["final_state_hash"] and ra["sim_time_s"] > 0 and ra["bytes_sent_per_peer"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_cluster_at_an_address_gives_the_in_process_results(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'gossamer[ray]'); dev.py installs it")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        ray_bin = Path(shutil.which("ray") or "ray")
    port = _free_port()
    # a throwaway cluster of our own: no token authentication, no usage stats, its own temp dir
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    temp = tempfile.mkdtemp(prefix="gsr", dir="/tmp")  # short: Ray's unix socket paths live under it (108 bytes at most)
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", temp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # the head's GCS answers on its port
            assert head.poll() is None, "ray start --head exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
                time.sleep(0.5)
        local, remote = tmp_path / "local.json", tmp_path / "ray.json"
        assert main([*ARGS, "--json", str(local)]) == 0
        assert main([*ARGS, "--ray", f"127.0.0.1:{port}", "--json", str(remote)]) == 0
        out = capsys.readouterr().out
        assert f"on Ray at 127.0.0.1:{port}" in out and "wall per simulated round" in out
        _same_results(json.loads(local.read_text()), json.loads(remote.read_text()), ["ddp", "diloco"])
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=90)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)  # whatever of its session is left (it has its own)
            except ProcessLookupError:
                pass
            shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_simulate_with_a_local_ray_gives_the_in_process_results():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'gossamer[ray]'); dev.py installs it")
    import gossamer
    from gossamer.sim.cluster import run_on_ray
    from gossamer.sim.scenario import Scenario

    scenario = Scenario(task="quadratic", peers=3, algorithms=("streaming_diloco", "gossip"), steps=12,
                        inner_steps=4, evals=2, compute_time=0.02, seed=5)
    here = gossamer.simulate(scenario)
    seen = []
    there = run_on_ray(scenario, scenario.algorithms, init_options={"num_cpus": 2},
                       progress=lambda a, done, total: seen.append((a, done, total)))
    assert seen == [("streaming_diloco", 12, 12), ("gossip", 12, 12)]
    there_results = dataclasses.replace(here, runs=there)
    _same_results(here.to_json(), there_results.to_json(), ["streaming_diloco", "gossip"])


def test_ray_flag_without_ray_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    assert main([*ARGS, "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ray needs Ray" in err[0] and "gossamer[ray]" in err[0], err


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, needle", [
    ("not an address", "expected HOST:PORT"), ("host:", "expected HOST:PORT"), (":6379", "expected HOST:PORT"),
    ("http://x:1", "expected HOST:PORT"), ("127.0.0.1:99999", "expected HOST:PORT"),
    ("127.0.0.1:{free}", "nothing answers"), ("ray://127.0.0.1:{free}", "nothing answers"),
])
def test_a_bad_or_dead_ray_address_is_one_line_exit_2_at_once(address, needle, capsys):
    """Review of issue 14: a malformed address was a ValueError traceback, and a closed
    local port kept Ray retrying for over 10 minutes."""
    pytest.importorskip("ray")
    import time
    t0 = time.monotonic()
    assert main([*ARGS, "--ray", address.format(free=_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert time.monotonic() - t0 < 30

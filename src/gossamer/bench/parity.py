"""``gossamer bench parity``: the simulator against a real swarm, bit for bit.

For each algorithm, the same seeded scenario (a task, ``peers`` peers, a few
rounds, no faults) runs

(a) in the simulator (``sim.runner.run_algorithm``), with the real peers' ids
    in the swarm's rank order, and
(b) as a coordinator and ``peers`` real ``gossamer peer`` processes on
    127.0.0.1, peer ``i`` (in rank order) training on shard ``i/peers``.

It compares the final state hash (``Algorithm.shared_hash``; for algorithms
without bit parity, ``verify.combined_hash`` of every peer's hash in rank
order) and the payload bytes each peer sent. A difference is a bug in one of
the two runtimes. Result::

    {"runs": [{"algorithm", "sim_hash", "tcp_hash", "hash_equal",
               "sim_payload_bytes", "tcp_payload_bytes", "bytes_equal",
               "sim_wall_s", "tcp_wall_s"}], "task", "peers", "steps", "seed"}

``*_payload_bytes`` are per peer, in rank order. The peers run with one
torch thread each and a 60 s deadline floor (a loaded machine must not turn
a fault-free run into an aborted and retried one, which sends more bytes).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GossamerError
from .procs import LocalProcesses

#: Per algorithm: options that make a short run exercise what matters
#: (several rounds; gossip ends with its final merge; streaming overlaps).
PARITY_OPTIONS: dict[str, dict[str, Any]] = {
    "ddp": {},
    "fedavg": {},
    "diloco": {},
    "sparseloco": {},
    "streaming_diloco": {"fragments": 2, "tau": 1},
    "noloco": {},
    "spsa": {},
    "gossip": {"topology": "ring"},
}
PARITY_ALGORITHMS = tuple(PARITY_OPTIONS)


def _options(algorithm: str, steps: int) -> dict[str, Any]:
    opts = dict(PARITY_OPTIONS[algorithm])
    if algorithm == "gossip":
        opts["final_merge_at"] = steps
    return opts


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def run_parity(algorithm: str, *, task: str = "digits", peers: int = 4, steps: int = 12, inner_steps: int = 4,
               seed: int = 0, workdir: str | os.PathLike[str] | None = None, timeout: float = 240.0) -> dict[str, Any]:
    """One row of the bench (see the module docstring). Raises ``GossamerError``
    when the real swarm does not finish (its logs are in the message)."""
    from ..sim.runner import run_algorithm
    from ..sim.scenario import Scenario
    from ..swarm.keys import load_identity

    if algorithm not in PARITY_OPTIONS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; accepted: {', '.join(PARITY_ALGORITHMS)}")
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix=f"gossamer-parity-{algorithm}-")) if own_dir else Path(workdir)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    keys = [root / f"peer{i}.pem" for i in range(peers)]
    ids = [load_identity(k).peer_id for k in keys]
    order = sorted(range(peers), key=lambda i: ids[i])  # the swarm's rank order
    ranked = [ids[i] for i in order]
    options = _options(algorithm, steps)

    # (a) the simulator, with the real ids in rank order
    scenario = Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, inner_steps=inner_steps,
                        seed=seed, evals=1, algorithm_options={algorithm: options})
    t0 = time.perf_counter()
    sim = run_algorithm(scenario, algorithm, peer_ids=ranked)
    sim_wall = time.perf_counter() - t0

    # (b) real processes
    env = dict(os.environ, GOSSAMER_HOME=str(root / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    with LocalProcesses(root, env) as swarm:
        coord = swarm.start("coordinator", ["coordinator", "--listen", "127.0.0.1:0", "--min-peers", str(peers),
                                            "--key", str(root / "coordinator.pem")])
        port = swarm.coordinator_port("coordinator", coord)
        if port is None:
            raise GossamerError(f"parity {algorithm}: the coordinator did not start\n{swarm.logs()}")
        opt_args = [a for k, v in options.items() for a in ("--option", f"{k}={_toml(v)}")]
        inner = ["--inner-steps", str(inner_steps)] if "inner_steps" in scenario.options_for(algorithm) else []
        for rank, i in enumerate(order):
            swarm.start(f"peer{i}", ["peer", "--coordinator", f"127.0.0.1:{port}", "--task", task, "--algorithm", algorithm,
                                     "--steps", str(steps), *inner, "--seed", str(seed), "--shard", f"{rank}/{peers}",
                                     "--key", str(keys[i]), "--json", str(root / f"peer{i}.json"),
                                     "--deadline-floor", "60", *opt_args])
        deadline = time.monotonic() + timeout
        for proc in swarm.procs[1:]:
            left = max(0.1, deadline - time.monotonic())
            try:
                rc = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                raise GossamerError(f"parity {algorithm}: the swarm did not finish within {timeout:g} s\n{swarm.logs()}") from None
            if rc != 0:
                raise GossamerError(f"parity {algorithm}: a peer exited with status {rc}\n{swarm.logs()}")
    tcp_wall = time.perf_counter() - t0
    reports = [json.loads((root / f"peer{i}.json").read_text()) for i in order]
    from ..algorithms import ALGORITHMS
    from ..verify import combined_hash

    hashes = [r["final_state_hash"] for r in reports]
    parity = ALGORITHMS[algorithm][0].bit_parity
    tcp_hash = hashes[0] if parity and len(set(hashes)) == 1 else combined_hash(hashes) if not parity else "disagree:" + ",".join(h[:12] for h in hashes)
    sim_bytes = [int(b) for b in sim.extra["payload_bytes_sent_by_peer"]]
    tcp_bytes = [int(r["payload_bytes_sent"]) for r in reports]
    return {"algorithm": algorithm, "codec": sim.codec, "sim_hash": sim.extra["final_state_hash"], "tcp_hash": tcp_hash,
            "hash_equal": sim.extra["final_state_hash"] == tcp_hash, "sim_payload_bytes": sim_bytes,
            "tcp_payload_bytes": tcp_bytes, "bytes_equal": sim_bytes == tcp_bytes, "rounds": sim.rounds,
            "sim_wall_s": round(sim_wall, 3), "tcp_wall_s": round(tcp_wall, 3)}


def run_parity_bench(algorithms: list[str] | None = None, *, task: str = "digits", peers: int = 4, steps: int = 12,
                     inner_steps: int = 4, seed: int = 0,
                     progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Every algorithm's row (see the module docstring)."""
    names = list(algorithms or PARITY_ALGORITHMS)
    for a in names:
        if a not in PARITY_OPTIONS:
            raise ConfigError(f"unknown algorithm {a!r}; accepted: {', '.join(PARITY_ALGORITHMS)}")
    if peers < 2:
        raise ConfigError(f"peers must be >= 2, got {peers}")
    runs = []
    for k, a in enumerate(names):
        runs.append(run_parity(a, task=task, peers=peers, steps=steps, inner_steps=inner_steps, seed=seed))
        if progress is not None:
            progress(a, k + 1, len(names))
    return {"task": task, "peers": peers, "steps": steps, "inner_steps": inner_steps, "seed": seed,
            "cores": os.cpu_count(), "runs": runs}

"""``gossamer bench predict``: the simulator's clock against real processes on shaped links.

For each link setting and algorithm, the same seeded run happens twice:

(a) **measured**: a coordinator and ``peers`` real ``gossamer peer`` processes,
    each in its own Linux network namespace with a ``tc``-shaped uplink and
    downlink and a delay relay for the latency (``bench/netns.py``), every
    local step lengthened by ``GOSSAMER_TEST_STEP_SLEEP`` seconds; each peer
    writes a trace (``--trace``) of its compute, barrier waits and rounds;
(b) **predicted**: ``sim.runner.run_algorithm`` with the same peers (their
    ids, in the swarm's rank order, and shards), steps, inner steps, options,
    codec and seed, the same link (``Scenario.link``), the coordinator on a
    link with the same latency (``Scenario.coordinator``), and the compute
    time per step each real peer recorded (``compute_time`` = their mean,
    ``peer_profiles`` scale each peer to its own): compute is the model's
    input, the network and the swarm's round trips are what it predicts.

Calibration (``calibrate=True``, the default): before the settings, each
algorithm runs once more on ``CALIBRATION_LINK`` (10 Gbit/s, no delay),
where the network costs next to nothing; what the simulator misses of a
round there (the software's own work per round: state snapshots, hashes,
codec, the coordinator's processing, the processes' scheduling) becomes
``Scenario.round_overhead`` of that algorithm's predictions. Each row also
gives the prediction without it (``predicted_without_overhead_s``).

Both sides are read with the same code from their traces:

- **round** (s): the median time between the ends of consecutive rounds (a
  round ends when its last peer has the commit decision), round 0 excluded;
- **total** (s): from the end of round 0 to the end of the run (its last
  round, or its last local step after it).

Round 0 is left out of both because it carries one-time costs the model
does not have: the peers dial each other (a handshake of several round
trips) and the first call of a codec compiles its kernels (measured: 0.5 s
for int4). Its measured and predicted lengths are in ``runs``
(``measured_round0_s``, ``predicted_round0_s``).

Rows ``{"algorithm", "link", "metric": "round" | "total", "predicted_s",
"measured_s", "error_pct", "predicted_without_overhead_s",
"error_without_overhead_pct"}`` with ``error_pct = 100 (predicted / measured
- 1)``; ``runs`` and ``calibration`` carry the details of each pair (rounds,
round ends, compute per step per peer, payload bytes per peer of both, which
must be equal, the machine's load average during the measurement). Links
are simulator link specs (``UP[/DOWN],LATENCY``, latency one-way:
``20mbit,20ms`` is a 40 ms round trip); loss cannot be emulated here (no
``netem``).

What the comparison leaves out is in docs/concepts.md ("Network model") and
docs/bench.md, with measured figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GossamerError
from ..transport.sim import LinkSpec
from .netns import NetnsLab, support_problem
from .procs import LocalProcesses

#: Two settings: a home-broadband-like 20 Mbit/s with a 40 ms round trip, and a
#: 100 Mbit/s link with a 10 ms round trip (latencies are one-way).
DEFAULT_SETTINGS = ("20mbit,20ms", "100mbit,5ms")
DEFAULT_ALGORITHMS = ("ddp", "diloco", "streaming_diloco")
#: Per algorithm: steps, inner steps and options of a short run with several rounds.
PLANS: dict[str, dict[str, Any]] = {
    "ddp": {"steps": 6},
    "diloco": {"steps": 24, "inner_steps": 4},
    "streaming_diloco": {"steps": 24, "inner_steps": 8, "options": {"fragments": 4, "tau": 1}},
}
#: Extra seconds per local step in the real peers (``GOSSAMER_TEST_STEP_SLEEP``).
DEFAULT_STEP_SLEEP = 0.05
#: The port every peer listens on inside its own namespace (namespaces have their own ports).
PEER_PORT = 7100
COORDINATOR_PORT = 7000


@dataclass(frozen=True)
class Timings:
    """What a run's trace says about time (seconds): ``total_s`` after round 0,
    ``round_s`` the median round after round 0, ``round0_s`` round 0 (from the
    last peer's first step), ``round_ends`` each round's end from that start."""

    total_s: float
    round_s: float
    round0_s: float
    rounds: int
    round_ends: list[float] = field(default_factory=list)


def timings(events: Sequence[Any]) -> Timings:
    """``Timings`` of one run from its trace events (``trace.recorder.Event``; a real
    swarm's peers' traces read together, or a simulator's). See the module docstring.
    A run needs at least two rounds."""
    starts: dict[str, float] = {}
    ends: dict[int, float] = {}
    last = -float("inf")
    for e in events:
        if e.kind == "compute":
            if e.round == 0 and e.peer is not None:
                starts[e.peer] = min(starts.get(e.peer, float("inf")), e.t - (e.value or 0.0))
            last = max(last, e.t)
        elif e.kind == "round" and e.round is not None:
            ends[e.round] = max(ends.get(e.round, -float("inf")), e.t)
            last = max(last, e.t)
    if not starts or not ends:
        raise GossamerError("the trace has no compute or no committed round: the run did not train")
    t0 = max(starts.values())
    order = sorted(ends)
    if len(order) < 2:
        raise GossamerError(f"the run committed {len(order)} round(s); the comparison needs at least 2")
    marks = [ends[r] - t0 for r in order]
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return Timings(total_s=last - ends[order[0]], round_s=statistics.median(gaps), round0_s=marks[0],
                   rounds=len(order), round_ends=[round(m, 4) for m in marks])


def _trace_events(paths: Sequence[Path]) -> list[Any]:
    from ..trace.recorder import TraceReader

    with TraceReader(list(paths)) as reader:
        return reader.events()


def _compute_per_step(events: Sequence[Any]) -> dict[str, float]:
    """Each peer's mean compute time per local step (s): charged compute / steps."""
    secs: dict[str, float] = {}
    steps: dict[str, int] = {}
    for e in events:
        if e.kind == "compute" and e.peer is not None:
            secs[e.peer] = secs.get(e.peer, 0.0) + float(e.value or 0.0)
            steps[e.peer] = steps.get(e.peer, 0) + int(e.detail.get("steps", 1))
    return {p: secs[p] / steps[p] for p in secs if steps.get(p)}


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux
        return float("nan")


def check_setting(text: str) -> LinkSpec:
    """A link spec the lab can emulate (``ConfigError`` otherwise: loss needs netem)."""
    spec = LinkSpec.parse(text)
    if spec.loss:
        raise ConfigError(f"link {text!r}: loss cannot be emulated here (this bench shapes with tc tbf; the kernel has no netem)")
    return spec


def measure(algorithm: str, link: LinkSpec, *, task: str, peers: int, steps: int, inner_steps: int | None,
            options: dict[str, Any], step_sleep: float, seed: int, workdir: Path, tcp: str = "tuned",
            timeout: float = 300.0, nice: int = 0) -> dict[str, Any]:
    """Run the real swarm on a lab shaped to ``link``; returns its ``Timings``, the
    peers' ids in rank order, their compute per step and payload bytes, the load."""
    from ..swarm.keys import load_identity

    workdir.mkdir(parents=True, exist_ok=True)
    keys = [workdir / f"peer{i}.pem" for i in range(peers)]
    ids = [load_identity(k).peer_id for k in keys]
    order = sorted(range(peers), key=lambda i: ids[i])  # the swarm's rank order
    env = dict(os.environ, GOSSAMER_HOME=str(workdir / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", GOSSAMER_TEST_STEP_SLEEP=repr(step_sleep))
    python = ([] if not nice else ["nice", "-n", str(nice)]) + [sys.executable, "-m", "gossamer.cli"]
    inner = ["--inner-steps", str(inner_steps)] if inner_steps is not None else []
    opts = [a for k, v in options.items() for a in ("--option", f"{k}={_toml(v)}")]
    delay = link.latency_s
    load = [_loadavg()]
    t_start = time.perf_counter()
    with NetnsLab(peers, up_bps=link.up_bps, down_bps=float(link.down_bps), tcp=tcp, nice=nice) as lab, \
            LocalProcesses(workdir, env) as swarm:
        swarm.cli = lab.hub_prefix() + python
        coord = swarm.start("coordinator", ["coordinator", "--listen", f"127.0.0.1:{COORDINATOR_PORT}",
                                            "--min-peers", str(peers), "--key", str(workdir / "coordinator.pem")])
        if swarm.coordinator_port("coordinator", coord) is None:
            raise GossamerError(f"predict {algorithm}: the coordinator did not start\n{swarm.logs()}")
        coord_relay = lab.relay_to("127.0.0.1", COORDINATOR_PORT, delay)
        for rank, i in enumerate(order):
            p = lab.peers[rank]
            relay = lab.relay_to(p.address, PEER_PORT, delay)
            swarm.cli = p.exec_prefix() + python
            swarm.start(f"peer{i}", ["peer", "--coordinator", f"{p.gateway}:{coord_relay}",
                                     "--listen", f"{p.address}:{PEER_PORT}", "--advertise", f"{p.gateway}:{relay}",
                                     "--task", task, "--algorithm", algorithm, "--steps", str(steps), *inner,
                                     "--seed", str(seed), "--shard", f"{rank}/{peers}", "--key", str(keys[i]),
                                     "--json", str(workdir / f"peer{i}.json"), "--trace", str(workdir / f"peer{i}.trace"),
                                     "--eval-every", "0", "--deadline-floor", "60", "--threads", "1", *opts])
        deadline = time.monotonic() + timeout
        for proc in swarm.procs[1:]:
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise GossamerError(f"predict {algorithm} on {link}: the swarm did not finish within {timeout:g} s\n"
                                    f"{swarm.logs()}") from None
            load.append(_loadavg())
            if rc != 0:
                raise GossamerError(f"predict {algorithm} on {link}: a peer exited with status {rc}\n{swarm.logs()}")
        relay = lab.relay
        lateness = sorted(relay.lateness) if relay is not None else []
    events = _trace_events([workdir / f"peer{i}.trace" for i in order])
    reports = [json.loads((workdir / f"peer{i}.json").read_text()) for i in order]
    return {"timings": timings(events), "ids": [ids[i] for i in order], "compute": _compute_per_step(events),
            "payload_bytes": [int(r["payload_bytes_sent"]) for r in reports], "aborts": sum(r["aborts"] for r in reports),
            "loadavg": max(load), "wall_s": round(time.perf_counter() - t_start, 1),
            "relay_late_ms": round(1e3 * statistics.median(lateness), 3) if lateness else 0.0}


def predict(algorithm: str, link: LinkSpec, *, task: str, ids: list[str], steps: int, inner_steps: int | None,
            options: dict[str, Any], compute: dict[str, float], seed: int, workdir: Path,
            round_overhead: float = 0.0, name: str = "sim") -> dict[str, Any]:
    """The simulator's run of the same swarm (module docstring); its ``Timings`` and payload bytes."""
    from ..sim.runner import run_algorithm
    from ..sim.scenario import Scenario

    mean = statistics.fmean(compute[p] for p in ids)
    profiles = [{"ranks": [r], "compute_scale": compute[p] / mean} for r, p in enumerate(ids)]
    trace = workdir / f"{name}-{algorithm}.trace"
    scenario = Scenario(task=task, algorithms=(algorithm,), peers=len(ids), steps=steps, inner_steps=inner_steps,
                        link=str(link), coordinator=str(LinkSpec(10e9, link.latency_s)), compute_time=mean,
                        peer_profiles=profiles, peer_ids=tuple(ids), seed=seed, evals=1, trace=str(trace),
                        round_overhead=round_overhead,
                        algorithm_options={algorithm: dict(options)} if options else {})
    result = run_algorithm(scenario, algorithm)
    return {"timings": timings(_trace_events([trace])), "payload_bytes": [int(b) for b in result.extra["payload_bytes_sent_by_peer"]],
            "compute_time_s": mean}


def _error(predicted: float, measured: float) -> float:
    return round(100.0 * (predicted / measured - 1.0), 1)


#: The calibration run's link: fast and without delay, so that what the
#: simulator does not see of a round is the software's own time.
CALIBRATION_LINK = "10gbit,0ms"


def run_predict_bench(settings: Sequence[str] = DEFAULT_SETTINGS, algorithms: Sequence[str] = DEFAULT_ALGORITHMS, *,
                      task: str = "charlm", peers: int = 4, step_sleep: float = DEFAULT_STEP_SLEEP, seed: int = 0,
                      tcp: str = "tuned", calibrate: bool = True, plans: dict[str, dict[str, Any]] | None = None,
                      workdir: str | None = None, timeout: float = 300.0, nice: int = 0,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every (setting, algorithm) pair measured and predicted (module docstring).
    With ``calibrate``, each algorithm first runs once on ``CALIBRATION_LINK``;
    the per-round time the simulator does not account for there (the
    software's own work: snapshots, hashes, codec, the coordinator's
    processing) becomes ``Scenario.round_overhead`` of its predictions.
    Raises ``ConfigError`` for bad input and ``LabError`` without root/ip/tc
    (``support_problem()`` says why before anything starts)."""
    links = [(s, check_setting(s)) for s in settings]
    plans = {**PLANS, **(plans or {})}
    for a in algorithms:
        if a not in plans:
            raise ConfigError(f"no plan for algorithm {a!r}; accepted: {', '.join(sorted(plans))}")
    if peers < 2:
        raise ConfigError(f"peers must be >= 2, got {peers}")
    problem = support_problem()
    if problem is not None:
        from .netns import LabError

        raise LabError(f"gossamer bench predict {problem}")
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gossamer-predict-"))
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    calibration: dict[str, dict[str, Any]] = {}

    def pair(algorithm: str, text: str, link: LinkSpec, overhead: float) -> dict[str, Any]:
        plan = plans[algorithm]
        steps, inner, options = int(plan["steps"]), plan.get("inner_steps"), dict(plan.get("options", {}))
        if progress is not None:
            progress(f"{algorithm} on {text}: measuring")
        where = root / f"{algorithm}-{text.replace(',', '_').replace('/', '-')}"
        real = measure(algorithm, link, task=task, peers=peers, steps=steps, inner_steps=inner, options=options,
                       step_sleep=step_sleep, seed=seed, workdir=where, tcp=tcp, timeout=timeout, nice=nice)
        if progress is not None:
            progress(f"{algorithm} on {text}: predicting")
        common = dict(task=task, ids=real["ids"], steps=steps, inner_steps=inner, options=options,
                      compute=real["compute"], seed=seed, workdir=where)
        bare = predict(algorithm, link, **common, name="sim-bare")  # type: ignore[arg-type]
        full = predict(algorithm, link, **common, round_overhead=overhead) if overhead else bare  # type: ignore[arg-type]
        m, p, b = real["timings"], full["timings"], bare["timings"]
        return {"algorithm": algorithm, "link": text, "measured": m, "predicted": p, "bare": b,
                "run": {"algorithm": algorithm, "link": text, "rounds": m.rounds, "sim_rounds": p.rounds,
                        "round_overhead_s": round(overhead, 4),
                        "measured_round0_s": round(m.round0_s, 4), "predicted_round0_s": round(p.round0_s, 4),
                        "measured_round_ends_s": m.round_ends, "predicted_round_ends_s": p.round_ends,
                        "compute_per_step_s": {k: round(v, 4) for k, v in real["compute"].items()},
                        "sim_compute_time_s": round(full["compute_time_s"], 4),
                        "payload_bytes": real["payload_bytes"], "sim_payload_bytes": full["payload_bytes"],
                        "bytes_equal": real["payload_bytes"] == full["payload_bytes"], "aborts": real["aborts"],
                        "loadavg": real["loadavg"], "wall_s": real["wall_s"], "relay_late_ms": real["relay_late_ms"],
                        "workdir": str(where)}}

    if calibrate:
        for algorithm in algorithms:
            c = pair(algorithm, CALIBRATION_LINK, LinkSpec.parse(CALIBRATION_LINK), 0.0)
            overhead = max(0.0, c["measured"].round_s - c["bare"].round_s)
            calibration[algorithm] = {**c["run"], "round_overhead_s": round(overhead, 4),
                                      "measured_round_s": round(c["measured"].round_s, 4),
                                      "predicted_round_s": round(c["bare"].round_s, 4)}
    for text, link in links:
        for algorithm in algorithms:
            overhead = calibration[algorithm]["round_overhead_s"] if calibrate else 0.0
            r = pair(algorithm, text, link, overhead)
            m, p, b = r["measured"], r["predicted"], r["bare"]
            for metric, pv, bv, mv in (("round", p.round_s, b.round_s, m.round_s), ("total", p.total_s, b.total_s, m.total_s)):
                rows.append({"algorithm": algorithm, "link": text, "metric": metric, "predicted_s": round(pv, 4),
                             "measured_s": round(mv, 4), "error_pct": _error(pv, mv),
                             "predicted_without_overhead_s": round(bv, 4), "error_without_overhead_pct": _error(bv, mv)})
            runs.append(r["run"])
    return {"rows": rows, "runs": runs, "calibration": calibration, "task": task, "peers": peers,
            "step_sleep_s": step_sleep, "seed": seed, "tcp": tcp, "settings": list(settings),
            "algorithms": list(algorithms), "plans": {a: plans[a] for a in algorithms}, "cores": os.cpu_count(),
            "max_abs_error_pct": max((abs(r["error_pct"]) for r in rows), default=0.0),
            "definition": "error_pct = 100 (predicted / measured - 1); round: median time between the ends of "
                          "consecutive rounds after round 0; total: from the end of round 0 to the end of the run; "
                          "round 0 (fresh connections, first codec calls) is in runs as measured/predicted_round0_s"}

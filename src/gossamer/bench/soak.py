"""``gossamer bench soak``: a loopback swarm under many random faults.

A coordinator (durable, ``--state``) and ``peers`` real ``gossamer peer``
processes (diloco on digits, an error-feedback codec, checkpoints every
round) train on 127.0.0.1 while a seeded schedule injects ``faults`` faults,
one every ``interval`` seconds:

- ``kill``: SIGKILL one peer (often mid-collective: rounds are short), then
  restart it from its checkpoint (``--resume``);
- ``kill2``: SIGKILL two peers at once, restart both;
- ``stall``: SIGSTOP a peer for a few seconds, then SIGCONT (a straggler; if
  it is stopped long enough, its heartbeats stop and it is dropped);
- ``join``: start an extra peer with a fresh key (it fetches the state);
- ``leave``: SIGTERM an extra peer (a clean leave);
- ``coordinator``: SIGKILL the coordinator and restart it on the same port
  with the same key and state file (at least two per run when ``faults`` >= 10);
- ``nonfinite``: restart a peer that produces a +inf gradient a few steps in.

One *anchor* peer is never faulted; its resident memory is sampled. At the
end every process is stopped and the coordinator's events are read:

- ``rounds_committed``: distinct rounds committed;
- ``divergent_rounds``: rounds committed more than once with different
  hashes (the agreed history was rewritten);
- ``lost_rounds``: rounds committed more than once (work redone);
- ``livelocks``: gaps of more than ``livelock_s`` seconds without a commit;
- ``max_round_gap_s``: the longest gap between two commits;
- ``rss_growth_mb``: the anchor peer's resident memory at the end minus at
  the first sample after warm-up.

Targets: 0 divergent, 0 lost, 0 livelocks, flat memory.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GossamerError

KINDS = ("kill", "kill2", "stall", "join", "leave", "coordinator", "nonfinite")


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class _Swarm:
    def __init__(self, root: Path, peers: int, codec: str, seed: int) -> None:
        self.root = root
        self.codec = codec
        self.seed = seed
        self.env = dict(os.environ, GOSSAMER_HOME=str(root / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                        MKL_NUM_THREADS="1", GOSSAMER_TEST_STEP_SLEEP="0.01")
        self.cli = [sys.executable, "-m", "gossamer.cli"]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.n = peers
        self.extra = 0

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.out", "ab") as out, open(self.root / f"{name}.err", "ab") as err:
            proc = subprocess.Popen(self.cli + args, stdout=out, stderr=err, env={**self.env, **(env or {})},
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def coordinator(self) -> None:
        listen = f"127.0.0.1:{self.port}"
        marker = self.root / "coordinator.out"
        before = marker.read_text() if marker.exists() else ""
        proc = self._start("coordinator", ["coordinator", "--listen", listen, "--min-peers", "2",
                                           "--key", str(self.root / "coordinator.pem"),
                                           "--state", str(self.root / "coordinator.sqlite"),
                                           "--events", str(self.root / "events.jsonl"),
                                           "--heartbeat-timeout", "4", "--straggler-grace", "3"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = marker.read_text()[len(before):] if marker.exists() else ""
            if "listening on" in text:
                self.port = int(text.split("listening on")[1].split()[0].rsplit(":", 1)[1])
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise GossamerError(f"soak: the coordinator did not start: {(self.root / 'coordinator.err').read_text()[-2000:]}")

    def peer(self, name: str, *, env: dict[str, str] | None = None) -> None:
        ck = self.root / f"ck-{name}"
        resume = ["--resume", str(ck)] if (ck / "state.json").exists() else []
        self._start(name, ["peer", "--coordinator", f"127.0.0.1:{self.port}", "--task", "digits", "--algorithm",
                           "diloco", "--inner-steps", "5", "--steps", "1000000", "--codec", self.codec,
                           "--seed", str(self.seed), "--key", str(self.root / f"{name}.pem"),
                           "--json", str(self.root / f"{name}.json"), "--checkpoint", str(ck),
                           "--checkpoint-every", "1", "--deadline-floor", "3", *resume], env)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        proc = self.procs.get(name)
        if proc is not None:
            proc.wait(10)

    def stop_all(self) -> None:
        """SIGTERM the peers (they leave cleanly), then the coordinator; SIGKILL what is left."""
        peers = [n for n in self.procs if n != "coordinator"]
        for group in (peers, ["coordinator"]):
            for name in group:
                self.signal(name, signal.SIGCONT)
                self.signal(name, signal.SIGTERM)
            deadline = time.monotonic() + 20
            for name in group:
                proc = self.procs.get(name)
                if proc is None:
                    continue
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for name in list(self.procs):
            self.kill(name)

    def events(self) -> list[dict[str, Any]]:
        path = self.root / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a SIGKILL
        return out


def run_soak(*, faults: int = 100, peers: int = 4, interval: float = 1.5, codec: str = "int8+ef", seed: int = 0,
             livelock_s: float = 60.0, workdir: str | os.PathLike[str] | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the soak (see the module docstring) and return its measurements."""
    if faults < 1 or peers < 3:
        raise ConfigError(f"soak needs faults >= 1 and peers >= 3 (one anchor, two to fault), got {faults}, {peers}")
    root = Path(tempfile.mkdtemp(prefix="gossamer-soak-")) if workdir is None else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sw = _Swarm(root, peers, codec, seed)
    schedule: list[str] = []
    n_coord = 2 if faults >= 10 else (1 if faults >= 3 else 0)
    schedule += ["coordinator"] * n_coord
    if faults >= 7:
        schedule.append("nonfinite")
    while len(schedule) < faults:
        schedule.append(rng.choice(["kill", "kill", "kill2", "stall", "join", "leave"]))
    rng.shuffle(schedule)
    injected: list[dict[str, Any]] = []
    rss: list[float] = []
    t0 = time.monotonic()
    try:
        sw.coordinator()
        names = [f"p{i}" for i in range(peers)]
        for name in names:
            sw.peer(name)
        anchor = names[0]
        victims = names[1:]
        # warm-up: a few commits before the first fault
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(ev.get("event") == "commit" and ev.get("round", 0) >= 2
                                                      for ev in sw.events()):
            time.sleep(0.2)
        extras: list[str] = []
        for k, kind in enumerate(schedule):
            time.sleep(interval * (0.5 + rng.random()))
            sample = _rss_mb(sw.procs[anchor].pid) if sw.alive(anchor) else None
            if sample is not None:
                rss.append(sample)
            if kind == "kill":
                v = rng.choice(victims)
                sw.kill(v)
                sw.peer(v)
            elif kind == "kill2":
                a, b = rng.sample(victims, 2)
                sw.kill(a)
                sw.kill(b)
                sw.peer(a)
                sw.peer(b)
            elif kind == "stall":
                v = rng.choice(victims)
                sw.signal(v, signal.SIGSTOP)
                time.sleep(rng.uniform(1.0, 6.0))
                sw.signal(v, signal.SIGCONT)
            elif kind == "join":
                sw.extra += 1
                name = f"x{sw.extra}"
                extras.append(name)
                sw.peer(name)
            elif kind == "leave":
                live = [x for x in extras if sw.alive(x)]
                if live:
                    sw.signal(live[0], signal.SIGTERM)
                else:
                    kind = "kill"
                    v = rng.choice(victims)
                    sw.kill(v)
                    sw.peer(v)
            elif kind == "coordinator":
                sw.kill("coordinator")
                sw.coordinator()
            elif kind == "nonfinite":
                v = rng.choice(victims)
                sw.kill(v)
                sw.peer(v, env={"GOSSAMER_TEST_NONFINITE_STEP": "7"})
            # dead peers (e.g. one that gave up) come back
            for v in victims:
                if not sw.alive(v):
                    sw.peer(v)
            injected.append({"t": round(time.monotonic() - t0, 3), "fault": kind})
            if progress is not None:
                progress(kind, k + 1, len(schedule))
        # a few quiet rounds to show the swarm is still healthy
        last = max((ev.get("round", -1) for ev in sw.events() if ev.get("event") == "commit"), default=-1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and max((ev.get("round", -1) for ev in sw.events()
                                                   if ev.get("event") == "commit"), default=-1) < last + 3:
            time.sleep(0.2)
        sample = _rss_mb(sw.procs[anchor].pid) if sw.alive(anchor) else None
        if sample is not None:
            rss.append(sample)
    finally:
        sw.stop_all()
    wall = time.monotonic() - t0
    events = sw.events()
    commits = [ev for ev in events if ev.get("event") == "commit"]
    by_round: dict[int, set[str]] = {}
    count: dict[int, int] = {}
    for ev in commits:
        by_round.setdefault(int(ev["round"]), set()).add(str(ev.get("hash")))
        count[int(ev["round"])] = count.get(int(ev["round"]), 0) + 1
    times = sorted(float(ev["t"]) for ev in commits)
    gaps = [b - a for a, b in zip(times, times[1:])]
    warm = rss[min(2, len(rss) - 1)] if rss else None
    return {
        "faults": len(injected),
        "fault_kinds": {k: sum(1 for f in injected if f["fault"] == k) for k in KINDS},
        "coordinator_restarts": sum(1 for f in injected if f["fault"] == "coordinator"),
        "rounds_committed": len(by_round),
        "divergent_rounds": sum(1 for hs in by_round.values() if len(hs) > 1),
        "lost_rounds": sum(1 for c in count.values() if c > 1),
        "livelocks": sum(1 for g in gaps if g > livelock_s),
        "max_round_gap_s": round(max(gaps), 3) if gaps else None,
        "rss_growth_mb": round(rss[-1] - warm, 1) if rss and warm is not None else None,
        "rss_mb": [round(x, 1) for x in rss],
        "aborts": sum(1 for ev in events if ev.get("event") == "abort"),
        "evictions": sum(1 for ev in events if ev.get("event") == "evict"),
        "stragglers": sum(1 for ev in events if ev.get("event") == "straggler"),
        "adopts": sum(1 for ev in events if ev.get("event") == "adopt"),
        "wall_s": round(wall, 1),
        "peers": peers,
        "codec": codec,
        "seed": seed,
        "cores": os.cpu_count(),
        "workdir": str(root),
        "injected": injected,
    }

"""``gossamer bench churn``: one fault schedule, replayed in the simulator and
in a real swarm on loopback, must commit the same rounds.

The schedule is a list of ``sim.churn.ChurnEvent`` (round-keyed: ``leave``,
``crash``, ``join``, ``slow``), given, or drawn by the simulator from a fault
model (``mtbf``, ``joins_per_hour``, ``stragglers``) and taken from its
results (the realized schedule). It runs

(a) in the simulator, ``compute_time`` = the real peers' sleep per step, the
    straggler grace of the real coordinator, the real peers' ids in slot
    order (slots are the ids sorted, so the simulated group order is the
    swarm's rank order; the last ``joins`` ids are the joiners); and
(b) as a real ``Coordinator`` and real ``Peer`` objects in one process, over
    TCP on 127.0.0.1, each peer training on its slot's shard and sleeping
    ``step_sleep`` per local step. The schedule is applied by a fault plan:
    ``leave`` r: the peer's run is cancelled when it has committed round r-1
    (its connections close while it computes round r); ``crash`` r: cancelled
    as its round-r sync starts (the attempt aborts and is retried);
    ``join`` r: the peer starts when round r-1 commits (the coordinator
    holds round r until it is admitted); ``slow`` r, f: its sleep per step is
    ``f * step_sleep`` while it computes round r (until it commits or rejoins).

Compared: the committed rounds (``round``, sorted members, attempts) of the
simulator's coordinator and of the real coordinator's ``commit`` events, and
the final state hash. Result::

    {"algorithm", "events", "sim_rounds", "real_rounds", "rounds_equal",
     "sim_hash", "real_hash", "hash_equal", "sim_goodput", "real_wall_s"}

A cancelled peer is not a SIGKILLed process: its connections close and it
tries to say ``leave``; both end its membership mid-attempt as a crash does
(SIGKILL crashes are covered by the durability tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError, GossamerError


#: The default schedule (4 peers, 12 rounds of 4 steps at 0.05 s, grace 1 s): a crash in a sync, a
#: join, a leave while computing, a straggler 16x slower (4 x 0.8 s: it sits rounds 6-7 out and is
#: back after the rest are ready for round 8, about 0.4 s from either edge) and a mild one (2x: in time).
DEFAULT_SCHEDULE: tuple[dict[str, Any], ...] = (
    {"round": 2, "peer": 1, "kind": "crash"},
    {"round": 3, "peer": 4, "kind": "join"},
    {"round": 5, "peer": 2, "kind": "leave"},
    {"round": 6, "peer": 3, "kind": "slow", "factor": 16.0},
    {"round": 8, "peer": 0, "kind": "slow", "factor": 2.0},
)


def load_schedule(text: str, algorithm: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A schedule from a JSON file path or inline JSON: a list of ``{round,
    peer, kind[, factor]}``, or a ``gossamer simulate --json`` results file
    with churn (the run of ``algorithm``, else the first). Returns the events
    and, for a results file, the settings to replay them with (``algorithm``,
    ``peers``, ``rounds``, ``inner_steps``, ``options``, ``step_sleep``,
    ``straggler_grace``, ``max_joins``, ``task``, ``seed``, ``run``)."""
    import json
    from pathlib import Path

    path = Path(text)
    try:
        data = json.loads(path.read_text() if not text.lstrip().startswith(("[", "{")) else text)
    except FileNotFoundError:
        raise ConfigError(f"schedule {text!r}: no such file (give a JSON file or inline JSON)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"schedule {text!r} is not readable JSON: {exc}") from None
    if isinstance(data, list):
        return data, {}
    if not isinstance(data, dict):
        raise ConfigError(f"schedule {text!r}: expected a list of {{round, peer, kind[, factor]}}")
    runs = [r for r in data.get("runs") or [] if isinstance(r, dict) and isinstance(r.get("churn"), dict)]
    if not runs:
        raise ConfigError(f"schedule {text!r}: a JSON object must be simulate results with a churn run")
    if algorithm is not None:
        runs = [r for r in runs if r.get("algorithm") == algorithm]
        if not runs:
            raise ConfigError(f"schedule {text!r} has no churn run of {algorithm!r}")
    run = runs[0]
    c = run["churn"]
    options = dict(run.get("options") or {})
    h = options.pop("inner_steps", None)
    steps = options.pop("steps", None) or run.get("steps")
    settings: dict[str, Any] = {
        "run": run.get("algorithm"), "algorithm": run.get("algorithm"), "peers": data.get("peers"),
        "task": data.get("task"), "seed": data.get("seed"), "rounds": run.get("rounds"), "inner_steps": h,
        "steps": steps, "options": options, "step_sleep": c.get("compute_time"),
        "straggler_grace": (c.get("config") or {}).get("straggler_grace"),
        "max_joins": (c.get("config") or {}).get("max_joins")}
    return list(c.get("events") or []), {k: v for k, v in settings.items() if v is not None}


def _events(events: Iterable[Any]) -> list[Any]:
    from ..sim.churn import ChurnEvent, _event

    return [e if isinstance(e, ChurnEvent) else _event(e) for e in events]


def _run_length(algorithm: str, rounds: int, inner_steps: int) -> tuple[int, int | None]:
    """(local steps, H or None) for ``rounds`` rounds of ``algorithm``: H steps a
    round where it has inner steps, else one step a round (ddp, spsa)."""
    import dataclasses

    from ..algorithms import ALGORITHMS

    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; accepted: {', '.join(ALGORITHMS)}")
    has_h = "inner_steps" in {f.name for f in dataclasses.fields(ALGORITHMS[algorithm][1])}
    return (inner_steps * rounds, inner_steps) if has_h else (rounds, None)


def run_churn_replay(events: Iterable[Any], *, algorithm: str = "diloco", task: str = "digits", peers: int = 4,
                     inner_steps: int = 4, rounds: int = 12, step_sleep: float = 0.05, straggler_grace: float = 1.0,
                     seed: int = 0, options: dict[str, Any] | None = None, max_joins: int | None = None,
                     timeout: float = 240.0) -> dict[str, Any]:
    """One replay (module docstring). ``events`` are ``ChurnEvent``s or tables
    ``{round, peer, kind[, factor]}``; slots ``0..peers-1`` start the run, the
    joiners are ``peers..`` (``max_joins``: joiner slots the data is cut for,
    default the joins in the schedule). ``options``: the algorithm's options,
    in both runtimes. Raises ``ConfigError`` for a bad schedule (before
    anything runs) and ``GossamerError`` when the real swarm does not finish
    within ``timeout``."""
    from ..sim.churn import Churn
    from ..sim.runner import run_algorithm
    from ..sim.scenario import Scenario
    from ..transport.identity import Identity

    steps, h = _run_length(algorithm, rounds, inner_steps)
    evs = check_schedule(events, peers, rounds=rounds, max_joins=max_joins)
    churn = Churn(events=tuple(evs), straggler_grace=straggler_grace, max_joins=max_joins)
    slots = peers + churn.join_slots(peers)
    identities = sorted((Identity.generate() for _ in range(slots)), key=lambda i: i.peer_id)
    ids = [i.peer_id for i in identities]
    options = dict(options or {})
    scenario = Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, inner_steps=h, seed=seed,
                        evals=1, compute_time=step_sleep, link="10gbit,0.05ms", churn=churn, peer_ids=tuple(ids),
                        algorithm_options={algorithm: options} if options else {})
    sim = run_algorithm(scenario, algorithm)
    c = sim.extra["churn"]
    sim_rounds = [(r["round"], sorted(r["members"]), r["attempts"]) for r in c["rounds"]]
    sim_hash = sim.extra["final_state_hash"] if c["completed"] else "none: every peer failed"
    t0 = time.perf_counter()
    real_rounds, real_hash = asyncio.run(asyncio.wait_for(
        _real(evs, identities, algorithm=algorithm, task=task, peers=peers, inner_steps=h, steps=steps,
              rounds=len(sim_rounds), step_sleep=step_sleep, straggler_grace=straggler_grace, seed=seed,
              options=options), timeout))
    return {"algorithm": algorithm, "events": [e.as_dict() for e in evs],
            "sim_rounds": sim_rounds, "real_rounds": real_rounds, "rounds_equal": sim_rounds == real_rounds,
            "sim_hash": sim_hash, "real_hash": real_hash, "hash_equal": sim_hash == real_hash,
            "sim_goodput": c["goodput"], "real_wall_s": round(time.perf_counter() - t0, 3)}


class _Plan:
    """The fault plan of one real peer: its ``crash`` rounds (``before_sync``)."""

    def __init__(self, crash_rounds: set[int]) -> None:
        self.crash_rounds = crash_rounds
        self.task: asyncio.Task[Any] | None = None

    def before_sync(self, round_: int) -> None:
        if round_ in self.crash_rounds and self.task is not None:
            self.task.cancel()  # lands at the sync's first await: mid-attempt


async def _real(events: list[Any], identities: list[Any], *, algorithm: str, task: str, peers: int,
                inner_steps: int | None, steps: int, rounds: int, step_sleep: float, straggler_grace: float, seed: int,
                options: dict[str, Any]) -> tuple[list[Any], str]:
    """The real swarm; returns its commits and the hash of the last committed
    round's members (``none: ...`` when no round committed)."""
    from ..algorithms import ALGORITHMS
    from ..swarm.coordinator import Coordinator
    from ..swarm.peer import Peer
    from ..tasks import make_task
    from ..transport.identity import Identity
    from ..verify import combined_hash

    t = make_task(task)
    slots = len(identities)
    commits: list[tuple[int, list[str], int]] = []
    coord = await Coordinator.start(Identity.generate(), "churnreplay", "127.0.0.1", 0, min_peers=peers,
                                    straggler_grace=straggler_grace)
    coord.listeners.append(lambda kind, f: commits.append((int(f["round"]), sorted(f["group"]), int(f["attempt"])))
                           if kind == "commit" else None)
    addr = f"127.0.0.1:{coord.address[1]}"
    by_round: dict[tuple[int, str], list[Any]] = {}
    for e in events:
        by_round.setdefault((e.round, e.kind), []).append(e)
    plans = [_Plan({e.round for e in events if e.kind == "crash" and e.peer == k}) for k in range(slots)]
    runs: dict[int, asyncio.Task[Any]] = {}
    peer_objs: list[Any] = []
    extra = dict(options)
    if inner_steps is not None:
        extra["inner_steps"] = inner_steps

    def batches(k: int) -> Any:
        shard = t.shard(k, slots, seed=seed)
        while True:
            yield shard.next_batch()

    def slow_factor(k: int, r: int) -> float:
        return next((e.factor for e in by_round.get((r, "slow"), ()) if e.peer == k), 1.0)

    def leaves(k: int, r: int) -> bool:
        return any(e.peer == k for e in by_round.get((r, "leave"), ()))

    def progress_for(k: int) -> Any:
        def progress(ev: dict[str, Any]) -> None:
            p = peer_objs[k]
            kind = ev.get("event")
            if kind == "rejoin":  # the slow round is over for it: it fetches the state and is admitted
                p.step_sleep = step_sleep
            elif kind in ("commit", "admitted"):  # the round it computes next
                nxt = int(ev["round"]) + 1 if kind == "commit" else int(ev["round"])
                p.step_sleep = step_sleep * slow_factor(k, nxt)
                if leaves(k, nxt):  # it fails as it starts computing that round
                    runs[k].cancel()
            if kind == "commit":
                for e in by_round.get((int(ev["round"]) + 1, "join"), ()):
                    if e.peer not in runs:
                        start(e.peer)
        return progress

    for k in range(slots):
        peer_objs.append(Peer(t.make_model(seed), t.loss, coordinator=addr, swarm_id="churnreplay",
                              identity=identities[k], algorithm=algorithm, seed=seed, faults=plans[k],
                              progress=progress_for(k), deadline_floor=30.0, **extra))
        peer_objs[k].step_sleep = step_sleep * slow_factor(k, 0)

    def start(k: int) -> None:
        runs[k] = asyncio.ensure_future(peer_objs[k].run(batches(k), steps=steps))
        plans[k].task = runs[k]

    ids = [i.peer_id for i in identities]
    try:
        for k in range(peers):
            start(k)
        stopped = False
        while True:
            pending = [r for r in runs.values() if not r.done()]
            if not pending:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            last = commits[-1] if commits else None
            if not stopped and last is not None and last[0] == rounds - 1 and all(
                    runs[ids.index(p)].done() for p in last[1]):
                # the run is over: a peer that sat the last rounds out has no swarm to rejoin
                stopped = True
                for k, run in runs.items():
                    if not run.done():
                        peer_objs[k].request_stop()
        reports = {}
        for k, run in sorted(runs.items()):
            if run.cancelled():
                continue
            exc = run.exception()
            if exc is not None:
                raise GossamerError(f"churn replay: peer slot {k} failed: {type(exc).__name__}: {exc}")
            reports[ids[k]] = run.result()
    finally:
        for run in runs.values():
            run.cancel()
        await asyncio.gather(*runs.values(), return_exceptions=True)
        await coord.close()
    if not commits:
        return commits, "none: every peer failed"
    hashes = [reports[p].final_state_hash for p in commits[-1][1] if p in reports]
    if not hashes:
        return commits, "none: every peer failed"
    parity = ALGORITHMS[algorithm][0].bit_parity
    real_hash = hashes[0] if parity and len(set(hashes)) == 1 else combined_hash(hashes) if not parity else \
        "disagree:" + ",".join(h[:12] for h in hashes)
    return commits, real_hash


def check_schedule(events: Iterable[Any], peers: int, *, rounds: int | None = None,
                   max_joins: int | None = None) -> list[Any]:
    """The schedule as ``ChurnEvent``s, checked (ConfigError naming the event):
    not empty, no leave in round 0 (round 0 waits for every starting peer),
    every event within ``rounds``, and ``Churn.check_for``."""
    from ..sim.churn import Churn

    evs = _events(events)
    if not evs:
        raise ConfigError("the schedule is empty: nothing to replay (`gossamer bench parity` compares fault-free runs)")
    if any(e.kind == "leave" and e.round == 0 for e in evs):
        raise ConfigError("a replayed schedule cannot have a leave in round 0: a real swarm's round 0 waits for every "
                          "peer that starts it (drop that peer from the run instead)")
    if rounds is not None:
        late = [e for e in evs if e.round >= rounds]
        if late:
            raise ConfigError(f"churn event {late[0].as_dict()} is in round {late[0].round}, but the run has "
                              f"{rounds} rounds (0..{rounds - 1}): give --rounds")
    Churn(events=tuple(evs), max_joins=max_joins).check_for(peers)
    return evs

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


def load_schedule(text: str) -> list[dict[str, Any]]:
    """A schedule from a JSON file path or inline JSON: a list of ``{round, peer,
    kind[, factor]}``, or a results file whose run has ``extra.churn.events``."""
    import json
    from pathlib import Path

    path = Path(text)
    try:
        data = json.loads(path.read_text() if not text.lstrip().startswith(("[", "{")) else text)
    except FileNotFoundError:
        raise ConfigError(f"schedule {text!r}: no such file (give a JSON file or inline JSON)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"schedule {text!r} is not readable JSON: {exc}") from None
    if isinstance(data, dict):  # a results file: the first run's realized schedule
        runs = data.get("runs") or []
        run = runs[0] if runs and isinstance(runs[0], dict) else {}
        events = (run.get("churn") or run.get("extra", {}).get("churn") or {}).get("events")
        if events is None:
            raise ConfigError(f"schedule {text!r}: a JSON object must be simulate results with a churn run")
        data = events
    if not isinstance(data, list):
        raise ConfigError(f"schedule {text!r}: expected a list of {{round, peer, kind[, factor]}}")
    return data


def _events(events: Iterable[Any]) -> list[Any]:
    from ..sim.churn import ChurnEvent, _event

    return [e if isinstance(e, ChurnEvent) else _event(e) for e in events]


def run_churn_replay(events: Iterable[Any], *, algorithm: str = "diloco", task: str = "digits", peers: int = 4,
                     inner_steps: int = 4, rounds: int = 10, step_sleep: float = 0.05, straggler_grace: float = 1.0,
                     seed: int = 0, timeout: float = 240.0) -> dict[str, Any]:
    """One replay (module docstring). ``events`` are ``ChurnEvent``s or tables
    ``{round, peer, kind[, factor]}``; slots ``0..peers-1`` start the run, the
    joiners are ``peers..``. Raises ``ConfigError`` for a bad schedule and
    ``GossamerError`` when the real swarm does not finish within ``timeout``."""
    from ..sim.churn import Churn
    from ..sim.runner import run_algorithm
    from ..sim.scenario import Scenario
    from ..transport.identity import Identity

    evs = check_schedule(events, peers)
    churn = Churn(events=tuple(evs), straggler_grace=straggler_grace)
    slots = peers + churn.join_slots(peers)
    identities = sorted((Identity.generate() for _ in range(slots)), key=lambda i: i.peer_id)
    ids = [i.peer_id for i in identities]
    steps = inner_steps * rounds
    scenario = Scenario(task=task, algorithms=(algorithm,), peers=peers, steps=steps, inner_steps=inner_steps,
                        seed=seed, evals=1, compute_time=step_sleep, link="10gbit,0.05ms", churn=churn,
                        peer_ids=tuple(ids))
    sim = run_algorithm(scenario, algorithm)
    sim_rounds = [(r["round"], sorted(r["members"]), r["attempts"]) for r in sim.extra["churn"]["rounds"]]
    t0 = time.perf_counter()
    real_rounds, real_hash = asyncio.run(asyncio.wait_for(
        _real(evs, identities, algorithm=algorithm, task=task, peers=peers, inner_steps=inner_steps, steps=steps,
              step_sleep=step_sleep, straggler_grace=straggler_grace, seed=seed), timeout))
    return {"algorithm": algorithm, "events": [e.as_dict() for e in evs],
            "sim_rounds": sim_rounds, "real_rounds": real_rounds, "rounds_equal": sim_rounds == real_rounds,
            "sim_hash": sim.extra["final_state_hash"], "real_hash": real_hash,
            "hash_equal": sim.extra["final_state_hash"] == real_hash,
            "sim_goodput": sim.extra["churn"]["goodput"], "real_wall_s": round(time.perf_counter() - t0, 3)}


class _Plan:
    """The fault plan of one real peer: its ``crash`` rounds (``before_sync``)."""

    def __init__(self, crash_rounds: set[int]) -> None:
        self.crash_rounds = crash_rounds
        self.task: asyncio.Task[Any] | None = None

    def before_sync(self, round_: int) -> None:
        if round_ in self.crash_rounds and self.task is not None:
            self.task.cancel()  # lands at the sync's first await: mid-attempt


async def _real(events: list[Any], identities: list[Any], *, algorithm: str, task: str, peers: int, inner_steps: int,
                steps: int, step_sleep: float, straggler_grace: float, seed: int) -> tuple[list[Any], str]:
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
    ended: dict[int, str] = {}
    peer_objs: list[Any] = []

    def batches(k: int) -> Any:
        shard = t.shard(k, slots, seed=seed)
        while True:
            yield shard.next_batch()

    def slow_factor(k: int, r: int) -> float:
        return next((e.factor for e in by_round.get((r, "slow"), ()) if e.peer == k), 1.0)

    def progress_for(k: int) -> Any:
        def progress(ev: dict[str, Any]) -> None:
            p = peer_objs[k]
            kind = ev.get("event")
            if kind == "rejoin":  # the slow round is over for it: it fetches the state and is admitted
                p.step_sleep = step_sleep
            elif kind in ("commit", "admitted"):  # the round it computes next
                nxt = int(ev["round"]) + 1 if kind == "commit" else int(ev["round"])
                p.step_sleep = step_sleep * slow_factor(k, nxt)
            if kind == "commit":
                r = int(ev["round"])
                if any(e.peer == k for e in by_round.get((r + 1, "leave"), ())):
                    runs[k].cancel()
                for e in by_round.get((r + 1, "join"), ()):
                    if e.peer not in runs:
                        start(e.peer)
        return progress

    for k in range(slots):
        peer_objs.append(Peer(t.make_model(seed), t.loss, coordinator=addr, swarm_id="churnreplay",
                              identity=identities[k], algorithm=algorithm, inner_steps=inner_steps, seed=seed,
                              faults=plans[k], progress=progress_for(k), deadline_floor=30.0))
        peer_objs[k].step_sleep = step_sleep * slow_factor(k, 0)

    def start(k: int) -> None:
        runs[k] = asyncio.ensure_future(peer_objs[k].run(batches(k), steps=steps))
        plans[k].task = runs[k]

    try:
        for k in range(peers):
            start(k)
        while True:
            pending = [r for r in runs.values() if not r.done()]
            if not pending:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        reports = []
        for k, run in sorted(runs.items()):
            if run.cancelled():
                ended[k] = "cancelled"
                continue
            exc = run.exception()
            if exc is not None:
                raise GossamerError(f"churn replay: peer slot {k} failed: {type(exc).__name__}: {exc}")
            reports.append(run.result())
    finally:
        for run in runs.values():
            run.cancel()
        await asyncio.gather(*runs.values(), return_exceptions=True)
        await coord.close()
    hashes = [r.final_state_hash for r in reports]
    parity = ALGORITHMS[algorithm][0].bit_parity
    real_hash = hashes[0] if parity and len(set(hashes)) == 1 else combined_hash(hashes) if not parity else \
        "disagree:" + ",".join(h[:12] for h in hashes)
    return commits, real_hash


def check_schedule(events: Iterable[Any], peers: int) -> list[Any]:
    """The schedule as ``ChurnEvent``s, checked (ConfigError naming the event)."""
    from ..sim.churn import Churn

    evs = _events(events)
    if any(e.kind == "leave" and e.round == 0 for e in evs):
        raise ConfigError("a replayed schedule cannot have a leave in round 0 (the peer would never have run)")
    Churn(events=tuple(evs)).check_for(peers)
    return evs

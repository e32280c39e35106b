"""Churn in simulated swarms: failures, joins and stragglers, seeded, with the
real coordinator's round rules in virtual time; and goodput.

Contract:

- ``Churn`` (the ``churn`` table of a scenario) is a *fault model*, drawn from
  one seeded generator per purpose, so the same seed gives the same faults:

  * ``mtbf`` (simulated seconds, exponential): each peer fails ``Exp(mtbf)``
    seconds after it came online, for good (a failure is a crash: no leave);
  * ``joins_per_hour`` (Poisson arrivals in simulated time), at most
    ``max_joins`` new peers (default: as many as the run starts with); each
    brings its own shard (the data is cut for ``peers + joins`` peers);
  * ``stragglers`` (probability per peer and round) and ``slowdown``, the
    distribution of a slow peer's factor on its compute time in that round:
    ``fixed:F``, ``uniform:A,B``, ``lognormal:SIGMA`` (``exp(|N(0, SIGMA)|)``)
    or ``pareto:ALPHA`` (``U**(-1/ALPHA)``; heavy-tailed), every factor >= 1;
  * ``events``: an explicit schedule of ``ChurnEvent(round, peer, kind,
    factor)`` (``peer`` = the peer's slot: ``0..peers-1`` start the run,
    ``peers..`` are joiners in order), replayed exactly; a run's realized
    schedule (random and explicit faults together) is in its results, so a
    run can be replayed in the simulator or, with ``ReplayPlan``, in a real
    swarm.

  Kinds: ``leave`` (the peer dies while it computes the round: the barrier
  does not wait for it, its local steps are lost), ``crash`` (it dies in the
  round's sync: the attempt aborts and is retried with the survivors),
  ``join`` (first a member in this round: admitted when the previous round
  commits, it fetches the committed state and computes the round's steps),
  ``slow`` (its compute in this round is ``factor`` times longer).

- ``ChurnControl`` is the coordinator of a simulated run with churn. The
  rules are those of ``swarm.coordinator`` in virtual seconds: round 0 waits
  for everyone; a later round starts when every member is ready or, once a
  quorum (a majority) is ready, when the straggler deadline ``max(grace,
  median + k MAD)`` of recent barrier spreads (rounds where all came) has
  passed since the first ready; late members sit the round out (their steps
  are lost) and fetch the committed state when it commits. A commit is the
  latest ``done`` of the group. Every attempt gets a fresh epoch (1, 2, ...).
  A state transfer takes ``latency + state bytes / min(uplink, downlink)`` of
  the two peers' access links; the coordinator's own round trips are not
  modelled here (``scenario.round_overhead`` charges a fixed cost per round).
  Not modelled: the partial work of an aborted attempt (it costs the time to
  the failure plus a coordinator round trip and the swarm's retry back-off,
  no bytes); a peer that comes back after failing (a restart is a join).
- Goodput (``ChurnControl.summary``): ``goodput`` = compute seconds that went
  into committed rounds / all compute seconds spent, and
  ``committed_samples_per_s`` with the run's simulated time; with counts of
  failures, joins, sat-out rounds and aborted attempts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

KINDS = ("leave", "crash", "join", "slow")
SLOWDOWNS = ("fixed", "uniform", "lognormal", "pareto")
#: The swarm's first retry back-off after an abort (``swarm.peer``: ``0.05 * 2**attempt``), s.
RETRY_BACKOFF = 0.1
#: A peer polls ``ready`` again this often while its round runs without it (``swarm.peer``), s.
BUSY_POLL = 0.1


@dataclass(frozen=True)
class ChurnEvent:
    """One fault: in ``round``, slot ``peer`` ``kind`` (see the module docstring)."""

    round: int
    peer: int
    kind: str
    factor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("round", "peer"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"churn event {name} must be an integer >= 0, got {v!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"churn event kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "join" and self.round == 0:
            raise ConfigError(f"churn event: a join is admitted when the previous round commits, so its round must be "
                              f">= 1 (peer {self.peer}); peers present from round 0 are the scenario's peers")
        f = self.factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and f > 0):
            raise ConfigError(f"churn event factor must be a finite number > 0, got {f!r}")
        if self.kind == "slow" and not f > 1:
            raise ConfigError(f"churn event {{round {self.round}, peer {self.peer}, slow}} needs a factor > 1 "
                              f"(its compute time is multiplied by it), got {f!r}")
        if self.kind != "slow" and f != 1:
            raise ConfigError(f"churn event {{round {self.round}, peer {self.peer}, {self.kind}}}: factor is for slow events only")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round, "peer": self.peer, "kind": self.kind}
        if self.kind == "slow":
            out["factor"] = self.factor
        return out


def parse_slowdown(spec: str) -> tuple[str, tuple[float, ...]]:
    """``"pareto:1.5"`` -> ``("pareto", (1.5,))``; ConfigError naming the problem."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"slowdown must be KIND:PARAMS with KIND one of {', '.join(SLOWDOWNS)} "
                          f"(e.g. 'pareto:1.5', 'uniform:2,5'), got {spec!r}")
    kind, _, rest = spec.partition(":")
    kind = kind.strip()
    try:
        params = tuple(float(x) for x in rest.split(","))
    except ValueError:
        raise ConfigError(f"slowdown {spec!r}: parameters must be numbers") from None
    want = {"fixed": 1, "uniform": 2, "lognormal": 1, "pareto": 1}
    if kind not in want:
        raise ConfigError(f"slowdown {spec!r}: unknown distribution {kind!r}; accepted: {', '.join(SLOWDOWNS)}")
    if len(params) != want[kind] or not all(math.isfinite(p) for p in params):
        raise ConfigError(f"slowdown {spec!r}: {kind} takes {want[kind]} finite number(s)")
    if kind == "fixed" and params[0] < 1:
        raise ConfigError(f"slowdown {spec!r}: a factor must be >= 1")
    if kind == "uniform" and not 1 <= params[0] <= params[1]:
        raise ConfigError(f"slowdown {spec!r}: uniform:A,B needs 1 <= A <= B")
    if kind in ("lognormal", "pareto") and not params[0] > 0:
        raise ConfigError(f"slowdown {spec!r}: the parameter must be > 0")
    return kind, params


def draw_slowdown(kind: str, params: tuple[float, ...], rng: random.Random) -> float:
    """One factor >= 1 from ``parse_slowdown``'s distribution."""
    if kind == "fixed":
        return params[0]
    if kind == "uniform":
        return rng.uniform(params[0], params[1])
    if kind == "lognormal":
        return math.exp(abs(rng.gauss(0.0, params[0])))
    return (1.0 - rng.random()) ** (-1.0 / params[0])


@dataclass(frozen=True)
class Churn:
    """The fault model of a scenario (see the module docstring). Units: seconds
    of simulated time; ``joins_per_hour`` per simulated hour; ``stragglers`` a
    probability in [0, 1]."""

    mtbf: float | None = None
    joins_per_hour: float = 0.0
    max_joins: int | None = None
    stragglers: float = 0.0
    slowdown: str = "pareto:1.5"
    straggler_grace: float = 10.0
    straggler_k: float = 4.0
    events: tuple[ChurnEvent, ...] = ()

    def __post_init__(self) -> None:
        if self.mtbf is not None and (isinstance(self.mtbf, bool) or not isinstance(self.mtbf, (int, float))
                                      or not (math.isfinite(self.mtbf) and self.mtbf > 0)):
            raise ConfigError(f"churn mtbf must be a number of seconds > 0, got {self.mtbf!r}")
        for name in ("joins_per_hour", "straggler_grace", "straggler_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"churn {name} must be a finite number >= 0, got {v!r}")
        s = self.stragglers
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise ConfigError(f"churn stragglers must be a probability in [0, 1], got {s!r}")
        if self.max_joins is not None and (isinstance(self.max_joins, bool) or not isinstance(self.max_joins, int)
                                           or self.max_joins < 0):
            raise ConfigError(f"churn max_joins must be an integer >= 0, got {self.max_joins!r}")
        parse_slowdown(self.slowdown)
        if self.slowdown != "pareto:1.5" and not self.stragglers:
            raise ConfigError(f"churn slowdown {self.slowdown!r} has no effect without stragglers (the probability "
                              f"that a peer is slow in a round): give stragglers too")
        events = tuple(e if isinstance(e, ChurnEvent) else _event(e) for e in self.events)
        object.__setattr__(self, "events", events)

    @property
    def explicit_joins(self) -> int:
        return sum(1 for e in self.events if e.kind == "join")

    @property
    def active(self) -> bool:
        return bool(self.mtbf or self.joins_per_hour or self.stragglers or self.events)

    def join_slots(self, peers: int) -> int:
        """How many peers may join a run that starts with ``peers``."""
        if self.joins_per_hour:
            return max(self.max_joins if self.max_joins is not None else peers, self.explicit_joins)
        return max(self.max_joins or 0, self.explicit_joins)  # max_joins keeps the data cut as in the run replayed

    def check_for(self, peers: int) -> None:
        """Events name slots ``0..peers + join_slots - 1``; joiners are exactly the
        slots from ``peers`` on, each joining once; every other event is for a
        peer in the swarm in that round (in each round: joins first, then the
        others, then the failures take effect); ConfigError otherwise."""
        slots = peers + self.join_slots(peers)
        joined: set[int] = set()
        for e in self.events:
            if e.peer >= slots:
                raise ConfigError(f"churn event {e.as_dict()}: peer slot {e.peer} out of range 0..{slots - 1} "
                                  f"({peers} peers and {slots - peers} joiner slot(s))")
            if e.kind == "join":
                if e.peer < peers:
                    raise ConfigError(f"churn event {e.as_dict()}: slot {e.peer} starts the run (slots 0..{peers - 1}); "
                                      f"joiners are slots {peers}..")
                if e.peer in joined:
                    raise ConfigError(f"churn event {e.as_dict()}: slot {e.peer} joins twice")
                joined.add(e.peer)
        alive = set(range(peers))
        by_round: dict[int, list[ChurnEvent]] = {}
        for e in self.events:
            by_round.setdefault(e.round, []).append(e)
        for r in sorted(by_round):
            alive |= {e.peer for e in by_round[r] if e.kind == "join"}
            for e in by_round[r]:
                if e.kind != "join" and e.peer not in alive:
                    raise ConfigError(f"churn event {e.as_dict()}: peer slot {e.peer} is not in the swarm in round {r} "
                                      f"(it has not joined yet, or failed before)")
            gone = [e.peer for e in by_round[r] if e.kind in ("leave", "crash")]
            twice = {p for p in gone if gone.count(p) > 1}
            if twice:
                raise ConfigError(f"churn: peer slot {min(twice)} fails twice in round {r}")
            alive -= set(gone)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["events"] = [e.as_dict() for e in self.events]
        return out

    @classmethod
    def parse(cls, value: Any) -> "Churn | None":
        """A ``Churn``, or a TOML/JSON table of its fields; ``None`` stays ``None``."""
        if value is None or isinstance(value, Churn):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"churn must be a table of {', '.join(f.name for f in dataclasses.fields(cls))}, "
                              f"got {value!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} in churn; accepted: {', '.join(names)}")
        data = dict(value)
        events = data.get("events", ())
        if not isinstance(events, (list, tuple)):
            raise ConfigError(f"churn events must be a list of tables {{round, peer, kind[, factor]}}, got {events!r}")
        data["events"] = tuple(_event(e) for e in events)
        return cls(**data)


def _event(e: Any) -> ChurnEvent:
    if isinstance(e, ChurnEvent):
        return e
    if not isinstance(e, dict) or not {"round", "peer", "kind"} <= set(e) or set(e) - {"round", "peer", "kind", "factor"}:
        raise ConfigError(f"a churn event is a table {{round, peer, kind[, factor]}}, got {e!r}")
    return ChurnEvent(**e)


@dataclass
class Start:
    """``ChurnControl.ready``'s answer: ``kind`` ``run`` (sync in ``group`` at
    ``t``, attempt ``epoch``), ``out`` (sat the round out: load the committed
    state, go on at ``t``) or ``dead`` (the peer failed: its run ends)."""

    kind: str
    t: float = 0.0
    group: tuple[str, ...] = ()
    epoch: int = 0


@dataclass
class _Slot:
    pid: str
    online: float
    fail_at: float = math.inf
    alive: bool = True
    finished: bool = False
    compute_s: float = 0.0     # compute since its last commit
    steps: int = 0             # local steps since its last commit
    ready_at: float | None = None
    away: float | None = None  # sat a round out; its steps are done at this time
    fut: asyncio.Future[Start] | None = None


@dataclass
class _Round:
    round: int
    group: tuple[str, ...]
    start: float
    attempts: int
    commit: float | None = None
    done: dict[str, float] = field(default_factory=dict)
    futures: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    sat_out: list[str] = field(default_factory=list)


class ChurnControl:
    """The simulated coordinator of a run with churn (module docstring).

    ``slots``: every peer id the run may have, in slot order (the first
    ``peers`` start it). ``transfer_time(src, dst)`` -> seconds to move the
    shared state; ``committed(pid)`` is called at each commit with a member
    that holds the committed state (keep a copy: members go on training);
    ``spawn(slot, t)`` when a joiner is admitted (it starts from that copy,
    its clock at ``t``; False if the run has no steps left for it); ``adopt(pid)`` when a member that sat rounds out
    loads it."""

    def __init__(self, churn: Churn, slots: list[str], peers: int, *, seed: int,
                 transfer_time: Callable[[str, str], float], committed: Callable[[str], None],
                 spawn: Callable[[int, float], bool], adopt: Callable[[str], None],
                 samples_per_step: int | None = None) -> None:
        self.churn = churn
        self.ids = list(slots)
        self.index = {p: i for i, p in enumerate(self.ids)}
        self.peers = peers
        self.seed = seed
        self.transfer_time, self.committed, self.spawn, self.adopt = transfer_time, committed, spawn, adopt
        self.samples_per_step = samples_per_step
        self.slowdown = parse_slowdown(churn.slowdown)
        self._fail_rng = random.Random(f"{seed}/churn/fail")
        self.members: dict[str, _Slot] = {}
        for p in self.ids[:peers]:
            self._online(p, 0.0)
        self.epoch = 0
        self.spreads: list[float] = []
        self.rounds: list[_Round] = []
        self._current: _Round | None = None
        self.events: list[ChurnEvent] = []   # the realized schedule
        self.compute_total = 0.0
        self.compute_committed = 0.0
        self.committed_steps = 0
        self.failures = self.sat_out = self.aborts = 0
        self._explicit = {(e.round, e.peer, e.kind): e for e in churn.events}
        self._joins_at: dict[int, list[int]] = {}
        for e in churn.events:
            if e.kind == "join":
                self._joins_at.setdefault(e.round, []).append(e.peer)
        self._next_slot = peers + churn.explicit_joins  # random joins use the slots after the explicit ones
        self._last_slot = peers + churn.join_slots(peers)
        self._join_times = self._draw_joins()
        self._last_sync = 0.0
        self._factors: dict[tuple[str, int], float] = {}
        self._last_source: str | None = None

    # ------------------------------------------------------------------ the fault model
    @property
    def round(self) -> int:
        """The round the swarm is at: the number of rounds committed so far."""
        return len(self.rounds)

    def _online(self, pid: str, t: float) -> None:
        slot = _Slot(pid, t)
        if self.churn.mtbf:
            slot.fail_at = t + self._fail_rng.expovariate(1.0 / self.churn.mtbf)
        self.members[pid] = slot

    def _draw_joins(self) -> list[float]:
        if not self.churn.joins_per_hour:
            return []
        rng = random.Random(f"{self.seed}/churn/join")
        t, out = 0.0, []
        for _ in range(self._last_slot - self._next_slot):
            t += rng.expovariate(self.churn.joins_per_hour / 3600.0)
            out.append(t)
        return out

    def compute_factor(self, pid: str) -> float:
        """The factor on ``pid``'s compute time in the round it computes now (1.0:
        on time); a factor other than 1 goes into the realized schedule once."""
        key = (pid, self.round)
        f = self._factors.get(key)
        if f is None:
            f = self._draw_factor(self.index[pid], self.round)
            self._factors[key] = f
            if f != 1.0:
                self.events.append(ChurnEvent(self.round, self.index[pid], "slow", f))
        return f

    def _draw_factor(self, slot: int, round_: int) -> float:
        e = self._explicit.get((round_, slot, "slow"))
        if e is not None:
            return e.factor
        if not self.churn.stragglers:
            return 1.0
        rng = random.Random(f"{self.seed}/churn/slow/{slot}/{round_}")
        if rng.random() >= self.churn.stragglers:
            return 1.0
        return draw_slowdown(*self.slowdown, rng)

    def computed(self, pid: str, seconds: float) -> None:
        """``pid`` spent ``seconds`` of simulated compute (committed or not)."""
        self.compute_total += seconds
        slot = self.members.get(pid)
        if slot is not None:
            slot.compute_s += seconds
            slot.steps += 1

    # ------------------------------------------------------------------ the round protocol
    async def ready(self, pid: str, round_: int, t: float) -> Start:
        """``pid`` is ready for ``round_`` at virtual time ``t``."""
        slot = self.members[pid]
        if round_ != self.round:
            raise RuntimeError(f"simulated churn: {pid} ready for round {round_}, the swarm is at {self.round}")
        slot.ready_at = t
        slot.fut = asyncio.get_running_loop().create_future()
        fut = slot.fut
        self._check_barrier()
        return await fut

    def finished(self, pid: str) -> None:
        """``pid``'s loop ended (its steps are done, or it failed)."""
        slot = self.members.get(pid)
        if slot is not None:
            slot.finished = True
            self._check_barrier()

    def _check_barrier(self) -> None:
        """Start the current round once every present member is ready (the
        coordinator's barrier, module docstring). A member that sat a round out
        is *away* until the time it finished that round's steps; it comes back
        when the swarm is between rounds (it rejoins, fetches the committed
        state and computes the next round) or when the round running then
        commits."""
        if self._current is not None:
            return
        live = [s for s in self.members.values() if s.alive and not s.finished]
        present = [s for s in live if s.away is None]
        if any(s.ready_at is None for s in present):
            return
        r = self.round
        for s in present:
            if (r, self.index[s.pid], "leave") in self._explicit:
                s.fail_at = min(s.fail_at, (s.ready_at or 0.0) - 1e-9)
            if s.fail_at <= (s.ready_at or 0.0):  # failed while computing: the barrier does not wait for it
                self._fail(s, r, "leave")
        present = [s for s in present if s.alive]
        away = [s for s in live if s.away is not None]
        if not present:  # the rest finished or failed: the away ones come back to the last committed state
            for s in away:
                self._resume(s, self._last_source, s.away or 0.0, r)
            return
        ready = sorted(present, key=lambda s: (s.ready_at, self.index[s.pid]))
        times = [s.ready_at or 0.0 for s in ready]
        n = len(ready) + len(away)
        if r == 0:  # round 0 waits for everyone
            start = times[-1] if len(ready) == n else math.inf
        elif len(ready) < n // 2 + 1:
            start = math.inf  # no quorum: wait for the away ones
        else:  # a quorum is ready: the rest have the straggler deadline from the first ready
            deadline = max(times[n // 2], times[0] + self._straggler_deadline())
            start = times[-1] if len(ready) == n and times[-1] <= deadline else deadline
        back = [s for s in away if (s.away or 0.0) < min(start, times[-1])]
        if back:  # back while others still compute: they rejoin and compute this round; the barrier waits
            for s in back:
                self._resume(s, ready[0].pid, (s.away or 0.0), r)
            return
        early = [s.away or 0.0 for s in away if (s.away or 0.0) < start]
        if early:  # back once the rest are ready: its rejoin (a leave, then a join) starts the round without it
            start = min(early)
        late = [s for s in ready if (s.ready_at or 0.0) > start]
        group_slots = [s for s in ready if (s.ready_at or 0.0) <= start]
        if not late and not away:
            self.spreads.append(times[-1] - times[0])
        for s in list(group_slots):  # failed while waiting for the start
            if s.fail_at <= start:
                self._fail(s, r, "leave")
                group_slots.remove(s)
        attempts = 1
        est_sync = self._last_sync
        while group_slots:
            victims = [s for s in group_slots
                       if ((r, self.index[s.pid], "crash") in self._explicit and attempts == 1)
                       or s.fail_at < start + est_sync]
            if not victims:
                break
            fail_t = max(start, min(min(s.fail_at for s in victims), start + est_sync))
            for s in victims:  # it died in the sync: the attempt aborts and is retried without it
                self._fail(s, r, "crash")
                group_slots.remove(s)
            self.aborts += 1
            self.epoch += 1  # the aborted attempt had its epoch
            attempts += 1
            start = fail_t + RETRY_BACKOFF
        for s in late:  # they sit the round out: away until their steps are done
            self.sat_out += 1
            s.away, s.ready_at = s.ready_at, None
        if not group_slots:
            self._check_barrier()  # whoever is left starts the round
            return
        self.epoch += 1
        group = tuple(sorted((s.pid for s in group_slots), key=self.index.__getitem__))
        self._current = _Round(r, group, start, attempts, sat_out=[s.pid for s in late + away])
        for s in group_slots:
            fut, s.fut, s.ready_at = s.fut, None, None
            assert fut is not None
            fut.set_result(Start("run", start, group, self.epoch))

    def _resume(self, slot: _Slot, source: str | None, t: float, round_: int) -> None:
        """An away member comes back at ``t``: it fetches the committed state of
        ``source`` and goes on with the next round's steps."""
        fut, slot.fut, slot.away = slot.fut, None, None
        assert fut is not None
        if source is None or slot.fail_at <= t:
            self._fail(slot, round_, "leave")
            if fut is not None and not fut.done():
                fut.set_result(Start("dead"))
            return
        slot.compute_s, slot.steps = 0.0, 0  # the steps of the round it missed are lost
        self.adopt(slot.pid)
        fut.set_result(Start("out", t + self.transfer_time(source, slot.pid)))

    def _straggler_deadline(self) -> float:
        recent = self.spreads[-32:]
        if len(recent) < 3:
            return self.churn.straggler_grace
        med = statistics.median(recent)
        mad = statistics.median(abs(x - med) for x in recent)
        return max(self.churn.straggler_grace, med + self.churn.straggler_k * mad)

    def _fail(self, slot: _Slot, round_: int, kind: str) -> None:
        slot.alive = False
        self.failures += 1
        self.events.append(ChurnEvent(round_, self.index[slot.pid], kind))
        fut, slot.fut, slot.ready_at = slot.fut, None, None
        if fut is not None and not fut.done():
            fut.set_result(Start("dead"))

    async def done(self, pid: str, t: float) -> float:
        """``pid`` finished the current round's sync at ``t``; returns the commit time."""
        cur = self._current
        assert cur is not None and pid in cur.group
        cur.done[pid] = t
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        cur.futures[pid] = fut
        if len(cur.done) == len(cur.group):
            self._commit(cur)
        return await fut

    def _commit(self, cur: _Round) -> None:
        commit = max(cur.done.values())
        cur.commit = commit
        self._last_sync = commit - cur.start
        self.rounds.append(cur)
        for pid in cur.group:
            slot = self.members[pid]
            self.compute_committed += slot.compute_s
            self.committed_steps += slot.steps
            slot.compute_s, slot.steps = 0.0, 0
        self._current = None
        source = self._last_source = cur.group[0]
        self.committed(source)
        for slot_ in list(self.members.values()):  # away members that finished while the round ran: back now
            if slot_.alive and slot_.away is not None and slot_.away <= commit:
                self._resume(slot_, source, commit, self.round)
        for slot in self._joiners(commit):  # admitted now: they fetch the state and compute the next round
            pid = self.ids[slot]
            t = commit + self.transfer_time(source, pid)
            if not self.spawn(slot, t):  # the run is over: nothing left to join
                continue
            self.events.append(ChurnEvent(self.round, slot, "join"))
            self._online(pid, t)
        for pid, fut in cur.futures.items():
            fut.set_result(commit)
        self._check_barrier()

    def _joiners(self, commit: float) -> list[int]:
        out = list(self._joins_at.get(self.round, ()))
        while self._join_times and self._join_times[0] <= commit and self._next_slot < self._last_slot:
            self._join_times.pop(0)
            out.append(self._next_slot)
            self._next_slot += 1
        return out

    def summary(self, sim_time: float) -> dict[str, Any]:
        """Goodput and the counts (module docstring); ``events``: the realized schedule."""
        steps = self.committed_steps
        samples = steps * self.samples_per_step if self.samples_per_step else None
        return {
            "goodput": min(1.0, self.compute_committed / self.compute_total) if self.compute_total else 1.0,
            "compute_s": self.compute_total,
            "committed_compute_s": self.compute_committed,
            "committed_rounds": len(self.rounds),
            "completed": any(s.finished and s.alive for s in self.members.values()),
            "aborted_attempts": self.aborts,
            "failures": self.failures,
            "joins": sum(1 for e in self.events if e.kind == "join"),
            "sat_out": self.sat_out,
            "committed_samples_per_s": (samples / sim_time) if samples is not None and sim_time > 0 else None,
            "rounds": [{"round": c.round, "members": list(c.group), "attempts": c.attempts, "start": c.start,
                        "commit": c.commit, "sat_out": list(c.sat_out)} for c in self.rounds],
            "events": [e.as_dict() for e in sorted(self.events, key=lambda e: (e.round, e.peer, e.kind))],
        }

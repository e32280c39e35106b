"""The peer runtime: join a swarm, fetch and verify the shared state, train,
survive crashes of others, leave cleanly.

Library use (a user's own model and loss)::

    from gossamer.swarm import Peer
    report = Peer(model, loss_fn, coordinator="127.0.0.1:7000", algorithm="diloco",
                  inner_steps=50).train(batches, steps=5000)

Contract:

- ``Peer(model, loss_fn, coordinator=..., algorithm=..., codec=..., aggregator=...,
  seed=..., **options)`` wraps any ``torch.nn.Module`` and ``loss_fn(model,
  batch) -> scalar``, for every algorithm of ``gossamer.algorithms`` with the
  same options and defaults as the simulator (the codec is the algorithm's
  own unless named; ``seed`` seeds the collectives and must equal the
  simulator's for a bit-identical rehearsal). Every peer of a swarm must build
  the same model from the same initial values and use the same algorithm and
  options: the coordinator checks a fingerprint of them and of the shared
  state's layout.
- ``train(batches, steps=None, rounds=None)`` / ``await run(...)``: joins
  (the algorithm's shared state, tensors and counters, fetched from a live
  member and checked against the agreed hash before any training), then runs
  the one round loop (``algorithms.driver.RoundLoop``): local steps in a
  worker thread (so heartbeats, state serving and collectives in flight go
  on), and each sync the algorithm asks for is one swarm *round*: the round
  barrier, the sync under link-derived deadlines, the report of the new state
  hash, and the coordinator's decision. Only a committed result is kept: on
  abort the algorithm's ``state_dict`` from before the sync is loaded back and
  the round is retried with the survivors. A dissenting hash is repaired by
  fetching the agreed state from a majority peer. Algorithms without bit
  parity (gossip, noloco) report their hash with ``agree=False``: the
  coordinator then commits without a majority and records the hash of every
  member's state in rank order; after gossip's final merge they agree again
  and the usual majority check applies. Returns a ``PeerReport``; stops after
  ``steps`` local steps (the run's length, as in the simulator: algorithms
  that end with a sync end with one), after the swarm's round ``rounds``
  (counted from 0), when ``batches`` runs out, or on ``request_stop()`` (the
  CLI wires SIGTERM to it), leaving the swarm cleanly.
- The coordinator: a peer keeps trying to reach it for ``RECONNECT_FOR``
  (60) seconds, whether it is down when the peer starts or lost later
  (backing off from 0.25 to 4 s between tries); then ``PeerError``.
- Test hooks (environment, for the integration tests only):
  ``GOSSAMER_TEST_KILL_IN_ROUND=R`` SIGKILLs this process in round R's
  all-reduce after it sent its first reduce-scatter chunk (with
  ``GOSSAMER_TEST_KILL_SIGNAL=SIGSTOP`` it stalls there instead);
  ``GOSSAMER_TEST_CORRUPT_ROUND=R`` perturbs the shared state after round R's
  outer step, before it is hashed; ``GOSSAMER_TEST_STEP_SLEEP=S`` adds S
  seconds of simulated compute to each local step;
  ``GOSSAMER_TEST_JOIN_AT_ROUND=R`` holds the join until the swarm reaches
  round R (so a process started early joins mid-run).
- Trace (``trace=PATH``, optional; checked writable before joining): a
  ``trace.TraceWriter`` with ``source`` = this peer's id and wall-clock ``t``,
  appending to a file already there. Per round ``r`` (the swarm's round
  number): ``compute`` (seconds of local steps since the previous sync, ``t``
  = the end of the last one; detail ``steps``), per attempt ``barrier_wait``
  (seconds in the coordinator's ``ready`` barrier, ``other`` NULL), ``bytes``
  per destination (payload bytes the transport counted to it since the
  previous attempt ended; detail ``framing``, ``attempt``), ``phase`` (the
  attempt from the barrier's answer to the decision; detail ``name="sync"``,
  ``phase="sync"``, ``attempt``, ``decision``), ``score`` (each contribution
  scored by this attempt's audited all-reduces: ``peer`` the contributor,
  ``other`` this peer, ``value`` the cosine), then ``round`` and ``loss`` on
  commit or ``abort`` otherwise (``peer`` = the peer this attempt's audit
  report blames or proves guilty, else NULL). ``attack`` once at start for a
  red-team peer. Compute and bytes after the last sync come as one more pair
  numbered with the next round, so a peer's ``bytes`` sum to its report's
  ``payload_bytes_sent``. With ``evaluate``, one ``eval`` per evaluation
  (``value`` = the metric; detail ``metric``, ``loss``, ``step``, ``seconds``).
  Without a trace each hook costs one ``None`` check.
- Progress: ``progress(event)`` (optional) is called on the event loop with a
  dict whose ``event`` is ``admitted``, ``resumed``, ``waiting``, ``commit``,
  ``abort``, ``resync``, ``rejoin`` (with ``reason``) or ``eval`` (each
  evaluation, ``final`` true for the one at the end of the run). ``commit``
  carries ``round``, ``hash``, ``step``, ``group`` (members in the round),
  ``members`` (in the swarm, from the last heartbeat; None before one),
  ``loss`` (mean local training loss of this peer's steps since its previous
  commit; NaN if none), ``payload_bytes_sent`` / ``bytes_sent`` (cumulative,
  bytes) and ``round_bytes`` (payload bytes sent since the previous commit,
  aborted attempts included), ``aborts`` (this peer's, so far) and, when this
  round was evaluated, ``val`` (``{"round", "step", "metric", "value",
  "loss", "seconds"}``). ``evaluate(model) -> (val_loss, val_metric)`` (a
  task's ``evaluate``; a bare number is taken as the loss and the metric) runs
  on ``algo.eval_model()`` in a worker thread after every ``eval_every``-th
  committed round (rounds ``r`` with ``(r + 1) % eval_every == 0``) and once
  more when the run ends after a later commit; while it runs, the swarm's
  next round waits for this peer. The peer also sends the coordinator its
  mean loss, payload bytes sent, steps and latest validation (progress fields
  of ``hb``, ``done`` and ``leave``, see ``protocol``) for its status page.
- Report (``PeerReport``, ``--json``): ``losses`` holds one point per 10
  local steps and one for the last step, each the mean of the finite local
  losses since the previous point (``{"step", "round", "loss"}``; ``loss``
  null when none was finite); ``evals`` every evaluation (``{"round", "step",
  "metric", "value", "loss", "seconds"}``). Non-finite numbers are written as
  null.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..aggregate import make_aggregator
from ..aio import cancel_and_wait
from ..algorithms import ALGORITHMS, Algorithm, algorithm_config, check_own_optimizer, make_algorithm
from ..algorithms.base import check_optimizer
from ..algorithms.driver import RoundLoop, StepHandoff
from ..comm import make_run_codec
from ..devices import module_device
from ..comm.audit import AuditFailed, KeyBook, audit_report, check_audit_codec
from ..comm.collectives import CollectiveAborted, Communicator, LinkEstimator
from ..argtypes import check_writable
from ..errors import ConfigError, PeerError, ProtocolError
from ..trace.recorder import TraceWriter
from ..transport.base import Buffer, ByteCounters, Tag, Transport
from ..transport.identity import Identity
from ..transport.tcp import TcpTransport
from ..verify.hashing import state_hash
from .keys import load_identity
from .protocol import CoordinatorClient, SwarmError, parse_hostport
from .redteam import attack_kind, install, parse_collude
from .checkpoint import load_checkpoint, save_checkpoint
from .state import STATE_ROUND, StateBlob, pack_state, recv_state, send_state, state_nbytes

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 0.5
#: Smallest deadline for a whole state transfer (it includes a coordinator round trip).
STATE_FLOOR = 15.0
#: How long a peer keeps trying to reach a lost coordinator.
RECONNECT_FOR = 60.0


#: Seconds an audited peer lets its collective finish after the attempt was aborted elsewhere.
AUDIT_GRACE = 2.0
#: Local steps per point of the report's loss curve (each point: the mean over them).
LOSS_EVERY = 10


@dataclass
class PeerReport:
    """What one peer did: the rounds it took part in and the agreed hash of each."""

    peer_id: str
    rounds_completed: int = 0
    state_hashes: list[dict[str, Any]] = field(default_factory=list)
    joined_round: int | None = None
    aborts: int = 0
    resyncs: int = 0
    rejoins: int = 0
    algorithm: str = ""
    codec: str = ""
    aggregator: str = "mean"
    steps: int = 0
    final_state_hash: str | None = None
    payload_bytes_sent: int = 0
    bytes_sent: int = 0
    losses: list[dict[str, Any]] = field(default_factory=list)
    resumed_round: int | None = None
    #: every evaluation of the shared model (``Peer(evaluate=..., eval_every=...)``)
    evals: list[dict[str, Any]] = field(default_factory=list)
    #: the name of the evaluation's metric ("" without evaluation)
    metric: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; non-finite numbers (a diverged loss) become None (null)."""
        return _finite_json({"peer_id": self.peer_id, "algorithm": self.algorithm, "codec": self.codec,
                             "aggregator": self.aggregator, "rounds_completed": self.rounds_completed,
                             "steps": self.steps, "final_state_hash": self.final_state_hash,
                             "payload_bytes_sent": self.payload_bytes_sent, "bytes_sent": self.bytes_sent,
                             "state_hashes": self.state_hashes, "joined_round": self.joined_round,
                             "aborts": self.aborts, "resyncs": self.resyncs, "rejoins": self.rejoins,
                             "resumed_round": self.resumed_round, "losses": self.losses, "metric": self.metric,
                             "evals": self.evals})

    def write(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, p)


def _finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _mean(xs: list[float]) -> float:
    """The mean of the finite values of ``xs``; NaN when there is none."""
    finite = [x for x in xs if math.isfinite(x)]
    return math.fsum(finite) / len(finite) if finite else math.nan


def _group_ok(aggregator: Any, n: int) -> bool:
    try:
        if hasattr(aggregator, "check"):
            aggregator.check(n)
    except ConfigError:
        return False
    return True


class _Stopping(Exception):
    pass


class _Rejoin(Exception):
    pass


class _HookedTransport(Transport):
    """Delegates to a transport; plays the test hooks (see the module docstring)."""

    def __init__(self, inner: Transport, kill_round: int | None) -> None:
        self.inner = inner
        self.signal = getattr(signal, os.environ.get("GOSSAMER_TEST_KILL_SIGNAL") or "SIGKILL")
        self.counters = inner.counters
        self.kill_round = kill_round
        self._sent_in_kill_round = 0

    @property
    def peer_id(self) -> str:
        return self.inner.peer_id

    async def send(self, dst: str, tag: Tag, payload: Buffer) -> None:
        await self.inner.send(dst, tag, payload)
        if (self.kill_round is not None and tag.round > 0 and (tag.round >> 32) > 0
                and (tag.round & 0xFFFFFFFF) == self.kill_round and tag.phase == 0):
            self._sent_in_kill_round += 1
            if self._sent_in_kill_round == 1:
                log.warning("test hook: %s in the middle of round %d's all-reduce", self.signal.name, self.kill_round)
                os.kill(os.getpid(), self.signal)

    async def recv(self, src: str, tag: Tag, *, timeout: float | None = None) -> bytes:
        return await self.inner.recv(src, tag, timeout=timeout)

    def compute(self, seconds: float) -> None:
        self.inner.compute(seconds)

    def now(self) -> float:
        return self.inner.now()

    async def close(self) -> None:
        await self.inner.close()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


class _PeerTrace:
    """This peer's trace (module docstring): one ``TraceWriter`` on the wall
    clock, and what was computed and sent since the last record."""

    def __init__(self, path: str | os.PathLike[str], pid: str, counters: ByteCounters, meta: dict[str, Any]) -> None:
        self.writer = TraceWriter(path, source=pid, meta=meta)
        self.pid = pid
        self.counters = counters
        self.compute_s = 0.0
        self.compute_steps = 0
        self.compute_end = 0.0
        self.last_loss = math.nan
        #: payload and framing bytes counted to each destination when last recorded
        self.sent_to: dict[str, tuple[int, int]] = {}

    def record(self, kind: str, **fields: Any) -> None:
        self.writer.record(kind, **fields)

    def step(self, seconds: float, end: float, loss: float) -> None:
        self.compute_s += seconds
        self.compute_steps += 1
        self.compute_end = end
        self.last_loss = loss

    def compute(self, rnd: int) -> None:
        """The local steps since the previous sync, as one ``compute`` event of round ``rnd``."""
        if self.compute_steps:
            self.writer.record("compute", round=rnd, peer=self.pid, value=self.compute_s, t=self.compute_end,
                               steps=self.compute_steps)
            self.compute_s, self.compute_steps = 0.0, 0

    def sent(self, rnd: int, t: float, **detail: Any) -> None:
        """Payload bytes sent to each destination since the last call, one ``bytes`` event each."""
        for dst, counter in sorted(self.counters.sent_to.items()):
            payload0, framing0 = self.sent_to.get(dst, (0, 0))
            if counter.payload != payload0 or counter.framing != framing0:
                self.writer.record("bytes", round=rnd, peer=self.pid, other=dst, value=counter.payload - payload0, t=t,
                                   framing=counter.framing - framing0, **detail)
                self.sent_to[dst] = (counter.payload, counter.framing)

    def attempt_done(self, rnd: int, attempt: int, started: float, decision: dict[str, Any] | None,
                     audit: dict[str, Any] | None, outcomes: list[Any], reason: str = "") -> None:
        """One attempt of round ``rnd`` ended (``decision`` None: it ended by a rejoin, ``reason``)."""
        now = time.time()
        self.sent(rnd, now, attempt=attempt)
        verdict = "rejoin" if decision is None else str(decision.get("decision"))
        self.writer.record("phase", round=rnd, peer=self.pid, value=now - started, t=now, name="sync", phase="sync",
                           attempt=attempt, decision=verdict)
        for outcome in outcomes:
            for contributor, s in sorted((getattr(outcome, "scores", None) or {}).items()):
                cosine = getattr(s, "cosine", None)
                self.writer.record("score", round=rnd, peer=contributor, other=self.pid, value=cosine, t=now,
                                   cosine=cosine, norm_ratio=getattr(s, "norm_ratio", None),
                                   dist_ratio=getattr(s, "dist_ratio", None), long_cosine=getattr(s, "long_cosine", None),
                                   bad=bool(getattr(s, "bad", False)), reasons=list(getattr(s, "reasons", ())),
                                   op=getattr(outcome, "name", None), attempt=attempt)
        if verdict == "commit":
            return  # the round event follows once the commit is applied here (``committed``)
        blamed: str | None = None
        detail: dict[str, Any] = {}
        if audit is not None:
            proven = sorted(audit.get("proven") or {})
            blame = audit.get("blame")
            blamed = (blame[0] if isinstance(blame, list) and blame else blame if isinstance(blame, str) else None) \
                or (proven[0] if proven else None)
            if proven:
                detail["proven"] = proven
        if decision is not None:
            reason = str(decision.get("reason") or "")
        self.writer.record("abort", round=rnd, peer=blamed, t=now, reason=reason, attempt=attempt,
                           **({"rejoin": True} if decision is None else {}), **detail)

    def committed(self, rnd: int, digest: str, members: list[str] | None, **detail: Any) -> None:
        now = time.time()
        self.writer.record("round", round=rnd, peer=self.pid, t=now, hash=digest,
                           **({"members": members} if members is not None else {}), **detail)
        if not math.isnan(self.last_loss):
            self.writer.record("loss", round=rnd, peer=self.pid, value=self.last_loss, t=now)

    def close(self, rnd: int) -> None:
        """Steps and bytes after the last sync (numbered ``rnd``), then flush and close."""
        try:
            self.compute(rnd)
            self.sent(rnd, time.time())
        finally:
            self.writer.close()


class Peer:
    """One member of a swarm; see the module docstring."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor], *,
                 coordinator: str, algorithm: str = "diloco", key: str | os.PathLike[str] | None = None,
                 identity: Identity | None = None, listen: str = "127.0.0.1:0", advertise: str | None = None,
                 swarm_id: str = "gossamer", coordinator_id: str | None = None, fingerprint: str = "",
                 progress: Callable[[dict[str, Any]], None] | None = None, codec: str | None = None,
                 aggregator: str = "mean", tolerate: int = 0, seed: int = 0, deadline_floor: float = 2.0,
                 checkpoint: str | os.PathLike[str] | None = None, checkpoint_every: int = 1,
                 resume: str | os.PathLike[str] | None = None, faults: Any = None, audit: int = 0,
                 attack: str | None = None, collude: str | None = None,
                 trace: str | os.PathLike[str] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 evaluate: Callable[[torch.nn.Module], Any] | None = None, eval_every: int = 0,
                 metric: str | None = None, **options: Any) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {algorithm!r}; accepted: {', '.join(ALGORITHMS)}")
        algorithm_config(algorithm, **options)  # unknown or invalid options fail here, before joining
        if optimizer is not None:  # the user's own inner optimizer (gossamer.Optimizer)
            check_own_optimizer(algorithm, options)
            check_optimizer(optimizer, [q for q in model.parameters() if q.requires_grad], what=algorithm)
        self.optimizer = optimizer
        self.model = model
        self.loss_fn = loss_fn
        self.coordinator = parse_hostport(coordinator)
        self.algorithm_name = algorithm
        self.options = options
        # The same payload codec the simulator uses for this algorithm, unless told otherwise.
        cls = ALGORITHMS[algorithm][0]
        if codec is not None and codec not in ("none", "fp32") and not cls.uses_codec:
            raise ConfigError(f"--codec does not apply to {algorithm}: it sends one quantized byte per step")
        spec = codec if codec is not None else (cls.default_codec if cls.uses_codec else "none")
        resolved = make_run_codec(spec)  # a bad spec fails here, before joining
        cls.check_codec(spec)  # e.g. sparseloco needs the +ef accumulator
        self.codec_spec = resolved.spec if resolved is not None else "none"
        self.aggregator_spec = aggregator
        self.tolerate = tolerate
        agg = make_aggregator(aggregator, tolerate)
        #: the smallest group the aggregator can run in: the coordinator starts no smaller round
        self.min_group = next((n for n in range(1, 257) if _group_ok(agg, n)), 257)
        if aggregator != "mean" and not ALGORITHMS[algorithm][0].individual_contributions:
            raise ConfigError(f"algorithm {algorithm!r} does not carry individual contributions, so --aggregator does not apply to it")
        self.seed = seed
        if isinstance(audit, bool) or not isinstance(audit, int) or audit < 0:
            raise ConfigError(f"audit must be the number of auditors per chunk (0 = off), got {audit!r}")
        if audit:
            check_audit_codec(resolved)
        self.audit = audit
        self.attack = attack
        self.collude = collude
        self._statements: dict[str, Any] | None = None
        if audit and not ALGORITHMS[algorithm][0].individual_contributions:
            raise ConfigError(f"--audit does not apply to {algorithm}: it has no all-reduce of individual contributions to audit")
        if attack is not None:
            kind = attack_kind(attack)  # unknown names fail here, before joining
            if kind == "owner" and not audit:
                raise ConfigError(f"--attack {attack} lies inside the audited all-reduce: it needs --audit")
            if kind == "swarm" and not audit:
                raise ConfigError(f"--attack {attack} lies to the coordinator about audited rounds (scores and "
                                  f"state hashes are judged only in audited swarms): it needs --audit")
            if collude is not None:
                parse_collude(collude)
        elif collude is not None:
            raise ConfigError("--collude is for attacking peers: it needs --attack")
        if not deadline_floor > 0:
            raise ConfigError(f"deadline_floor must be > 0 seconds, got {deadline_floor}")
        self.deadline_floor = deadline_floor
        if checkpoint_every <= 0:
            raise ConfigError(f"checkpoint_every must be > 0 rounds, got {checkpoint_every}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.checkpoint is not None:
            try:
                self.checkpoint.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot use {self.checkpoint} as the checkpoint folder: {exc.strerror or exc}") from None
        self.checkpoint_every = checkpoint_every
        if trace is not None:
            check_writable(str(trace))  # a missing or read-only folder fails here, before joining
        self.trace_path = Path(trace) if trace is not None else None
        self._trace: _PeerTrace | None = None
        self._last_audit: dict[str, Any] | None = None
        self.resume = Path(resume) if resume is not None else None
        if self.resume is not None and not (self.resume / "state.json").is_file():
            raise ConfigError(f"--resume {self.resume}: no checkpoint there (state.json is missing)")
        self._key = key
        self._identity = identity
        self.listen = parse_hostport(listen)
        self.advertise = parse_hostport(advertise) if advertise else None
        self.swarm_id = swarm_id
        self.coordinator_id = coordinator_id
        self.extra_fingerprint = fingerprint
        self.progress = progress
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
            raise ConfigError(f"eval_every must be a number of rounds >= 0 (0: never), got {eval_every!r}")
        if eval_every and evaluate is None:
            raise ConfigError("eval_every needs evaluate (a function of the model returning (val_loss, val_metric))")
        self.evaluate = evaluate
        self.eval_every = eval_every if evaluate is not None else 0
        self.metric = metric or ("val_metric" if evaluate is not None else "")
        #: local losses since the last commit, the last commit's mean, what was sent by then
        self._round_losses: list[float] = []
        self._last_loss = math.nan
        self._sent_at_commit = 0
        self._members: int | None = None
        self._last_val: dict[str, Any] | None = None
        self.round = 0
        self.report: PeerReport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        #: Fault injection for tests (a fault plan object): ``faults.before_sync(round)``, if it
        #: exists, runs inside every attempt just before the sync and may raise;
        #: ``await faults.before_report(round)`` after the sync, before its result is reported.
        self.faults = faults
        self.kill_round = _env_int("GOSSAMER_TEST_KILL_IN_ROUND")
        self.corrupt_round = _env_int("GOSSAMER_TEST_CORRUPT_ROUND")
        self.join_at_round = _env_int("GOSSAMER_TEST_JOIN_AT_ROUND")
        self.step_sleep = float(os.environ.get("GOSSAMER_TEST_STEP_SLEEP") or 0.0)

    # ------------------------------------------------------------------ public

    def train(self, batches: Iterable[Any], *, steps: int | None = None, rounds: int | None = None) -> PeerReport:
        """Blocking form of ``run``."""
        return asyncio.run(self.run(batches, steps=steps, rounds=rounds))

    def request_stop(self) -> None:
        """Leave the swarm at the next safe point (thread- and signal-safe)."""
        self._stop_requested.set()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self, batches: Iterable[Any], *, steps: int | None = None, rounds: int | None = None) -> PeerReport:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if isinstance(batches, StepHandoff):
            batches.bind()  # the user's loop may hand over steps as soon as we are admitted
        if self._stop_requested.is_set():
            self._stop.set()
        identity = self._identity or load_identity(self._key)
        self.report = PeerReport(identity.peer_id, algorithm=self.algorithm_name, codec=self.codec_spec,
                                 aggregator=self.aggregator_spec, metric=self.metric)
        tcp = await TcpTransport.start(identity, self.swarm_id, *self.listen)
        tcp.trust({identity.peer_id})  # strangers get small buffers until the coordinator names the members
        self._known_ids: set[str] = set()
        self.tcp = tcp
        self.transport: Transport = _HookedTransport(tcp, self.kill_round) if self.kill_round is not None else tcp
        bg: list[asyncio.Task[Any]] = []
        round_loop: _SwarmLoop | None = None
        self.client: CoordinatorClient | None = None
        self._identity_obj = identity
        self._last_audit: dict[str, Any] | None = None
        try:
            if self.trace_path is not None:
                self._trace = _PeerTrace(self.trace_path, identity.peer_id, tcp.counters, meta={
                    "swarm": self.swarm_id, "coordinator": f"{self.coordinator[0]}:{self.coordinator[1]}",
                    "algorithm": self.algorithm_name, "codec": self.codec_spec, "aggregator": self.aggregator_spec,
                    "tolerate": self.tolerate, "seed": self.seed, "audit": self.audit, "options": self.options,
                    **({"attack": self.attack} if self.attack is not None else {})})
                if self.attack is not None:
                    self._trace.record("attack", peer=identity.peer_id, attack=self.attack)
            aggregator = None
            if self.aggregator_spec != "mean" or self.tolerate:
                aggregator = make_aggregator(self.aggregator_spec, self.tolerate, seed=self.seed)
            self.comm = Communicator(self.transport, [identity.peer_id], codec=make_run_codec(self.codec_spec),
                                     aggregator=aggregator, seed=self.seed, device=module_device(self.model))
            self.comm.link = LinkEstimator(floor=self.deadline_floor)
            if self.audit:
                self.comm.keybook = KeyBook(identity)
                self.comm.audit_shadows = self.audit
            if self.attack is not None:
                log.warning("RED-TEAM: this peer attacks the swarm (%s)", self.attack)
                install(self.attack, self.comm, identity.peer_id, seed=self.seed, collude=self.collude)
            self.algo: Algorithm = make_algorithm(self.algorithm_name, self.model, self.loss_fn, self.comm, **self.options)
            if self.optimizer is not None:
                self.algo.use_optimizer(self.optimizer)
            self._genesis = self.algo.state_dict()
            self._fingerprint = self._make_fingerprint()
            self._blob: StateBlob | None = None
            #: The last committed swarm round this peer holds (-1: the genesis state, -2: nothing yet),
            #: its agreed hash and the full state_dict of that moment.
            self._committed = -2
            self._committed_hash = ""
            self._committed_sd: dict[str, Any] | None = None
            #: The result of the attempt we reported ``done`` for, until its decision arrives.
            self._candidate: tuple[int, str, dict[str, Any]] | None = None
            #: True until the first admission after --resume: the operator's consent to go back to it.
            self._resuming = False
            if self.resume is not None:
                self._resuming = True
                self._resume_from(self.resume)
            await self._reconnect()  # the same patience as a running peer that lost its coordinator
            bg.append(asyncio.create_task(self._heartbeats(), name="heartbeats"))
            bg.append(asyncio.create_task(self._serve(), name="serve"))
            loop = round_loop = _SwarmLoop(self, batches, steps, rounds)
            while True:
                try:
                    if self.join_at_round is not None:
                        while int((await self._c.request("hb")).get("round", 0)) < self.join_at_round:
                            await self._interruptible(asyncio.sleep(0.05))
                    await self._join()
                    await loop.run()
                    if self.eval_every and self._committed >= 0 and (
                            self._last_val is None or self._last_val["round"] < self._committed):
                        await self._evaluate(self._committed, final=True)  # the model the run ends with
                    break
                except PeerError as exc:
                    if self.client is None or not self.client.closed_event.is_set():
                        raise
                    log.warning("lost the coordinator (%s); reconnecting", exc)
                    self._emit(event="rejoin", round=self.round, reason=f"lost the coordinator: {exc}")
                    await self._reconnect()
                    self.report.rejoins += 1
        except _Stopping:
            pass
        finally:
            for task in bg:
                task.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
            if round_loop is not None:
                round_loop.flush_losses()  # the steps since the last point, however the run ended
            if hasattr(self, "algo"):
                self.report.final_state_hash = self.algo.shared_hash()
                self.report.steps = self.algo.steps
                if self.checkpoint is not None and self._committed >= 0:
                    await self._write_checkpoint()
            self.report.payload_bytes_sent = tcp.counters.sent.payload
            self.report.bytes_sent = tcp.counters.sent.total
            if self._trace is not None:
                trace, self._trace = self._trace, None
                try:
                    trace.close(self.round)
                except Exception as exc:  # a trace that cannot be written must not skip leaving the swarm
                    log.error("closing the trace %s failed: %s", self.trace_path, exc)
            client = self.client
            if client is not None:
                if not client.closed_event.is_set():
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(5):
                            await client.request("leave", **self._progress_fields())
                await client.close()
            await tcp.close()
        return self.report

    # ------------------------------------------------------------------ internals

    @property
    def _c(self) -> CoordinatorClient:
        assert self.client is not None, "not connected to the coordinator"
        return self.client

    async def _connect_coordinator(self) -> None:
        client = await CoordinatorClient.connect(self._identity_obj, self.swarm_id, *self.coordinator,
                                                 coordinator_id=self.coordinator_id)
        client.on_rtt = self.comm.link.observe_rtt
        host, port = self.advertise or self.tcp.address
        if host in ("0.0.0.0", "::", ""):
            host = client.local_host
        self.addr = [host, port]
        self.client = client

    async def _reconnect(self) -> None:
        """Reconnect to the coordinator, for up to ``RECONNECT_FOR`` seconds."""
        delay, waited = 0.25, 0.0
        last: Exception | None = None
        if self.client is not None:
            await self.client.close()
        while waited < RECONNECT_FOR:
            try:
                await self._connect_coordinator()
                return
            except (PeerError, ProtocolError) as exc:
                last = exc
            await self._interruptible(asyncio.sleep(delay))
            waited += delay
            delay = min(2 * delay, 4.0)
        raise PeerError(f"lost the coordinator at {self.coordinator[0]}:{self.coordinator[1]} "
                        f"and could not reconnect within {RECONNECT_FOR:g} s: {last}")

    def _emit(self, **event: Any) -> None:
        if self.progress is not None:
            self.progress(event)

    def _make_fingerprint(self) -> str:
        """A digest of everything every member must share, and (``_config_desc``)
        the same as a short text map so a refusal can name what differs."""
        from .state import layout

        config = algorithm_config(self.algorithm_name, **self.options)
        desc = {"algorithm": self.algorithm_name, "codec": self.codec_spec, "aggregator": self.aggregator_spec,
                "tolerate": str(self.tolerate), "seed": str(self.seed), "audit": str(self.audit),
                **{f"option {f.name}": repr(getattr(config, f.name)) for f in dataclasses.fields(config)},
                "model": hashlib.blake2b(json.dumps(layout(self.algo.shared_state())).encode(), digest_size=8).hexdigest(),
                "extra": self.extra_fingerprint}
        self._config_desc = {k: str(v)[:200] for k, v in desc.items()}
        return hashlib.blake2b(json.dumps(desc, sort_keys=True).encode(), digest_size=16).hexdigest()

    def _commit_state(self, round_: int, digest: str, sd: dict[str, Any] | None = None) -> None:
        """Remember the committed state (for serving joiners, and to come back to
        after a lost coordinator: committed work is never replaced by older).
        ``sd``: the state_dict already taken of exactly this state, if any."""
        self._committed = round_
        self._committed_hash = digest
        self._committed_sd = sd if sd is not None else self.algo.state_dict()
        self._blob = None  # packed when a joiner first asks for it

    def _committed_blob(self) -> StateBlob:
        """The committed state packed for a transfer (once per committed round)."""
        assert self._committed_sd is not None
        if self._blob is None or self._blob.round != self._committed:
            shared = self._committed_sd["shared"]
            self._blob = pack_state(shared["tensors"], self._committed, self._committed_hash, shared["counters"])
        return self._blob

    def _resume_from(self, folder: Path) -> None:
        sd, meta = load_checkpoint(folder)
        if meta.get("fingerprint") != self._fingerprint:
            raise ConfigError(f"checkpoint {folder} was written by a peer with another configuration "
                              "(algorithm, options, codec, seed or model); resume with the same ones")
        try:
            self.algo.load_state_dict(sd)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"checkpoint {folder} does not fit this model: {exc}") from None
        digest = self.algo.shared_hash()
        if digest != meta.get("hash"):
            raise ConfigError(f"checkpoint {folder} is corrupt: its state hashes to {digest[:16]}, "
                              f"it claims {str(meta.get('hash'))[:16]}")
        round_ = int(meta["round"])
        self._commit_state(round_, digest)
        self.round = round_ + 1
        assert self.report is not None
        self.report.resumed_round = round_
        log.warning("resumed from %s: committed round %d, state %s", folder, round_, digest[:16])
        self._emit(event="resumed", round=round_, hash=digest)

    async def _write_checkpoint(self) -> None:
        if self.checkpoint is None or self._committed_sd is None:
            return
        meta = {"round": self._committed, "hash": self._committed_hash, "fingerprint": self._fingerprint,
                "peer_id": self.tcp.peer_id, "algorithm": self.algorithm_name}
        try:
            await asyncio.to_thread(save_checkpoint, self.checkpoint, self._committed_sd, meta)
        except (OSError, ConfigError) as exc:
            log.error("checkpoint to %s failed: %s", self.checkpoint, exc)

    def _progress_fields(self) -> dict[str, Any]:
        """What this peer tells the coordinator about its progress (``protocol``'s progress fields)."""
        out: dict[str, Any] = {"sent": self.tcp.counters.sent.payload}
        algo = getattr(self, "algo", None)
        if algo is not None:
            out["step"] = int(algo.steps)
        loss = _mean(self._round_losses) if self._round_losses else self._last_loss
        if math.isfinite(loss):
            out["loss"] = loss
        val = self._last_val
        if val is not None and math.isfinite(val["value"]):
            out["val"] = {"round": val["round"], "metric": val["metric"][:64], "value": val["value"],
                          **({"loss": val["loss"]} if math.isfinite(val["loss"]) else {})}
        return out

    async def _heartbeats(self) -> None:
        while True:
            client = self.client
            if client is not None and not client.closed_event.is_set():
                with contextlib.suppress(SwarmError, PeerError):
                    resp = await client.request("hb", **self._progress_fields())
                    members = resp.get("members")
                    if isinstance(members, int) and not isinstance(members, bool):
                        self._members = members
                    ids = resp.get("ids")
                    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
                        # full buffers only for current members and candidates; anyone else is a stranger
                        self._trust(ids)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _trust(self, ids: Iterable[str], *, remember: bool = True) -> None:
        ids = set(ids)
        if remember:
            self._known_ids = ids
        keep = ids | self._known_ids | {self.tcp.peer_id} | set(self.comm.group)
        for h in self.comm.in_flight:
            keep |= set(h.group)
        self.tcp.trust(keep)

    async def _serve(self) -> None:
        jobs: set[asyncio.Task[None]] = set()
        while True:
            client = self.client
            try:
                assert client is not None
                resp = await client.request("serve")
            except (PeerError, SwarmError):
                await asyncio.sleep(HEARTBEAT_INTERVAL)
                continue
            for job in resp.get("jobs", []) if isinstance(resp.get("jobs"), list) else []:
                task = asyncio.create_task(self._serve_job(job))
                jobs.add(task)
                task.add_done_callback(jobs.discard)

    async def _serve_job(self, job: Any) -> None:
        try:
            to, addr, transfer, round_ = job["to"], job["addr"], job["transfer"], job["round"]
            if not (isinstance(to, str) and isinstance(transfer, int) and isinstance(round_, int)):
                raise ProtocolError(f"bad serve job {job!r}"[:200])
            for _ in range(600):
                if self._committed >= round_ and self._committed_sd is not None:
                    break
                await asyncio.sleep(0.05)
            delay = getattr(self.faults, "serve_delay", 0.0)
            if delay:
                await asyncio.sleep(delay)  # fault plan: a slow uplink for state transfers
            if self._committed_sd is None or self._committed < round_:
                log.warning("cannot serve the state of round %d to %s: we hold round %d", round_, to, self._committed)
                return
            blob = self._committed_blob()
            self.tcp.add_peer(to, str(addr[0]), int(addr[1]))
            await send_state(self.tcp, to, transfer, blob)
            log.info("served the state of round %d (%d bytes) to %s", blob.round, blob.nbytes, to)
        except (PeerError, ProtocolError, KeyError, TypeError, IndexError, ValueError) as exc:
            log.warning("serving state failed: %s", exc)

    async def _interruptible(self, coro: Any) -> Any:
        """Await ``coro`` unless a stop is requested first (then ``_Stopping``)."""
        assert self._stop is not None
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        await cancel_and_wait(task)
        raise _Stopping()

    def _state_deadline(self) -> float:
        return max(STATE_FLOOR, self.comm.link.deadline(state_nbytes(self.algo.shared_state()), 3))

    async def _fetch(self, source: str, addr: Any, transfer: int) -> tuple[int, str]:
        """Receive the shared state of ``source`` (tensors and counters), check its
        hash, and load it (the local part is derived from it, as for a joiner)."""
        self.tcp.add_peer(source, str(addr[0]), int(addr[1]))
        self._trust([source], remember=False)
        like = [t.detach().clone() for t in self.algo.shared_state()]
        try:
            round_, claimed, counters = await recv_state(self.tcp, source, transfer, like, self._state_deadline())
        finally:  # whatever happened, nothing of this transfer is read again
            self.tcp.discard(lambda t: t.round == STATE_ROUND and t.op == transfer)
        actual = state_hash(like, meta=counters)
        if actual != claimed:
            raise ProtocolError(f"state from {source!r} hashes to {actual}, not the {claimed} it claims")
        try:
            self.algo.load_state_dict({"shared": {"tensors": like, "counters": counters}})
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"state from {source!r} does not load: {exc}") from None
        return round_, actual

    async def _join(self) -> None:
        assert self.report is not None
        delay = 0.2
        waiting_logged = False
        waiting_since = 0.0
        if self._committed_sd is not None and self._committed >= 0:
            # back to the last committed state (a round that was interrupted is redone)
            self.algo.load_state_dict(self._committed_sd)
        while True:
            have = self._committed if self._committed >= 0 else -1
            cand = self._candidate
            claim: dict[str, Any] = {"cand_round": cand[0], "cand_hash": cand[1]} if cand is not None else {}
            try:
                resp = await self._interruptible(self._c.request(
                    "join", addr=self.addr, fingerprint=self._fingerprint, have_round=have, min_group=self.min_group,
                    config=self._config_desc, have_hash=self._committed_hash if have >= 0 else "",
                    resume=self._resuming, **claim))
            except SwarmError as exc:
                if exc.code == "rejected":
                    raise ConfigError(str(exc)) from None
                if exc.code == "banned":
                    raise PeerError(str(exc)) from None
                if exc.code == "probation":  # new identities queue for a place: wait as long as it takes
                    if not waiting_logged:
                        log.warning("%s", exc)
                        self._emit(event="waiting", round=self.round, reason=str(exc))
                        waiting_logged = True
                    await self._interruptible(asyncio.sleep(delay))
                    delay = min(2 * delay, 2.0)
                    continue
                if exc.code == "stale":  # an empty swarm waits for a member that holds its agreed state
                    if not waiting_logged:
                        log.warning("%s", exc)
                        self._emit(event="waiting", round=self.round, reason=str(exc))
                        waiting_logged = True
                        waiting_since = time.monotonic()
                    elif time.monotonic() - waiting_since > RECONNECT_FOR:
                        raise PeerError(f"gave up after {RECONNECT_FOR:g} s: {exc}") from None
                    await self._interruptible(asyncio.sleep(delay))
                    delay = min(2 * delay, 2.0)
                    continue
                raise PeerError(str(exc)) from None
            mode = resp.get("mode")
            try:
                if mode == "init" and resp.get("candidate") and cand is not None:
                    # the round we last took part in did commit: its result is our committed state
                    self.algo.load_state_dict(cand[2])
                    self._commit_state(cand[0], cand[1], cand[2])
                    assert self.report is not None
                    self.report.state_hashes.append({"round": cand[0], "hash": cand[1], "agreed": cand[1]})
                    self.report.rounds_completed += 1
                    if self._trace is not None:  # it committed while we could not hear the decision
                        self._trace.committed(cand[0], cand[1], None, recovered=True)
                    self._candidate = None
                if mode == "init":
                    target = int(resp["round"])
                    if target == 0:
                        if self._committed >= 0:
                            raise ConfigError(f"the swarm is at round 0 but this peer holds committed round "
                                              f"{self._committed}: it belongs to another run (use another --swarm id)")
                        self.algo.load_state_dict(self._genesis)
                    digest = self.algo.shared_hash()
                elif mode == "fetch":
                    state_round, digest = await self._interruptible(
                        self._fetch(resp["source"], resp["source_addr"], int(resp["transfer"])))
                    if state_round == resp["round"] and resp["hash"] and digest != resp["hash"]:
                        raise ProtocolError(f"state of round {state_round} from {resp['source']} hashes to {digest}, "
                                            f"the agreed hash is {resp['hash']}")
                    target = state_round + 1
                else:
                    raise ProtocolError(f"unknown join mode {mode!r} from the coordinator")
                await self._interruptible(self._c.request("admit", round=target, hash=digest))
            except SwarmError as exc:
                if exc.code == "rejected" and mode == "init":
                    raise ConfigError(str(exc)) from None
                log.info("admission refused (%s); joining again", exc)
            except ConfigError:
                raise
            except (PeerError, ProtocolError, TimeoutError, KeyError, TypeError, ValueError) as exc:
                if self._c.closed_event.is_set():
                    raise PeerError("lost the coordinator while joining") from exc
                log.warning("state fetch failed (%s); joining again", exc)
            else:
                self._resuming = False
                self.round = target
                self._commit_state(target - 1, digest)
                if self.report.joined_round is None:
                    self.report.joined_round = target
                log.info("admitted to round %d with state %s", target, digest[:16])
                self._emit(event="admitted", round=target, hash=digest)
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    async def _connect_group(self, group: list[str], addrs: dict[str, Any]) -> None:
        me = self.tcp.peer_id
        for pid in group:
            if pid != me:
                host, port = addrs[pid]
                self.tcp.add_peer(pid, str(host), int(port))
        missing = [p for p in group if p != me and p not in self.tcp.connected_peers()]

        async def dial(pid: str) -> None:
            host, port = addrs[pid]
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.tcp.connect(pid, str(host), int(port))

        await asyncio.gather(*(dial(p) for p in missing))

    async def _sync_round(self) -> None:
        """One swarm round around ``algo.synchronize()``: barrier, attempt,
        commit or abort (restore and retry)."""
        assert self.report is not None
        snap = self.algo.state_dict()
        attempt = 0
        trace = self._trace
        waited_from: float | None = None
        while True:
            if waited_from is None:
                waited_from = time.time()
            try:
                start = await self._interruptible(self._c.request("ready", round=self.round))
            except SwarmError as exc:
                if exc.code == "busy":
                    await asyncio.sleep(0.1)
                    continue
                if exc.code == "banned":
                    raise PeerError(str(exc)) from None
                raise _Rejoin(str(exc)) from None
            group, epoch, addrs = list(start["group"]), int(start["epoch"]), dict(start["addrs"])
            if int(start["round"]) != self.round or self.tcp.peer_id not in group:
                raise _Rejoin(f"barrier answered round {start['round']} / group {group}")
            started = time.time()
            if trace is not None:
                trace.record("barrier_wait", round=self.round, peer=self.tcp.peer_id, value=started - waited_from,
                             t=started, attempt=attempt)
            waited_from = None
            self._trust(group, remember=False)
            await self._connect_group(group, addrs)
            oldest = self.comm.oldest_epoch_in_flight()
            self.tcp.discard_before(epoch if oldest is None else min(epoch, oldest))
            self.tcp.forget(set(group).union(self.comm.group, *(h.group for h in self.comm.in_flight)))
            self.tcp.discard(lambda t: t.round == STATE_ROUND)  # no state transfer to us runs now: drop late leftovers
            self.comm.regroup(group, epoch=epoch)
            self.comm.deadline_scale = float(2 ** min(attempt, 4))
            try:
                decision = await self._attempt(epoch)
            except (_Rejoin, PeerError) as exc:
                self.algo.load_state_dict(snap)
                if trace is not None:
                    trace.attempt_done(self.round, attempt, started, None, self._last_audit, list(self.comm.audits),
                                       reason=f"{type(exc).__name__.lstrip('_')}: {exc}"[:400])
                raise
            if trace is not None:
                trace.attempt_done(self.round, attempt, started, decision, self._last_audit, list(self.comm.audits))
            if decision.get("decision") == "commit":
                cand, self._candidate = self._candidate, None
                committed = self.round
                await self._committed_round(decision, len(group), cand)
                if trace is not None:
                    trace.committed(committed, str(decision["hash"]), group, attempt=attempt,
                                    **({"resync": True} if decision.get("resync") else {}))
                return
            self._candidate = None
            self.algo.load_state_dict(snap)
            if decision.get("evidence") and self._statements is not None:
                # the coordinator saw members disagree on what these signers sent: show ours
                wanted = set(decision["evidence"])
                audit = {"ctx": self._statements["ctx"],
                         "statements": {p: v for p, v in self._statements["statements"].items() if p in wanted}}
                with contextlib.suppress(SwarmError, PeerError, ProtocolError):
                    await self._c.request("audit", epoch=epoch, audit=audit)
            attempt += 1
            self.report.aborts += 1
            log.warning("round %d attempt %d aborted (%s); retrying", self.round, attempt, decision.get("reason"))
            self._emit(event="abort", round=self.round, reason=decision.get("reason"))
            await self._interruptible(asyncio.sleep(min(0.05 * 2 ** attempt, 2.0)))  # retries back off

    async def _synchronize(self) -> None:
        hook = getattr(self.faults, "before_sync", None)
        if hook is not None:
            hook(self.round)
        await self.algo.synchronize()
        hook = getattr(self.faults, "before_report", None)
        if hook is not None:  # a fault plan may hold the finished result back (a coroutine)
            await hook(self.round)

    def _audit_report(self, since: int, exc: BaseException | None = None) -> dict[str, Any] | None:
        """What the audited all-reduces of this attempt saw, for the coordinator (None: not audited)."""
        if not self.audit:
            return None
        outcomes = list(self.comm.audits)[since:]
        if isinstance(exc, AuditFailed) and exc.outcome not in outcomes:
            outcomes.append(exc.outcome)
        report = audit_report(outcomes)
        if self.attack == "scorelie":  # red-team: frame every other member, clear ourselves
            report["bad"] = {p: ["framed by a scorelie attacker"] for p in self.comm.group if p != self.tcp.peer_id}
        if outcomes:  # the last operation's signed statements, sent only when the coordinator asks
            self._statements = {"ctx": outcomes[-1].ctx, "statements": outcomes[-1].statements}
        blocked = getattr(self.comm, "blocked_on", None)
        if isinstance(exc, CollectiveAborted) and not isinstance(exc, AuditFailed) and blocked:
            report["blame"] = list(blocked) if not isinstance(blocked, str) else [blocked]
        self._last_audit = report  # the attempt's trace names whom it blames
        return report

    async def _attempt(self, epoch: int) -> dict[str, Any]:
        self.comm.audits.clear()
        self._last_audit = None
        audits_before = 0
        sync = asyncio.ensure_future(self._synchronize())
        outcome = asyncio.ensure_future(self._c.request("outcome", epoch=epoch))
        try:
            await asyncio.wait({sync, outcome}, return_when=asyncio.FIRST_COMPLETED)
            if sync.done():
                exc = sync.exception()
                if exc is None:
                    if self.corrupt_round == self.round:
                        with torch.no_grad():
                            self.algo.shared_state()[0].view(-1)[0] += 1.0
                        log.warning("test hook: corrupted the shared state after round %d", self.round)
                    digest = self.algo.shared_hash()
                    report_hash = digest
                    if self.attack == "hashlie":  # red-team: report a state we do not hold
                        report_hash = hashlib.blake2b(f"lie {self.round} {epoch}".encode(), digest_size=32).hexdigest()
                    # kept until the decision arrives: if the coordinator dies after deciding to
                    # commit but before we hear it, this result is what the swarm committed
                    self._candidate = (self.round, digest, self.algo.state_dict())
                    audit = self._audit_report(audits_before)
                    req = self._c.request("done", epoch=epoch, ok=True, hash=report_hash, agree=self.algo.in_agreement(),
                                          **({"audit": audit} if audit is not None else {}), **self._progress_fields())
                else:
                    local = not isinstance(exc, (CollectiveAborted, PeerError, ProtocolError, AuditFailed))
                    if local:
                        log.error("sync failed here: %r", exc)
                    audit = self._audit_report(audits_before, exc)
                    req = self._c.request("done", epoch=epoch, ok=False, local=local,
                                          reason=f"{type(exc).__name__}: {exc}"[:400],
                                          **({"audit": audit} if audit is not None else {}))
                try:
                    return await req
                except SwarmError as err:
                    if err.code == "banned":
                        raise PeerError(str(err)) from None
                    if err.code == "evicted":
                        raise _Rejoin(str(err)) from None
                    return {"decision": "abort", "reason": str(err)}
            result = outcome.result()
            if result.get("decision") == "commit":  # pragma: no cover - a commit needs our report
                raise _Rejoin("the round committed without us")
            if self.audit and not sync.done():
                # an audited operation that others ended (a proof, a stall) ends here too in a
                # moment: our own verdict counts towards the majority that convicts
                await asyncio.wait({sync}, timeout=AUDIT_GRACE)
            if self.audit and sync.done() and not sync.cancelled():
                audit = self._audit_report(audits_before, sync.exception())
                if audit is not None and (audit["proven"] or audit.get("blame") or audit["bad"]):
                    with contextlib.suppress(SwarmError, PeerError, ProtocolError):
                        await self._c.request("audit", epoch=epoch, audit=audit)
            return result
        except SwarmError as err:
            if err.code == "banned":
                raise PeerError(str(err)) from None
            if err.code == "evicted":
                raise _Rejoin(str(err)) from None
            return {"decision": "abort", "reason": str(err)}
        finally:
            await cancel_and_wait(sync, outcome)  # a failure of either was already acted on

    async def _committed_round(self, decision: dict[str, Any], group_size: int,
                               cand: tuple[int, str, dict[str, Any]] | None = None) -> None:
        """``cand``: (round, hash, state_dict) of the state we reported for this round."""
        assert self.report is not None
        sd = None
        agreed = str(decision["hash"])
        resync = decision.get("resync")
        if resync:
            log.warning("our state after round %d disagrees with the majority %s; resyncing from %s",
                        self.round, agreed[:16], resync["source"])
            try:
                got_round, digest = await self._fetch(resync["source"], resync["addr"], int(resync["transfer"]))
            except (PeerError, ProtocolError, TimeoutError) as exc:
                raise _Rejoin(f"resync failed: {exc}") from exc
            if got_round != self.round or digest != agreed:
                raise _Rejoin(f"resync got round {got_round} hash {digest[:16]}, wanted round {self.round} {agreed[:16]}")
            self.report.resyncs += 1
            self._emit(event="resync", round=self.round, source=resync["source"])
        else:
            if cand is not None and cand[0] == self.round:
                digest, sd = cand[1], cand[2]  # hashed and copied when we reported it; unchanged since
            else:
                digest = self.algo.shared_hash()
            if decision.get("agreed", True) and digest != agreed:
                raise _Rejoin(f"our hash {digest[:16]} is not the agreed {agreed[:16]} and no resync was offered")
        self._commit_state(self.round, digest, sd)
        if self.checkpoint is not None and (self.round + 1) % self.checkpoint_every == 0:
            await self._write_checkpoint()
        self.report.state_hashes.append({"round": self.round, "hash": digest, "agreed": agreed})
        self.report.rounds_completed += 1
        loss = _mean(self._round_losses)
        self._round_losses = []
        self._last_loss = loss
        sent = self.tcp.counters.sent
        round_bytes, self._sent_at_commit = sent.payload - self._sent_at_commit, sent.payload
        val = None
        if self.eval_every and (self.round + 1) % self.eval_every == 0:
            val = await self._evaluate(self.round)
        self._emit(event="commit", round=self.round, hash=agreed, group=group_size, step=self.algo.steps,
                   members=self._members, loss=loss, payload_bytes_sent=sent.payload, bytes_sent=sent.total,
                   round_bytes=round_bytes, aborts=self.report.aborts, **({"val": val} if val is not None else {}))
        self.round += 1

    async def _evaluate(self, rnd: int, *, final: bool = False) -> dict[str, Any] | None:
        """Evaluate the shared model after round ``rnd`` (in a worker thread); record
        it in the report, the trace and the heartbeats. A failing ``evaluate`` is
        logged and skipped: it never costs the run."""
        assert self.evaluate is not None and self.report is not None
        evaluate, model = self.evaluate, self.algo.eval_model()

        def run() -> Any:
            was_training = model.training
            model.eval()  # as the simulator evaluates: no dropout, running statistics
            try:
                with torch.no_grad():
                    return evaluate(model)
            finally:
                model.train(was_training)

        began = time.perf_counter()
        try:
            result = await asyncio.to_thread(run)
            if isinstance(result, (tuple, list)):
                val_loss, value = float(result[0]), float(result[1])
            else:
                val_loss = value = float(result)
        except Exception as exc:
            log.error("evaluation after round %d failed: %r", rnd, exc)
            return None
        seconds = time.perf_counter() - began
        val = {"round": rnd, "step": int(self.algo.steps), "metric": self.metric, "value": value, "loss": val_loss,
               "seconds": round(seconds, 4)}
        self._last_val = val
        self.report.evals.append(val)
        if self._trace is not None:
            self._trace.record("eval", round=rnd, peer=self.tcp.peer_id, value=value, metric=self.metric,
                               loss=val_loss, step=val["step"], seconds=val["seconds"])
        self._emit(event="eval", final=final, **val)
        return val


class _SwarmLoop(RoundLoop):
    """The one round loop in the swarm: local steps in a worker thread, each
    sync wrapped in a swarm round (``Peer._sync_round``)."""

    def __init__(self, peer: Peer, batches: Iterable[Any] | StepHandoff, steps: int | None, rounds: int | None) -> None:
        super().__init__(peer.algo, self._next, steps if steps is not None else sys.maxsize)
        self.peer = peer
        #: a user's loop handing over its steps (gossamer.Optimizer), or None: batches from an iterable
        self.handoff = batches if isinstance(batches, StepHandoff) else None
        self.batches: Iterator[Any] = iter(()) if self.handoff is not None else iter(batches)  # type: ignore[arg-type]
        self.rounds = rounds
        #: local losses since the last point of the report's loss curve
        self._window: list[float] = []

    def _next(self) -> Any:
        return next(self.batches, None)

    async def fetch_batch(self) -> Any:
        if self.handoff is None:
            return self._next()
        return await self.handoff.take()

    def stopping(self) -> bool:
        stop = self.peer._stop
        return (stop is not None and stop.is_set()) or (self.rounds is not None and self.peer.round >= self.rounds)

    async def local_step(self, batch: Any) -> float:
        begin = time.time()
        loss = await asyncio.to_thread(self.algo.step, batch)
        self.peer._round_losses.append(float(loss))
        self._window.append(float(loss))
        if self.peer.step_sleep:
            await asyncio.sleep(self.peer.step_sleep)
        trace = self.peer._trace
        if trace is not None:
            end = time.time()
            trace.step(end - begin, end, float(loss))
        return loss

    async def sync(self) -> None:
        peer = self.peer
        assert peer.report is not None
        if peer._trace is not None:
            peer._trace.compute(peer.round)
        try:
            await peer._sync_round()
        except _Rejoin as exc:
            peer.report.rejoins += 1
            log.warning("rejoining the swarm: %s", exc)
            peer._emit(event="rejoin", round=peer.round, reason=str(exc))
            await peer._join()

    def after_step(self, loss: float) -> None:
        if self.algo.steps % LOSS_EVERY == 0 or self.algo.steps == self.total_steps:
            self.flush_losses()
        if self.handoff is not None:
            self.handoff.resolve(loss)

    def flush_losses(self) -> None:
        """One point of the report's loss curve: the mean loss of the steps since the last point."""
        report = self.peer.report
        if report is not None and self._window:
            report.losses.append({"step": self.algo.steps, "round": self.peer.round, "loss": _mean(self._window)})
        self._window = []

"""The coordinator: membership, heartbeats, rounds, groups and agreed state
hashes. No tensor data passes through it (see ``protocol`` for the wire).

Contract (one swarm, one coordinator process):

- Membership. A peer ``join``s (a *candidate*), obtains the shared state
  (``init`` from the seed before round 0, else ``fetch`` from a named member
  with a transfer id) and ``admit``s itself with the hash of that state. The
  coordinator admits it only at a round boundary (never while an attempt
  runs) and only if the hash equals the agreed hash of the state's round.
  Members leave by ``leave``, by closing their connection (a crash: the
  kernel closes it at once), or by missing heartbeats for
  ``heartbeat_timeout`` seconds (a stall); a peer that reconnects with the
  same key replaces its old registration.
- Rounds. Round ``r`` starts once every member is ``ready`` for ``r`` (round
  0 waits for ``min_peers`` members too), or, after round 0, once a quorum
  (a majority, and at least the aggregator's smallest group) is ready and the
  straggler deadline ``max(grace, median + k MAD)`` of recent barrier spreads
  has passed since the first ``ready``: the late members sit the round out
  (event ``straggler``) and rejoin from the committed state. Each start is one
  *attempt* with a fresh global ``epoch`` and the group ``sorted(ready members)``.
  Once one member of the group has reported its result (``done``), the
  others have the report deadline ``max(report_grace, median + k MAD)`` of
  recent report spreads: members still silent then (alive, heartbeating,
  but holding the round) are blamed in a ``straggler`` event with
  ``phase="report"``, charged a local failure (``max_failures`` in a row
  evict them) and the attempt is aborted and retried without waiting.
- Durability. With ``state_path`` the round, recent agreed hashes, genesis,
  epoch and transfer counters live in SQLite (one transaction per commit)
  and a restarted coordinator resumes from them. Without it, a coordinator
  with no member adopts the newest committed ``(have_round, have_hash)`` a
  joining peer reports. An empty swarm admits only its last agreed state,
  unless ``reset`` (one-shot). The configuration fingerprint belongs to the
  members present: it is forgotten when the swarm is empty. The attempt
  commits when every group member still present has reported ``done`` with
  ok; it aborts at once when any member reports a failure or any group
  member is lost. On abort every member is told so (``outcome``/``done``)
  and the round is retried with whoever is left; on commit the round number
  advances. Members therefore apply a round's result only on commit.
- Parity. With ``done`` each member reports the BLAKE2b state hash of its
  shared state after the outer step. The majority hash
  (``verify.parity.majority``, ties to seniority) becomes the agreed hash of
  the round; each dissenter is told to resync from an agreeing member (a
  ``serve`` job for that member, a transfer id for both), and the event is
  logged (WARNING) and written to the events file.
- Events (``join``, ``admit``, ``leave``, ``lost``, ``start``, ``abort``,
  ``commit``, ``resync``, ``reject``) are logged and, with ``events_path``,
  appended as JSON lines ``{"t", "event", ...}``; each is also handed to every
  callable in ``listeners`` (``listener(kind, fields)``, on the event loop; a
  listener that raises is logged and costs nothing else): the status page
  (``swarm.status``) follows the swarm this way.
- Progress. Members may add progress fields to ``hb`` and ``done``
  (``protocol.progress_fields``: mean local loss, cumulative payload bytes
  sent, local steps, latest validation); the latest of each peer is in
  ``peer_stats``. A ``commit`` event then carries ``loss``, the mean of the
  losses the group reported with its ``done``, and ``bytes``, the payload
  bytes the group sent since each member's previous commit (aborted attempts
  and state transfers included), when any member reported them. Peers that
  send no progress fields work as before; malformed ones are a bad request
  on ``hb`` and ``leave``, and ignored (logged) on ``done``, whose report
  the round needs.
- ``status()``: a snapshot of the live state (round, phase, members with
  address, state, seconds since their last frame, reputation, progress;
  excluded keys; counters), for the status page.
- Trace: with ``trace`` (a path) the same events also go to a
  ``trace.TraceWriter`` (``source="coordinator"``, wall-clock ``t``, appending
  to a file already there): ``join`` -> ``join``; ``leave``, ``lost`` and the
  removal that follows an eviction or exclusion -> ``leave`` (detail
  ``reason``, ``how``); ``evict`` -> ``evict`` (``reason``, ``failures``);
  ``straggler`` -> one ``straggler`` per late member (``value`` = ``waited``,
  detail ``waited``, ``deadline``); ``abort`` -> ``abort`` (``reason``,
  ``attempt``, ``epoch``; ``peer`` = the member an audit proved guilty when
  the reason quotes the proof ("... proven misbehaviour: X: ..."), else the
  member a reason "peer X failed: ..." or "member X left the group: ..."
  names, else NULL); ``commit`` ->
  ``round`` (``hash``, ``members``, ``attempt``, ``epoch``, ``dissenters``,
  and ``loss`` and ``bytes`` when members reported them);
  ``exclude`` -> ``exclude`` (``peer``, ``rule``, ``evidence``). Other events
  (admit, start, resync, reject, adopt, rollback, reset) have no trace kind.
- Defensive: every request is validated field by field; a bad one gets an
  error response naming the fault; a bad frame costs that connection. At
  most ``MAX_OUTSTANDING`` requests per connection run at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import sqlite3
import statistics
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PeerError, ProtocolError
from ..trace.recorder import TraceWriter
from ..transport.base import Tag
from ..transport.identity import Identity
from ..transport.tcp import handshake
from ..verify import combined_hash
from ..verify.parity import majority
from ..verify.tribunal import TrustDesk
from ..comm.audit import verify_statement
from .protocol import (OPS, REQUEST_PHASE, RESPONSE_PHASE, FramedStream, SwarmError, address, decode_message,
                       encode_message, field, progress_fields)

log = logging.getLogger(__name__)

MAX_OUTSTANDING = 16
SERVE_POLL = 5.0
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
DEFAULT_STRAGGLER_GRACE = 10.0
#: Agreed hashes kept (older rounds are forgotten).
KEEP_ROUNDS = 4096
#: Peers whose progress fields are kept (beyond it, those of peers no longer present are dropped).
KEEP_PEER_STATS = 1024
#: The member an abort reason blames: the one a member's audit proved guilty ("... proven
#: misbehaviour: X: ..."), else the member that failed or left ("peer X failed: ...",
#: "member X left the group: ...").
_PROVEN = re.compile(r"proven misbehaviour: ([^\s:;]+):")
_BLAMED = re.compile(r"^(?:peer (\S+) failed|member (\S+) left the group)")


def blamed_by(reason: str) -> str | None:
    """The member an abort ``reason`` blames, or None (see ``_PROVEN``, ``_BLAMED``)."""
    m = _PROVEN.search(reason)
    if m is not None:
        return m.group(1)
    m = _BLAMED.match(reason)
    return (m.group(1) or m.group(2)) if m is not None else None


@dataclass(eq=False)
class _Conn:
    peer_id: str
    stream: FramedStream
    where: str
    last_seen: float
    outstanding: int = 0
    tasks: set[asyncio.Task[Any]] = dc_field(default_factory=set)
    closed: bool = False


@dataclass
class _Member:
    peer_id: str
    addr: tuple[str, int]
    since: int
    ready: bool = False


class _Store:
    """The coordinator's small durable state in SQLite (standard library): the
    round, the agreed hash of recent rounds (and which committed without
    parity), the genesis hash, the epoch and transfer counters. Written in one
    transaction per commit; read once at start."""

    def __init__(self, path: str | Path) -> None:
        import sqlite3

        try:
            self.db = sqlite3.connect(str(path), isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS agreed (round INTEGER PRIMARY KEY, hash TEXT NOT NULL, free INTEGER NOT NULL)")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the coordinator state {path}: {exc}") from None
        self.path = str(path)

    def load(self, c: "Coordinator") -> None:
        kv = dict(self.db.execute("SELECT k, v FROM kv").fetchall())
        if "round" not in kv:
            return
        c.round = int(kv["round"])
        c.started = False  # wait for --min-peers again before resuming
        c.genesis = kv.get("genesis") or None
        c.epoch = max(c.epoch, int(kv.get("epoch", 0)) + 1)
        c._transfer = max(c._transfer, int(kv.get("transfer", 0)) + 1)
        if kv.get("banned"):
            c.banned.update(json.loads(kv["banned"]))
        if kv.get("reputation"):
            c.trust.reputation.load_state_dict(json.loads(kv["reputation"]))
        for r, h, free in self.db.execute("SELECT round, hash, free FROM agreed"):
            c.agreed[int(r)] = str(h)
            if free:
                c.free.add(int(r))
        log.warning("coordinator state from %s: resuming at round %d (agreed %s)", self.path, c.round,
                    (c.agreed.get(c.round - 1) or "-")[:16])

    def save(self, c: "Coordinator") -> None:
        rows = [("round", str(c.round)), ("genesis", c.genesis or ""), ("epoch", str(c.epoch)),
                ("transfer", str(c._transfer)), ("banned", json.dumps(c.banned)),
                ("reputation", json.dumps(c.trust.reputation.state_dict()))]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", rows)
            last = c.round - 1
            if last in c.agreed:
                self.db.execute("INSERT OR REPLACE INTO agreed (round, hash, free) VALUES (?, ?, ?)",
                                (last, c.agreed[last], int(last in c.free)))
            self.db.execute("DELETE FROM agreed WHERE round < ?", (c.round - KEEP_ROUNDS,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise


class Coordinator:
    """See the module docstring. ``await Coordinator.start(...)``, then
    ``await c.wait_closed()`` (or ``close()``)."""

    def __init__(self, identity: Identity, swarm_id: str = "gossamer", *, min_peers: int = 1,
                 heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT, allowed: frozenset[str] | None = None,
                 events_path: str | Path | None = None, io_timeout: float = 30.0,
                 state_path: str | Path | None = None, reset: bool = False,
                 straggler_grace: float = DEFAULT_STRAGGLER_GRACE, straggler_k: float = 4.0,
                 max_failures: int = 3, join_grace: float = 60.0, rollback_grace: float = 20.0,
                 report_grace: float = 30.0,
                 trace: str | Path | None = None) -> None:
        self.identity = identity
        self.swarm_id = swarm_id
        self.min_peers = max(1, min_peers)
        self.heartbeat_timeout = heartbeat_timeout
        self.allowed = allowed
        self.io_timeout = io_timeout
        self._events = open(events_path, "a", buffering=1) if events_path else None  # noqa: SIM115
        self._trace = (TraceWriter(trace, source="coordinator", meta={"swarm": swarm_id, "coordinator": identity.peer_id})
                       if trace is not None else None)
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] = ("", 0)
        self._conns: dict[str, _Conn] = {}
        self.members: dict[str, _Member] = {}
        self.candidates: dict[str, tuple[str, int]] = {}
        self.fingerprint: str | None = None
        self.config: dict[str, str] = {}
        #: Per member: the smallest group its aggregator can run in; no attempt starts smaller.
        self.min_group: dict[str, int] = {}
        self.round = 0
        self.phase = "collect"
        self.started = False
        # Epochs and transfer ids start from the clock so a restarted coordinator does not reuse them.
        self.epoch = (int(time.time()) & 0x0FFFFFFF) + 1
        self._transfer = time.time_ns() // 1000
        self.attempt = 0
        self.group: tuple[str, ...] = ()
        self.reports: dict[str, str] = {}
        self.disagree: set[str] = set()
        self.agreed: dict[int, str] = {}
        #: Rounds committed without agreement (no parity): a joiner's state is not checked against them.
        self.free: set[int] = set()
        self.genesis: str | None = None
        self._since = 0
        self._barrier: asyncio.Future[dict[str, Any]] | None = None
        self._decisions: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._jobs: dict[str, list[dict[str, Any]]] = {}
        self._job_events: dict[str, asyncio.Event] = {}
        self._changed: asyncio.Condition | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.stats = {"commits": 0, "aborts": 0, "resyncs": 0, "lost": 0}
        #: One-shot: an empty swarm may restart from the next peer's state whatever it is.
        self.reset = reset
        #: Straggler barrier: once a quorum is ready, the others get
        #: max(grace, median + k * MAD of recent barrier spreads) seconds.
        self.straggler_grace = straggler_grace
        self.straggler_k = straggler_k
        self.spreads: collections.deque[float] = collections.deque(maxlen=32)
        self._first_ready: float | None = None
        self._straggler_timer: asyncio.TimerHandle | None = None
        #: After the first report (``done``) of an attempt, the rest have
        #: max(report_grace, median + k * MAD of recent report spreads) seconds;
        #: members still silent then are blamed and the attempt aborted.
        self.report_grace = report_grace
        self.report_spreads: collections.deque[float] = collections.deque(maxlen=32)
        self._first_report: float | None = None
        self._report_timer: asyncio.TimerHandle | None = None
        #: Local failures in a row per member (reason, count); evicted and refused at max_failures.
        self.max_failures = max(1, max_failures)
        self.failures: dict[str, tuple[str, int]] = {}
        self.banned: dict[str, str] = {}
        #: Audited swarms: judges audit reports, keeps reputation, excludes proven or persistent liars.
        self.trust = TrustDesk(self._exclude, verify=verify_statement)
        #: A resumed checkpoint older than the agreed state is adopted only after the swarm has had
        #: no member for this long (its holders may be reconnecting, e.g. after a coordinator restart).
        self.rollback_grace = rollback_grace
        self._empty_since = time.monotonic()
        #: Joiners fetching the state: deadline and source; serve jobs in flight per member.
        self.join_grace = join_grace
        self._fetching: dict[str, tuple[float, str]] = {}
        self._serving: dict[str, int] = {}
        self._join_timer: asyncio.TimerHandle | None = None
        #: Called with (kind, fields) for every event (module docstring); the status page is one.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        #: The latest progress fields each peer reported (``protocol.progress_fields``), with ``t`` (wall clock, s).
        self.peer_stats: dict[str, dict[str, Any]] = {}
        #: Per group member of the attempt running: the progress fields of its ``done``.
        self._done_stats: dict[str, dict[str, Any]] = {}
        #: Per peer: its cumulative ``sent`` at its previous commit (bytes per round are the differences).
        self._sent_at_commit: dict[str, int] = {}
        self.started_at = time.time()
        self._store = _Store(state_path) if state_path else None
        if self._store is not None:
            self._store.load(self)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, identity: Identity, swarm_id: str = "gossamer", host: str = "127.0.0.1", port: int = 0,
                    **kw: Any) -> "Coordinator":
        c = cls(identity, swarm_id, **kw)
        c._changed = asyncio.Condition()
        c._barrier = asyncio.get_running_loop().create_future()
        try:
            c._server = await asyncio.start_server(c._on_connect, host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                              "(is the address on this host, and the port free?)") from None
        sock = c._server.sockets[0].getsockname()
        c.address = (str(sock[0]), int(sock[1]))
        c._watchdog = asyncio.get_running_loop().create_task(c._watch(), name="coordinator-watchdog")
        log.info("coordinator %s listening on %s:%d (swarm %r)", identity.peer_id, *c.address, swarm_id)
        return c

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        handlers = [t for t in self._handlers if not t.done()]
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._trace is not None:
            trace, self._trace = self._trace, None
            try:
                trace.close()
            except (sqlite3.Error, OSError) as exc:
                log.error("closing the trace %s failed: %s", trace.path, exc)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _event(self, kind: str, **fields: Any) -> None:
        level = logging.WARNING if kind in ("abort", "lost", "resync", "reject", "evict", "straggler", "rollback") else logging.INFO
        log.log(level, "%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))
        if self._events is not None:
            self._events.write(json.dumps({"t": round(time.time(), 3), "event": kind, **fields}) + "\n")
        if self._trace is not None:
            try:
                self._trace_event(self._trace, kind, fields)
            except (sqlite3.Error, OSError) as exc:  # a full disk costs the trace, not the swarm
                log.error("trace %s: cannot record %s: %s", self._trace.path, kind, exc)
        for listener in list(self.listeners):
            try:
                listener(kind, fields)
            except Exception:  # a broken listener costs its own view, never the swarm
                log.exception("event listener %r failed on %s", listener, kind)

    @staticmethod
    def _trace_event(trace: TraceWriter, kind: str, fields: dict[str, Any]) -> None:
        """One coordinator event as trace events (the mapping: module docstring)."""
        rnd = fields.get("round")
        peer = fields.get("peer")
        if kind == "join":
            trace.record("join", round=rnd, peer=peer, addr=fields.get("addr"))
        elif kind in ("leave", "lost") or (kind in ("evict", "exclude") and "members" in fields):
            # ``_remove``'s event (it carries ``members``): the member is gone, for whatever cause
            trace.record("leave", round=rnd, peer=peer, reason=fields.get("reason"), how=kind)
        elif kind == "evict":
            trace.record("evict", round=rnd, peer=peer, reason=fields.get("reason"), failures=fields.get("failures"))
        elif kind == "exclude":
            trace.record("exclude", round=rnd, peer=peer, other=fields.get("accuser"), rule=fields.get("rule"),
                         evidence=fields.get("evidence"))
        elif kind == "straggler":
            waited = fields.get("waited")
            for late in fields.get("late") or ():
                trace.record("straggler", round=rnd, peer=late, value=waited, waited=waited,
                             deadline=fields.get("deadline"))
        elif kind == "abort":
            reason = str(fields.get("reason") or "")
            trace.record("abort", round=rnd, peer=blamed_by(reason), reason=reason,
                         attempt=fields.get("attempt"), epoch=fields.get("epoch"))
        elif kind == "commit":
            trace.record("round", round=rnd, hash=fields.get("hash"), members=fields.get("group"),
                         attempt=fields.get("attempt"), epoch=fields.get("epoch"),
                         dissenters=fields.get("dissenters"), **({"agreed": False} if "agreed" in fields else {}),
                         **{k: fields[k] for k in ("loss", "bytes") if k in fields})

    # ------------------------------------------------------------------ connections

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            session = await handshake(reader, writer, self.identity, self.swarm_id, initiator=False,
                                      io_timeout=self.io_timeout, allowed=self.allowed, where=where)
        except (ProtocolError, PeerError) as exc:
            log.warning("rejected connection from %s: %s", where, exc)
            writer.transport.abort()
            return
        except Exception:  # never let one connection take the coordinator down
            log.exception("unexpected error in handshake with %s", where)
            writer.transport.abort()
            return
        pid = session.peer_id
        conn = _Conn(pid, FramedStream(reader, writer, session, self.io_timeout), where, time.monotonic())
        old = self._conns.get(pid)
        if old is not None:
            self._close_conn(old)
            self._remove(pid, "replaced by a new connection with the same key", kind="lost")
        self._conns[pid] = conn
        log.info("peer %s connected from %s", pid, where)
        reason = "closed the connection"
        try:
            while True:
                frame = await conn.stream.recv()
                if frame is None:
                    break
                tag, body = frame
                conn.last_seen = time.monotonic()
                if tag.round != 0 or tag.phase != REQUEST_PHASE:
                    raise ProtocolError(f"unexpected frame {tag}")
                if conn.outstanding >= MAX_OUTSTANDING:
                    await self._respond(conn, tag.op, {"ok": False, "code": "busy",
                                                       "error": f"more than {MAX_OUTSTANDING} requests outstanding"})
                    continue
                conn.outstanding += 1
                task = asyncio.get_running_loop().create_task(self._handle(conn, tag.op, body))
                conn.tasks.add(task)
                task.add_done_callback(conn.tasks.discard)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("peer %s at %s: %s; disconnecting", pid, where, exc)
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc or type(exc).__name__}"
        except asyncio.CancelledError:
            reason = "coordinator closing"  # the handler is a top-level task: end quietly
        finally:
            if self._conns.get(pid) is conn:
                del self._conns[pid]
                self._close_conn(conn)
                self._remove(pid, reason, kind="lost")
            else:
                self._close_conn(conn)

    def _close_conn(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.stream.close()
        for task in list(conn.tasks):
            task.cancel()

    async def _respond(self, conn: _Conn, rid: int, resp: dict[str, Any]) -> None:
        if conn.closed:
            return
        try:
            await conn.stream.send(Tag(0, rid, RESPONSE_PHASE), encode_message(resp))
        except (ConnectionError, OSError, TimeoutError) as exc:
            log.info("cannot answer %s: %s", conn.peer_id, exc)
            self._close_conn(conn)

    async def _handle(self, conn: _Conn, rid: int, body: bytes) -> None:
        pid = conn.peer_id
        try:
            try:
                msg = decode_message(body, f"peer {pid}")
                op = field(msg, "op", str, f"peer {pid}")
                if op not in OPS:
                    raise ProtocolError(f"unknown op {op!r} from peer {pid}; accepted: {', '.join(OPS)}")
                resp = await getattr(self, f"_op_{op}")(pid, msg)
                resp = {"ok": True, **resp}
            except SwarmError as exc:
                resp = {"ok": False, "code": exc.code, "error": str(exc)}
            except ProtocolError as exc:
                log.warning("bad request from peer %s: %s", pid, exc)
                resp = {"ok": False, "code": "bad_request", "error": str(exc)}
            await self._respond(conn, rid, resp)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here costs one request, not the coordinator
            log.exception("error handling a request from %s", pid)
            await self._respond(conn, rid, {"ok": False, "code": "internal", "error": "internal coordinator error"})
        finally:
            conn.outstanding -= 1

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.heartbeat_timeout / 4))
            now = time.monotonic()
            for pid, conn in list(self._conns.items()):
                if now - conn.last_seen > self.heartbeat_timeout:
                    if self._conns.get(pid) is conn:
                        del self._conns[pid]
                    self._close_conn(conn)
                    self._remove(pid, f"no heartbeat for {now - conn.last_seen:.1f} s (stalled)", kind="lost")

    # ------------------------------------------------------------------ state machine

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def bump() -> None:
            async with cond:
                cond.notify_all()

        asyncio.get_running_loop().create_task(bump())

    def _remove(self, pid: str, reason: str, *, kind: str) -> None:
        was_member = self.members.pop(pid, None) is not None
        if was_member and not self.members:
            self._empty_since = time.monotonic()
        was_candidate = self.candidates.pop(pid, None) is not None
        self.min_group.pop(pid, None)
        self._job_events.pop(pid, None)
        self._done_fetching(pid)
        self._serving.pop(pid, None)
        self.failures.pop(pid, None)
        self._jobs.pop(pid, None)
        if not (was_member or was_candidate):
            return
        if kind == "lost":
            self.stats["lost"] += 1
        self._event(kind, peer=pid, reason=reason, round=self.round, members=len(self.members))
        if was_member:
            if self.phase == "run" and pid in self.group:
                self._abort(f"member {pid} left the group: {reason}")
            else:
                self._check_barrier()
        self._notify()

    def _addr_of(self, pid: str) -> list[Any]:
        m = self.members.get(pid)
        addr = m.addr if m is not None else self.candidates.get(pid, ("", 0))
        return [addr[0], addr[1]]

    def _seniority(self) -> list[str]:
        return sorted(self.members, key=lambda p: self.members[p].since)

    def _next_transfer(self) -> int:
        self._transfer += 1
        return self._transfer

    def _queue_job(self, source: str, job: dict[str, Any]) -> None:
        self._jobs.setdefault(source, []).append(job)
        ev = self._job_events.get(source)
        if ev is not None:
            ev.set()

    def straggler_deadline(self) -> float:
        """Seconds the barrier waits for the rest once a quorum is ready:
        ``max(grace, median(s) + k * MAD(s))`` over recent spreads ``s`` (time
        from a round's first ``ready`` to its last, in rounds where all came)."""
        if len(self.spreads) < 3:
            return self.straggler_grace
        med = statistics.median(self.spreads)
        mad = statistics.median(abs(x - med) for x in self.spreads)
        return max(self.straggler_grace, med + self.straggler_k * mad)

    def report_deadline(self) -> float:
        """Seconds the rest of a group has to report once one member reported
        its result: ``max(report_grace, median(s) + k * MAD(s))`` over recent
        spreads ``s`` (first report to last, in attempts where all reported)."""
        if len(self.report_spreads) < 3:
            return self.report_grace
        med = statistics.median(self.report_spreads)
        mad = statistics.median(abs(x - med) for x in self.report_spreads)
        return max(self.report_grace, med + self.straggler_k * mad)

    def _report_heard(self, epoch: int) -> None:
        """A member reported a result for ``epoch``: time the others."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._first_report is None:
            self._first_report = now
        if all(p in self.reports for p in self.group if p in self.members):
            self.report_spreads.append(now - self._first_report)
            self._cancel_report_timer()
        elif self._report_timer is None:
            self._report_timer = loop.call_at(self._first_report + self.report_deadline(),
                                              lambda: self._report_due(epoch))

    def _cancel_report_timer(self) -> None:
        if self._report_timer is not None:
            self._report_timer.cancel()
            self._report_timer = None

    def _report_due(self, epoch: int) -> None:
        """The report deadline passed: members that finished nothing in it are
        stragglers of the attempt. It is aborted, and each silent member is
        charged a local failure (``max_failures`` in a row evict it), so a
        member that heartbeats but never reports cannot hold the swarm for ever."""
        self._report_timer = None
        if self.phase != "run" or epoch != self.epoch:
            return
        silent = sorted(p for p in self.group if p in self.members and p not in self.reports)
        if not silent:
            return
        waited = asyncio.get_running_loop().time() - (self._first_report or 0.0)
        reason = f"no report from {', '.join(silent)} within {waited:.1f} s of the first"
        self._event("straggler", round=self.round, late=silent, waited=round(waited, 3),
                    deadline=round(self.report_deadline(), 3), phase="report")
        for pid in silent:
            self._local_failure(pid, "no report in time")
        self._abort(reason)

    def _check_barrier(self) -> None:
        if self.phase != "collect" or not self.members:
            return
        ready = sorted(p for p, m in self.members.items() if m.ready)
        if not ready:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        hold = self._joiners_pending(now) if self.started else None
        if hold is not None:
            # a joiner is fetching the committed state: start the next round once it is admitted
            # (or its join grace has passed), so that it gets in whatever the state size
            if self._join_timer is None:
                self._join_timer = loop.call_at(hold, self._join_due)
            return
        if self._first_ready is None:
            self._first_ready = now  # the straggler clock starts at the first ready after any hold
        if not self.started and len(self.members) < self.min_peers:
            return
        need = max((self.min_group.get(p, 1) for p in self.members), default=1)
        late: list[str] = []
        if len(ready) < len(self.members):
            quorum = max(len(self.members) // 2 + 1, need)
            if not self.started or len(ready) < quorum:
                return  # round 0 waits for everyone; later rounds for a quorum first
            deadline = self._first_ready + self.straggler_deadline()
            if now < deadline:
                if self._straggler_timer is None:
                    self._straggler_timer = loop.call_at(deadline, self._straggler_due)
                return
            late = sorted(set(self.members) - set(ready))
            self._event("straggler", round=self.round, late=late, waited=round(now - self._first_ready, 3),
                        deadline=round(self.straggler_deadline(), 3))
        elif len(ready) < need:
            log.info("round %d waits: %d member(s), the aggregator needs a group of %d", self.round, len(ready), need)
            return
        else:
            self.spreads.append(now - self._first_ready)
        self._first_ready = None
        if self._straggler_timer is not None:
            self._straggler_timer.cancel()
            self._straggler_timer = None
        self.started = True
        self.epoch += 1
        self.attempt += 1
        self.group = tuple(ready)
        self.phase = "run"
        self.reports = {}
        self.disagree = set()
        self._done_stats = {}
        self._first_report = None
        self._cancel_report_timer()
        self._decisions[self.epoch] = asyncio.get_running_loop().create_future()
        self.trust.open(self.epoch, self.round, self.group)
        for old in [e for e in self._decisions if e < self.epoch - 64]:
            del self._decisions[old]
        for m in self.members.values():
            m.ready = False
        start = {"round": self.round, "epoch": self.epoch, "attempt": self.attempt, "group": list(self.group),
                 "addrs": {p: self._addr_of(p) for p in self.group}}
        self._event("start", round=self.round, epoch=self.epoch, attempt=self.attempt, group=list(self.group))
        barrier = self._barrier
        self._barrier = asyncio.get_running_loop().create_future()
        if barrier is not None and not barrier.done():
            barrier.set_result(start)
        self._notify()

    def _local_failure(self, pid: str, reason: str) -> None:
        """Count a member's failures for a local reason (its own exception, not a
        lost peer or a deadline); ``max_failures`` in a row for the same reason
        evict it, and it may not join again: it ends with that reason instead of
        the swarm retrying forever."""
        key = reason.split(":", 1)[0][:120]
        last, count = self.failures.get(pid, ("", 0))
        count = count + 1 if key == last else 1
        self.failures[pid] = (key, count)
        if count >= self.max_failures:
            self.banned[pid] = f"evicted after {count} failed attempts in a row: {reason}"[:400]
            self._event("evict", peer=pid, reason=reason[:300], failures=count, round=self.round)
            # removed once this attempt is decided (its abort is under way)
            reason_text = self.banned[pid]
            asyncio.get_running_loop().call_soon(lambda: self._remove(pid, reason_text, kind="evict"))

    def _exclude(self, pid: str, reason: str, record: dict[str, Any]) -> None:
        """The trust desk convicted ``pid``: refuse its key from now on and remove it."""
        self.banned[pid] = reason
        self._persist()  # a restarted coordinator still refuses the key
        self._event("exclude", peer=pid, round=record["round"], rule=record["rule"], evidence=record["evidence"],
                    accuser=record.get("accuser"))
        asyncio.get_running_loop().call_soon(lambda: self._remove(pid, reason, kind="leave"))

    def _persist(self) -> None:
        if self._store is not None:
            self._store.save(self)

    def _done_fetching(self, pid: str) -> None:
        entry = self._fetching.pop(pid, None)
        if entry is not None and entry[1] in self._serving:
            self._serving[entry[1]] = max(0, self._serving[entry[1]] - 1)
        if entry is not None:
            self._first_ready = None  # the new member gets a full straggler deadline for its first round
            self._check_barrier()

    def _joiners_pending(self, now: float) -> float | None:
        """The earliest deadline of a joiner still fetching the state (the
        barrier holds the next round for it, so a slow transfer is not
        refused round after round), or None."""
        live = [d for p, (d, _) in self._fetching.items() if p in self.candidates and d > now]
        return min(live) if live else None

    def _straggler_due(self) -> None:
        self._straggler_timer = None
        self._check_barrier()

    def _join_due(self) -> None:
        self._join_timer = None
        self._check_barrier()

    def _decide(self, decision: dict[str, Any]) -> None:
        self._cancel_report_timer()
        fut = self._decisions.get(self.epoch)
        if fut is not None and not fut.done():
            fut.set_result(decision)
        self.phase = "collect"
        for m in self.members.values():
            m.ready = False
        self._notify()
        self._check_barrier()

    def _abort(self, reason: str) -> None:
        if self.phase != "run":
            return
        self.stats["aborts"] += 1
        self._event("abort", round=self.round, epoch=self.epoch, attempt=self.attempt, reason=reason)
        self._decide({"decision": "abort", "round": self.round, "epoch": self.epoch, "hash": None,
                      "agreed": True, "resync": {}, "reason": reason})

    def _check_commit(self) -> None:
        if self.phase != "run":
            return
        present = [p for p in self.group if p in self.members]
        if not present:
            self._abort("every member of the group is gone")
            return
        if not all(p in self.reports for p in present):
            return
        reports = {p: self.reports[p] for p in present}
        r = self.round
        differ = self.trust.views_differ(self.epoch)
        if differ:
            # members saw different signed statements of these signers: nothing is committed,
            # and each member sends its statements so that the equivocator can be proven
            self.stats["aborts"] += 1
            reason = f"members saw different signed statements from {', '.join(differ)}"
            self._event("abort", round=self.round, epoch=self.epoch, attempt=self.attempt, reason=reason)
            self._decide({"decision": "abort", "round": self.round, "epoch": self.epoch, "hash": None,
                          "agreed": True, "resync": {}, "reason": reason, "evidence": list(differ)})
            return
        if self.disagree & set(present):
            # no bit parity expected this round: commit every member's own state
            digest = combined_hash(reports[p] for p in present)
            self._commit(r, digest, free=True, resync={}, dissenters=[], hashes=[reports[p] for p in present])
            return
        verdict = majority(reports, self._seniority())
        assert verdict.agreed is not None
        resync: dict[str, dict[str, Any]] = {}
        if verdict.tie and len(reports) > 1:
            log.error("round %d: no strict majority among state hashes %s; keeping the most senior member's", r, reports)
        for i, pid in enumerate(verdict.dissenters):
            source = verdict.agreeing[i % len(verdict.agreeing)]
            transfer = self._next_transfer()
            resync[pid] = {"source": source, "addr": self._addr_of(source), "transfer": transfer}
            self._queue_job(source, {"to": pid, "addr": self._addr_of(pid), "transfer": transfer, "round": r})
            self.stats["resyncs"] += 1
            self._event("resync", round=r, peer=pid, source=source, hash=reports[pid], agreed=verdict.agreed)
        epoch = self.epoch
        self._commit(r, verdict.agreed, free=False, resync=resync, dissenters=list(verdict.dissenters))
        self.trust.conclude(epoch)

    def _commit(self, r: int, digest: str, *, free: bool, resync: dict[str, dict[str, Any]], dissenters: list[str],
                hashes: list[str] | None = None) -> None:
        """Round ``r`` commits with the agreed ``digest`` (``free``: without parity,
        the combined hash of the members' own states): durable before anyone hears of it."""
        self.agreed[r] = digest
        self.agreed.pop(r - KEEP_ROUNDS, None)
        (self.free.add if free else self.free.discard)(r)
        self.free.discard(r - KEEP_ROUNDS)
        self.stats["commits"] += 1
        for p in self.group:
            self.failures.pop(p, None)
        self.round += 1
        self._persist()
        extra: dict[str, Any] = {"agreed": False, "hashes": hashes} if free else {}
        extra.update(self._round_progress())
        self._event("commit", round=r, epoch=self.epoch, attempt=self.attempt, group=list(self.group),
                    hash=digest, dissenters=dissenters, **extra)
        self.attempt = 0
        self._decide({"decision": "commit", "round": r, "epoch": self.epoch, "hash": digest, "agreed": not free,
                      "resync": resync, "reason": ""})

    def _round_progress(self) -> dict[str, Any]:
        """``loss`` (mean of the losses the group reported with ``done``) and ``bytes``
        (payload bytes the group sent since each member's previous commit) of the
        round committing now; each only when some member reported it."""
        out: dict[str, Any] = {}
        losses = [s["loss"] for p, s in self._done_stats.items() if p in self.group and "loss" in s]
        if losses:
            out["loss"] = round(statistics.fmean(losses), 6)
        sent = 0
        counted = False
        for p in self.group:
            now = self._done_stats.get(p, {}).get("sent")
            if now is None:
                continue
            before = self._sent_at_commit.get(p, 0)
            sent += now - before if now >= before else now  # a smaller counter: a new process
            self._sent_at_commit[p] = now
            counted = True
        if counted:
            out["bytes"] = sent
        return out

    def _progress(self, pid: str, stats: dict[str, Any]) -> None:
        """Remember ``pid``'s latest progress fields (bounded: see ``KEEP_PEER_STATS``)."""
        if not stats:
            return
        entry = self.peer_stats.setdefault(pid, {})
        entry.update(stats)
        entry["t"] = time.time()
        if len(self.peer_stats) > KEEP_PEER_STATS:
            present = set(self.members) | set(self.candidates)
            for old in sorted((p for p in self.peer_stats if p not in present),
                              key=lambda p: self.peer_stats[p]["t"])[: len(self.peer_stats) - KEEP_PEER_STATS]:
                del self.peer_stats[old]
                self._sent_at_commit.pop(old, None)

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the live state: swarm, round, phase, counters,
        members and candidates (address, state, seconds since their last frame,
        reputation, latest progress fields) and excluded keys with the reason."""
        now = time.monotonic()
        rep_ = self.trust.reputation
        in_round = set(self.group) if self.phase == "run" else set()
        rows: list[dict[str, Any]] = []
        for pid in [*self._seniority(), *sorted(self.candidates)]:
            m = self.members.get(pid)
            addr = m.addr if m is not None else self.candidates[pid]
            conn = self._conns.get(pid)
            state = ("candidate" if m is None else "in round" if pid in in_round
                     else "ready" if m.ready else "member")
            stats = {k: v for k, v in self.peer_stats.get(pid, {}).items() if k != "t"}
            rows.append({"id": pid, "address": f"{addr[0]}:{addr[1]}", "state": state,
                         "last_seen_s": round(now - conn.last_seen, 3) if conn is not None else None,
                         "audited_rounds": rep_.age(pid), "probation": rep_.on_probation(pid), **stats})
        return {"swarm": self.swarm_id, "coordinator": self.identity.peer_id,
                "address": f"{self.address[0]}:{self.address[1]}", "round": self.round, "phase": self.phase,
                "attempt": self.attempt, "group": list(self.group) if self.phase == "run" else [],
                "min_peers": self.min_peers, "started": self.started, "uptime_s": round(time.time() - self.started_at, 3),
                "stats": dict(self.stats), "members": rows,
                "excluded": [{"id": p, "reason": r} for p, r in sorted(self.banned.items())]}

    def _personal(self, pid: str, decision: dict[str, Any]) -> dict[str, Any]:
        out = dict(decision)
        out["resync"] = decision["resync"].get(pid)
        return out

    # ------------------------------------------------------------------ requests

    def _member(self, pid: str) -> _Member:
        m = self.members.get(pid)
        if m is None:
            if pid in self.banned:
                raise SwarmError("banned", self.banned[pid])
            raise SwarmError("evicted", f"peer {pid} is not a member of the swarm (join and admit first)")
        return m

    async def _op_join(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        where = f"peer {pid}"
        addr = address(msg.get("addr"), where)
        fingerprint = field(msg, "fingerprint", str, where)
        have_round = field(msg, "have_round", int, where, optional=True)
        have_hash = field(msg, "have_hash", str, where, optional=True) or ""
        have_round = -1 if have_round is None or not have_hash else have_round
        resumed = bool(field(msg, "resume", bool, where, optional=True))
        cand_round = field(msg, "cand_round", int, where, optional=True)
        cand_hash = field(msg, "cand_hash", str, where, optional=True) or ""
        use_candidate = False
        if (cand_round is not None and cand_round == self.round - 1 and cand_round > have_round
                and cand_hash and self.agreed.get(cand_round) == cand_hash and cand_round not in self.free):
            # it holds the result of the last round, which committed while it could not hear the
            # decision (e.g. the coordinator died right after deciding): that result is its state
            have_round, have_hash, use_candidate = cand_round, cand_hash, True
        min_group = field(msg, "min_group", int, where, optional=True) or 1
        config = msg.get("config") if isinstance(msg.get("config"), dict) else {}
        config = {str(k)[:100]: str(v)[:200] for k, v in list(config.items())[:256]}
        if pid in self.banned:
            self._event("reject", peer=pid, reason=f"banned: {self.banned[pid]}"[:300])
            raise SwarmError("banned", self.banned[pid])
        rep_ = self.trust.reputation
        if rep_.on_probation(pid):
            # new identities have bounded influence: beside established members, at most
            # max(1, floor(share * established)) may be on probation at once (Sybils queue here)
            pool = [*self._seniority(), *[c for c in self.candidates if c != pid], pid]
            if pid not in rep_.contributors(pool):
                raise SwarmError("probation", f"the swarm admits a limited number of new peers at a time (on probation "
                                              f"for {rep_.probation_rounds} audited rounds); peer {pid} waits for a place")
        if not self.members and not [c for c in self.candidates if c != pid]:
            # the configuration belongs to the members present: an empty swarm takes the next one's
            self.fingerprint = None
            if self.round == 0:
                self.genesis = None  # nothing was committed: the initial state is the next members' too
        if self.fingerprint is None:
            self.fingerprint = fingerprint
            self.config = config
        elif fingerprint != self.fingerprint:
            differs = sorted(k for k in set(config) | set(self.config) if config.get(k) != self.config.get(k))
            detail = "; ".join(f"{k}: {config.get(k, '-')} (swarm: {self.config.get(k, '-')})" for k in differs[:6])
            self._event("reject", peer=pid, reason=f"configuration differs: {', '.join(differs) or 'fingerprint'}")
            raise SwarmError("rejected", f"peer {pid} runs a different configuration than the swarm: "
                                         f"{detail or 'fingerprint ' + fingerprint[:16] + ' vs ' + self.fingerprint[:16]}. "
                                         "Task, algorithm, options, codec, aggregator, seed and model must match")
        self.min_group[pid] = max(1, min_group)
        self.peer_stats.pop(pid, None)  # a new process (or a rejoin) reports afresh: no stale validation
        if pid in self.members:
            self._remove(pid, "rejoined", kind="leave")
        self.candidates[pid] = addr
        self._event("join", peer=pid, addr=f"{addr[0]}:{addr[1]}", round=self.round, have_round=have_round)
        sources = [p for p in self._seniority() if p in self.members]
        if not sources and have_round >= 0 and have_round + 1 > self.round and self.phase != "run":
            # A swarm with no member (e.g. this coordinator restarted without durable state, or
            # every peer died and one resumes from its checkpoint) adopts the newest committed state
            # a peer brings: committed work is never replaced by older or initial state.
            self._event("adopt", peer=pid, round=have_round, hash=have_hash, was=self.round - 1)
            self.round = have_round + 1
            self.agreed[have_round] = have_hash
            self.free.discard(have_round)
            self.started = False  # a resumed swarm waits for --min-peers again, as at round 0
            self.attempt = 0
            if self._store is not None:
                self._store.save(self)
        committed = self.round - 1
        empty_for = time.monotonic() - self._empty_since if not self.members else 0.0
        if not sources and resumed and 0 <= have_round < committed and self.phase != "run" and empty_for < self.rollback_grace:
            self.candidates.pop(pid, None)
            raise SwarmError("stale", f"the swarm has no member; its last agreed state is round {committed}: waiting "
                                      f"{self.rollback_grace - empty_for:.0f} s more for a member that holds it before "
                                      f"going back to this peer's checkpoint of round {have_round}")
        if not sources and resumed and 0 <= have_round < committed and self.phase != "run":
            # Nobody holds the agreed state and an operator resumes from a checkpoint: the swarm goes
            # back to that checkpoint (its later rounds are redone), by the operator's explicit choice.
            self._event("rollback", peer=pid, round=have_round, hash=have_hash, was=committed,
                        redone=list(range(have_round + 1, committed + 1)))
            for r in [r for r in self.agreed if r > have_round]:
                del self.agreed[r]
            self.free = {r for r in self.free if r <= have_round}
            self.agreed[have_round] = have_hash
            self.round = have_round + 1
            self.started = False
            self.attempt = 0
            self._persist()
            committed = self.round - 1
        if not sources:
            if self.round == 0:
                return {"mode": "init", "round": 0, "hash": self.genesis}
            if (have_round == committed and (have_hash == self.agreed.get(committed) or committed in self.free)) or self.reset:
                return {"mode": "init", "round": self.round, "hash": self.agreed.get(committed), "candidate": use_candidate}
            self.candidates.pop(pid, None)
            held = f"round {have_round} ({have_hash[:16]})" if have_round >= 0 else "no committed state"
            raise SwarmError("stale", f"the swarm has no member; its last agreed state is round {committed} "
                                      f"({(self.agreed.get(committed) or '?')[:16]}) and peer {pid} holds {held}: "
                                      "waiting for a member that holds it (resume from a checkpoint with --resume, or "
                                      "restart the coordinator with --reset to start over from this peer's state)")
        if have_round == committed and committed in self.agreed and have_hash == self.agreed[committed]:
            # it already holds the agreed state
            return {"mode": "init", "round": self.round, "hash": have_hash, "candidate": use_candidate}
        if committed not in self.agreed:
            return {"mode": "init", "round": self.round, "hash": None}
        # simultaneous joiners are served by different members (the least busy, then the most senior)
        source = min(sources, key=lambda p: (self._serving.get(p, 0), sources.index(p)))
        self._serving[source] = self._serving.get(source, 0) + 1
        self._fetching[pid] = (asyncio.get_running_loop().time() + self.join_grace, source)
        transfer = self._next_transfer()
        self._queue_job(source, {"to": pid, "addr": [addr[0], addr[1]], "transfer": transfer, "round": committed})
        return {"mode": "fetch", "round": committed, "hash": "" if committed in self.free else self.agreed[committed], "source": source,
                "source_addr": self._addr_of(source), "transfer": transfer}

    async def _op_admit(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        where = f"peer {pid}"
        want = field(msg, "round", int, where)
        digest = field(msg, "hash", str, where)
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(lambda: self.phase != "run" or pid not in self.candidates)
        if pid not in self.candidates:
            raise SwarmError("evicted", f"peer {pid} is not a candidate (join first)")
        if want != self.round:
            raise SwarmError("stale", f"peer {pid} holds the state before round {want}, the swarm is at round {self.round}")
        expected = self.genesis if want == 0 else self.agreed.get(want - 1)
        if not self.members:
            if want == 0 and self.genesis is None:
                self.genesis = digest
            elif expected is not None and digest != expected and (want - 1) not in self.free:
                if not self.reset:
                    self._event("reject", peer=pid, reason=f"empty swarm: state {digest[:16]} != agreed {expected[:16]}",
                                round=want)
                    raise SwarmError("rejected", f"the swarm's agreed state before round {want} is {expected}; peer "
                                                 f"{pid} offers {digest}. Committed work is never replaced: resume from "
                                                 "a checkpoint that holds it, or restart the coordinator with --reset")
                log.warning("--reset: restarting round %d from peer %s's state %s (agreed was %s)",
                            want, pid, digest[:16], expected[:16])
                self._event("reset", peer=pid, round=want, hash=digest, was=expected)
            if want == 0:
                self.genesis = digest
            else:
                self.agreed[want - 1] = digest
            self.reset = False
        elif expected is None:
            raise SwarmError("stale", f"no agreed state for round {want - 1}; join again")
        elif want - 1 in self.free:
            pass  # no parity in that round: any member's state is a valid state
        elif digest != expected:
            self._event("reject", peer=pid, reason=f"state hash {digest[:16]} != agreed {expected[:16]}", round=want)
            raise SwarmError("rejected", f"state hash {digest} of peer {pid} differs from the agreed hash {expected} "
                                         f"before round {want}")
        addr = self.candidates.pop(pid)
        self._since += 1
        self.members[pid] = _Member(pid, addr, self._since)
        self._done_fetching(pid)  # after it is a member: the held round now waits for it too
        self._event("admit", peer=pid, round=want, members=len(self.members))
        self._notify()
        return {"admitted": want}

    async def _op_ready(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        want = field(msg, "round", int, f"peer {pid}")
        m = self._member(pid)
        if self.phase == "run":
            raise SwarmError("busy", f"round {self.round} is running without peer {pid}")
        if want != self.round:
            raise SwarmError("stale", f"peer {pid} is ready for round {want}, the swarm is at round {self.round}")
        barrier = self._barrier
        assert barrier is not None
        m.ready = True
        self._check_barrier()
        return dict(await asyncio.shield(barrier))

    async def _op_done(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        where = f"peer {pid}"
        epoch = field(msg, "epoch", int, where)
        ok = field(msg, "ok", bool, where)
        digest = field(msg, "hash", str, where, optional=True)
        reason = field(msg, "reason", str, where, optional=True) or ""
        agree = field(msg, "agree", bool, where, optional=True)
        try:
            stats = progress_fields(msg, where)
        except ProtocolError as exc:  # informational only: a bad one must not cost the round its report
            log.warning("ignoring the progress fields of a done: %s", exc)
            stats = {}
        audit = msg.get("audit")
        fut = self._decisions.get(epoch)
        if fut is None:
            raise SwarmError("stale", f"unknown epoch {epoch}")
        if pid in self.members:
            self._progress(pid, stats)
        if isinstance(audit, dict):
            self.trust.hear(epoch, pid, audit, digest if ok else None)
        if not fut.done():
            self._member(pid)
            if pid not in self.group:
                raise SwarmError("evicted", f"peer {pid} is not in the group of epoch {epoch}")
            if not ok:
                local = field(msg, "local", bool, where, optional=True)
                if local:
                    self._local_failure(pid, reason)
                self._abort(f"peer {pid} failed: {reason}"[:500])
            elif digest is None:
                raise ProtocolError(f"done with ok from {where} lacks the state hash")
            else:
                self.reports[pid] = digest
                self._done_stats[pid] = stats
                if agree is False:
                    self.disagree.add(pid)
                self._report_heard(epoch)
                self._check_commit()
        return self._personal(pid, await asyncio.shield(fut))

    async def _op_outcome(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        epoch = field(msg, "epoch", int, f"peer {pid}")
        fut = self._decisions.get(epoch)
        if fut is None:
            raise SwarmError("stale", f"unknown epoch {epoch}")
        return self._personal(pid, await asyncio.shield(fut))

    async def _op_serve(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        ev = self._job_events.setdefault(pid, asyncio.Event())
        if not self._jobs.get(pid):
            ev.clear()
            try:
                await asyncio.wait_for(ev.wait(), SERVE_POLL)
            except TimeoutError:
                pass
        jobs = self._jobs.pop(pid, [])
        return {"jobs": jobs}

    async def _op_audit(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        """A member's audit report for an attempt that ended without its ``done`` (aborted, or
        the evidence the coordinator asked for): judged like the others, never a decision."""
        epoch = field(msg, "epoch", int, f"peer {pid}")
        audit = msg.get("audit")
        if not isinstance(audit, dict):
            raise ProtocolError(f"audit from peer {pid} lacks its report map")
        self._member(pid)
        self.trust.hear(epoch, pid, audit)
        return {}

    async def _op_hb(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        stats = progress_fields(msg, f"peer {pid}")
        if pid in self.members or pid in self.candidates:
            self._progress(pid, stats)
        # ids: the members and candidates, whom a member's transport trusts with full buffers
        return {"round": self.round, "phase": self.phase, "members": len(self.members),
                "ids": sorted(set(self.members) | set(self.candidates))}

    async def _op_leave(self, pid: str, msg: dict[str, Any]) -> dict[str, Any]:
        stats = progress_fields(msg, f"peer {pid}")
        if pid in self.members or pid in self.candidates:
            self._progress(pid, stats)  # e.g. the validation of the model it leaves with
        self._remove(pid, "left", kind="leave")
        return {}

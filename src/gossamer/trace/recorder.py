"""The one event recorder of gossamer: an SQLite trace per writer, and a reader.

Contract
--------
``TraceWriter(path, source=..., meta=...)`` owns one SQLite file (WAL journal,
``synchronous=NORMAL``). Each process writes its own file: every peer, the
coordinator, the simulator (which writes the events of all its simulated peers
into one file, ``source="sim"``, ``peer`` = the simulated peer). ``record``
appends one event to a buffer; the buffer goes to disk in one transaction every
``flush_every`` events, when ``flush_interval`` seconds have passed since the
last write (checked on ``record``; there is no background thread), and on
``flush()`` / ``close()``. ``close()`` is idempotent, and leaves one
self-contained file (journal mode back to DELETE when no reader holds it open);
the writer is a context manager. A writer is safe to share between threads of one process.

``TraceReader(paths)`` opens one or more trace files read-only and returns their
events merged over all files, ordered by ``(t, id)``. A missing file, a file
that is not SQLite, or an SQLite file that is not a trace of a schema version
this code understands raises ``ConfigError`` naming the file and the fault.

Schema (``SCHEMA_VERSION`` = 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)
        schema_version, source, created (time.time() at creation), and the
        writer's ``meta`` (strings as they are, other values as JSON)
    events(id INTEGER PRIMARY KEY, t REAL, source TEXT, round INTEGER NULL,
           kind TEXT NOT NULL, peer TEXT NULL, other TEXT NULL,
           value REAL NULL, detail TEXT NULL)   -- detail: a JSON object
    indexes on events(kind), events(round), events(peer)

``t`` is in seconds: wall clock (``time.time()``) in real processes, virtual
seconds in the simulator. The caller passes ``t`` or the writer reads its
``clock`` (default ``time.time``). For an event with a duration (``compute``,
``barrier_wait``, ``phase``) ``t`` is when it *ended* and ``value`` its length,
so the span is ``[t - value, t]``.

Kinds (``KINDS``); ``peer`` is the party the event is about, ``other`` the
second party::

    kind          peer                    other            value              detail
    compute       the computing peer      -                local compute s    {steps?}
    barrier_wait  the waiting peer        peer waited for  seconds waited     {}
                                          (if known)
    bytes         sender                  receiver         payload bytes on   {phase?}
                                                           that link, round
    phase         peer running it (opt.)  -                seconds            {name, phase}
    round         -                       -                -                  {hash, members}
    abort         blamed peer or NULL     -                -                  {reason}
    score         scored contributor      reporter         the score (opt.)   {score fields}
    exclude       excluded peer           accuser (opt.)   -                  {evidence, rule}
    join          joining peer            -                -                  {}
    leave         leaving peer            -                -                  {reason?}
    evict         evicted peer            -                -                  {reason}
    straggler     the slow peer           -                seconds late       {}
    loss          the peer                -                local loss         {}
    eval          the evaluating peer     -                validation metric  {metric, loss}
                  (opt.)
    attack        the attacker            -                -                  {attack}

An unknown kind raises ``ValueError`` naming it and listing the known ones. A
detail value that JSON cannot encode is written as ``str(value)``.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

KINDS: frozenset[str] = frozenset({
    "compute", "barrier_wait", "bytes", "phase", "round", "abort", "score", "exclude",
    "join", "leave", "evict", "straggler", "loss", "eval", "attack",
})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    t REAL,
    source TEXT,
    round INTEGER NULL,
    kind TEXT NOT NULL,
    peer TEXT NULL,
    other TEXT NULL,
    value REAL NULL,
    detail TEXT NULL
);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
CREATE INDEX IF NOT EXISTS events_round ON events(round);
CREATE INDEX IF NOT EXISTS events_peer ON events(peer);
"""

_INSERT = "INSERT INTO events (t, source, round, kind, peer, other, value, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

PathArg = str | PathLike[str]


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` naming ``kind`` and the known kinds when it is not one of ``KINDS``."""
    if kind not in KINDS:
        raise ValueError(f"unknown trace event kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")


def _meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


class TraceWriter:
    """Append events to one SQLite trace file (see the module docstring)."""

    def __init__(
        self,
        path: PathArg,
        *,
        source: str,
        meta: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        flush_every: int = 256,
        flush_interval: float = 1.0,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 s, got {flush_interval}")
        self.path = Path(path)
        self.source = str(source)
        self.flush_every = int(flush_every)
        self.flush_interval = float(flush_interval)
        self._clock = clock
        self._buffer: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._last_flush = time.monotonic()
        try:
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open trace {self.path} for writing: {exc}") from None
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and row[0] != str(SCHEMA_VERSION):
                raise ConfigError(f"trace {self.path} has schema_version {row[0]!r}; this writer writes {SCHEMA_VERSION}: use a new file")
            entries = {"schema_version": str(SCHEMA_VERSION), "source": self.source, "created": repr(time.time())}
            if row is not None:  # appending to an existing trace keeps its creation time
                entries.pop("created")
            entries.update({str(k): _meta_text(v) for k, v in (meta or {}).items()})
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", entries.items())
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ConfigError(f"cannot write trace {self.path}: {exc} (is it an SQLite trace?)") from None
        except BaseException:
            self._conn.close()
            raise

    def record(
        self,
        kind: str,
        *,
        round: int | None = None,  # noqa: A002 - the schema's column name
        peer: str | None = None,
        other: str | None = None,
        value: float | None = None,
        t: float | None = None,
        **detail: Any,
    ) -> None:
        """Buffer one event; write the buffer when it holds ``flush_every`` events
        or ``flush_interval`` seconds have passed since the last write."""
        check_kind(kind)
        row = (
            float(self._clock() if t is None else t),
            self.source,
            None if round is None else int(round),
            kind,
            None if peer is None else str(peer),
            None if other is None else str(other),
            None if value is None else float(value),
            json.dumps(detail, default=str, allow_nan=True) if detail else None,
        )
        with self._lock:
            if self._closed:
                raise ValueError(f"trace {self.path} is closed; cannot record {kind!r}")
            self._buffer.append(row)
            due = len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval
            if due:
                self._flush_locked()

    def flush(self) -> None:
        """Write every buffered event now, in one transaction."""
        with self._lock:
            if not self._closed:
                self._flush_locked()

    def _flush_locked(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(_INSERT, rows)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        """Flush and close the file; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            try:
                self._flush_locked()
                try:  # leave one self-contained file that a read-only folder can still be read from
                    self._conn.execute("PRAGMA journal_mode=DELETE")
                except sqlite3.Error as exc:  # a reader holds it open: the WAL stays, which is fine
                    log.debug("trace %s stays in WAL mode: %s", self.path, exc)
            finally:
                self._closed = True
                self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Event:
    """One recorded event, as read back (``detail`` is the decoded JSON object, ``{}`` when none)."""

    t: float
    source: str
    round: int | None
    kind: str
    peer: str | None
    other: str | None
    value: float | None
    detail: dict[str, Any] = field(default_factory=dict, compare=False)


class TraceReader:
    """Read one or more trace files (read-only); events merged over all files by ``(t, id)``."""

    def __init__(self, paths: Sequence[PathArg] | PathArg) -> None:
        if isinstance(paths, (str, PathLike)):
            paths = [paths]
        self.paths: tuple[Path, ...] = tuple(Path(p) for p in paths)
        if not self.paths:
            raise ConfigError("no trace files given")
        self._conns: list[sqlite3.Connection] = []
        self._meta: dict[str, dict[str, str]] = {}
        try:
            for path in self.paths:
                conn = self._open(path)
                self._conns.append(conn)
                self._meta[str(path)] = self._check(path, conn)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        if not path.exists():
            raise ConfigError(f"trace {path}: no such file")
        if path.is_dir():
            raise ConfigError(f"trace {path}: is a folder, not a trace file")
        try:
            return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"trace {path}: cannot open read-only: {exc}") from None

    @staticmethod
    def _check(path: Path, conn: sqlite3.Connection) -> dict[str, str]:
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"trace {path}: not an SQLite trace file ({exc})") from None
        if "meta" not in tables:
            raise ConfigError(f"trace {path}: an SQLite file but not a gossamer trace (no meta table)")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version is None:
            raise ConfigError(f"trace {path}: no schema_version in its meta table")
        try:
            number = int(version)
        except ValueError:
            raise ConfigError(f"trace {path}: schema_version {version!r} is not a number") from None
        if number not in SUPPORTED_SCHEMA_VERSIONS:
            raise ConfigError(f"trace {path}: schema_version {number} not understood; this reader reads {sorted(SUPPORTED_SCHEMA_VERSIONS)}")
        if "events" not in tables:
            raise ConfigError(f"trace {path}: no events table")
        return meta

    def meta(self) -> dict[str, dict[str, str]]:
        """The meta table of each file, keyed by the file's path as given."""
        return {k: dict(v) for k, v in self._meta.items()}

    def events(self, kind: str | Collection[str] | None = None, peer: str | None = None) -> list[Event]:
        """Events of every file, ordered by ``(t, id)`` (ties: file order), optionally
        only of ``kind`` (one kind or a collection of kinds) and about ``peer``."""
        kinds = [kind] if isinstance(kind, str) else (sorted(kind) if kind is not None else None)
        for k in kinds or ():
            check_kind(k)
        where, args = [], []
        if kinds is not None:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if peer is not None:
            where.append("peer = ?")
            args.append(str(peer))
        sql = "SELECT id, t, source, round, kind, peer, other, value, detail FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        keyed: list[tuple[tuple[float, int, int], Event]] = []
        for index, (path, conn) in enumerate(zip(self.paths, self._conns)):
            try:
                rows = conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise ConfigError(f"trace {path}: cannot read events: {exc}") from None
            for id_, t, source, rnd, k, p, o, value, detail in rows:
                t = float(t) if t is not None else math.nan
                keyed.append(((t, id_, index), Event(t, source, rnd, k, p, o, value, _decode(path, id_, detail))))
        keyed.sort(key=lambda kv: kv[0])
        return [e for _, e in keyed]

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns = []

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(path: Path, id_: int, detail: str | None) -> dict[str, Any]:
    if detail is None or detail == "":
        return {}
    try:
        obj = json.loads(detail)
    except ValueError:
        raise ConfigError(f"trace {path}: event {id_} has a detail that is not JSON: {detail[:60]!r}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"trace {path}: event {id_} has a detail that is not a JSON object: {detail[:60]!r}")
    return obj

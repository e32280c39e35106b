"""The event recorder: every kind round-trips, bad kinds and bad files are refused,
batching really writes, and several files merge in time order."""

from __future__ import annotations

import sqlite3

import pytest

from gossamer.errors import ConfigError
from gossamer.trace import KINDS, Event, TraceReader, TraceWriter

SAMPLES = {
    "compute": dict(peer="p0", value=1.25),
    "barrier_wait": dict(peer="p1", other="p0", value=0.5),
    "bytes": dict(peer="p0", other="p1", value=4096.0),
    "phase": dict(peer="p0", value=0.1, name="allreduce", phase="reduce_scatter"),
    "round": dict(hash="ab12", members=["p0", "p1"]),
    "abort": dict(peer="p2", reason="timeout"),
    "score": dict(peer="p3", other="p0", value=0.9, cosine=0.1, norm=3.0),
    "exclude": dict(peer="p3", evidence={"hash": "bad"}, rule="hash-mismatch"),
    "join": dict(peer="p4"),
    "leave": dict(peer="p4", reason="done"),
    "evict": dict(peer="p2", reason="3 aborts"),
    "straggler": dict(peer="p1", value=2.0),
    "loss": dict(peer="p0", value=2.5),
    "eval": dict(value=0.8, metric="accuracy", loss=0.4),
    "attack": dict(peer="p3", attack="signflip"),
}


def test_every_kind_round_trips(tmp_path):
    assert set(SAMPLES) == KINDS
    path = tmp_path / "t.db"
    with TraceWriter(path, source="sim", meta={"seed": 7, "task": "digits"}) as w:
        for i, kind in enumerate(sorted(KINDS)):
            w.record(kind, round=i, t=100.0 + i, **SAMPLES[kind])
    reader = TraceReader([path])
    events = reader.events()
    assert [e.kind for e in events] == sorted(KINDS)
    for i, e in enumerate(events):
        sample = dict(SAMPLES[e.kind])
        assert e.t == 100.0 + i and e.round == i and e.source == "sim"
        assert e.peer == sample.pop("peer", None)
        assert e.other == sample.pop("other", None)
        assert e.value == sample.pop("value", None)
        assert e.detail == sample
    meta = reader.meta()[str(path)]
    assert meta["schema_version"] == "1" and meta["source"] == "sim" and meta["task"] == "digits" and meta["seed"] == "7"
    assert [e.peer for e in reader.events(kind="abort")] == ["p2"]
    assert {e.kind for e in reader.events(peer="p3")} == {"score", "exclude", "attack"}
    assert [e.kind for e in reader.events(kind=["join", "leave"], peer="p4")] == ["join", "leave"]


def test_plain_sqlite_sees_the_schema(tmp_path):
    path = tmp_path / "t.db"
    with TraceWriter(path, source="coordinator") as w:
        w.record("abort", round=3, peer="p1", reason="deadline", t=5.0)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT kind, round, peer, json_extract(detail, '$.reason') FROM events").fetchall() == [("abort", 3, "p1", "deadline")]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"events_kind", "events_round", "events_peer"} <= indexes
    conn.close()


def test_unknown_kind_is_refused_naming_it(tmp_path):
    with TraceWriter(tmp_path / "t.db", source="p0") as w:
        with pytest.raises(ValueError, match=r"'computee'.*compute.*straggler"):
            w.record("computee", value=1.0)
    reader = TraceReader([tmp_path / "t.db"])
    assert reader.events() == []
    with pytest.raises(ValueError, match="'nope'"):
        reader.events(kind="nope")


def test_detail_that_json_cannot_encode_is_written_as_text(tmp_path):
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    with TraceWriter(tmp_path / "t.db", source="p0") as w:
        w.record("abort", peer="p1", reason=Thing(), t=1.0)
    (event,) = TraceReader([tmp_path / "t.db"]).events()
    assert event.detail == {"reason": "a thing"}


def test_missing_file_non_sqlite_and_foreign_sqlite_give_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        TraceReader([tmp_path / "absent.db"])
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(ConfigError, match=r"junk\.db.*not an SQLite"):
        TraceReader([junk])
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE x (a)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"foreign\.db.*no meta table"):
        TraceReader([foreign])
    future = tmp_path / "future.db"
    TraceWriter(future, source="p0").close()
    conn = sqlite3.connect(future)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"future\.db.*schema_version 99"):
        TraceReader([future])


def test_writer_refuses_a_non_sqlite_file_and_a_missing_folder(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 300)
    with pytest.raises(ConfigError, match=r"junk\.db"):
        TraceWriter(junk, source="p0")
    with pytest.raises(ConfigError, match="absent"):
        TraceWriter(tmp_path / "absent" / "t.db", source="p0")


def _count(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()


def test_batches_flush_every_n_events_and_on_close(tmp_path):
    path = tmp_path / "t.db"
    w = TraceWriter(path, source="p0", flush_every=4, flush_interval=3600)
    for i in range(3):
        w.record("loss", peer="p0", value=float(i))
    assert _count(path) == 0  # still buffered
    w.record("loss", peer="p0", value=3.0)
    assert _count(path) == 4  # the 4th event wrote the batch
    w.record("loss", peer="p0", value=4.0)
    w.record("loss", peer="p0", value=5.0)
    assert _count(path) == 4
    w.flush()
    assert _count(path) == 6
    w.record("loss", peer="p0", value=6.0)
    w.close()
    w.close()  # idempotent
    assert _count(path) == 7
    with pytest.raises(ValueError, match="closed"):
        w.record("loss", peer="p0", value=7.0)


def test_flush_interval_writes_on_the_next_record(tmp_path):
    path = tmp_path / "t.db"
    with TraceWriter(path, source="p0", flush_every=1000, flush_interval=1e-9) as w:
        w.record("join", peer="p0")
        assert _count(path) == 1


def test_clock_function_stamps_events(tmp_path):
    ticks = iter([10.0, 11.5])
    with TraceWriter(tmp_path / "t.db", source="sim", clock=lambda: next(ticks)) as w:
        w.record("join", peer="a")
        w.record("leave", peer="a")
        w.record("evict", peer="a", t=3.0, reason="x")
    assert [(e.t, e.kind) for e in TraceReader([tmp_path / "t.db"]).events()] == [(3.0, "evict"), (10.0, "join"), (11.5, "leave")]


def test_two_files_merge_in_time_order(tmp_path):
    a, b = tmp_path / "p0.db", tmp_path / "coord.db"
    with TraceWriter(a, source="p0") as wa, TraceWriter(b, source="coordinator") as wb:
        wa.record("compute", round=0, peer="p0", value=1.0, t=1.0)
        wa.record("compute", round=1, peer="p0", value=1.0, t=4.0)
        wb.record("round", round=0, t=2.0, hash="h0", members=["p0"])
        wb.record("abort", round=1, peer="p1", t=3.0, reason="timeout")
        wb.record("round", round=1, t=5.0, hash="h1", members=["p0"])
    reader = TraceReader([a, b])
    events = reader.events()
    assert [e.t for e in events] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [e.source for e in events] == ["p0", "coordinator", "coordinator", "p0", "coordinator"]
    assert set(reader.meta()) == {str(a), str(b)}
    assert isinstance(events[0], Event)
    with pytest.raises(AttributeError):
        events[0].t = 9.0  # frozen


def test_reader_sees_what_a_live_writer_flushed(tmp_path):
    path = tmp_path / "live.db"
    w = TraceWriter(path, source="coordinator")
    w.record("join", peer="p0", t=1.0)
    w.flush()
    reader = TraceReader([path])
    assert len(reader.events()) == 1
    w.record("leave", peer="p0", t=2.0)
    w.close()
    assert [e.kind for e in reader.events()] == ["join", "leave"]
    reader.close()

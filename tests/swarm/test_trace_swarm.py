"""A real swarm writes the same trace as the simulator: every peer and the coordinator its own file."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest

from gossamer.cli import main
from gossamer.swarm import Coordinator, Peer
from gossamer.swarm.coordinator import blamed_by
from gossamer.tasks import make_task
from gossamer.trace import TraceReader, summarize
from gossamer.transport.identity import Identity

N, ROUNDS = 3, 4


def batches(shard):
    return iter(shard.next_batch, None)


def run_traced_swarm(folder, *, attack="tamper"):
    """N in-process peers over TCP (digits, ddp, --audit 1), the last one attacking, all writing traces."""
    task = make_task("digits")

    async def main_():
        coord = await Coordinator.start(Identity.generate(), "traced", "127.0.0.1", 0, min_peers=N,
                                        trace=folder / "coordinator.trace", events_path=folder / "events.jsonl")
        addr = f"127.0.0.1:{coord.address[1]}"
        ids = sorted((Identity.generate() for _ in range(N)), key=lambda i: i.peer_id)
        bad = ids[-1].peer_id
        peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="traced", identity=ident,
                      algorithm="ddp", audit=1, deadline_floor=10.0, trace=folder / f"{ident.peer_id}.trace",
                      attack=attack if ident.peer_id == bad else None) for ident in ids]

        async def one(k, p):
            try:
                return await p.run(batches(task.shard(k, N, seed=0)), rounds=ROUNDS)
            except Exception as exc:  # the excluded attacker ends with the coordinator's refusal
                return exc

        try:
            reports = await asyncio.gather(*(one(k, p) for k, p in enumerate(peers)))
            return dict(zip((i.peer_id for i in ids), reports)), coord, bad
        finally:
            await coord.close()

    return asyncio.run(main_())


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traced")
    reports, coord, bad = run_traced_swarm(folder)
    return folder, reports, coord, bad


@pytest.mark.timeout(120)
def test_every_honest_peer_traces_each_round(swarm):
    folder, reports, coord, bad = swarm
    honest = {p: r for p, r in reports.items() if p != bad}
    for pid, report in honest.items():
        assert not isinstance(report, Exception), report
        assert report.rounds_completed == ROUNDS
        with TraceReader(folder / f"{pid}.trace") as reader:
            assert reader.meta()[str(folder / f"{pid}.trace")]["source"] == pid
            events = reader.events()
        by_kind = defaultdict(list)
        for e in events:
            assert e.source == pid
            by_kind[e.kind].append(e)
        for kind in ("compute", "barrier_wait", "bytes", "phase", "round", "score", "loss"):
            assert {e.round for e in by_kind[kind]} >= set(range(ROUNDS)), (pid, kind)
        # one round event per committed round, with the agreed hash the report holds
        assert [(e.round, e.detail["hash"]) for e in by_kind["round"]] == \
               [(h["round"], h["agreed"]) for h in report.state_hashes]
        assert all(pid in e.detail["members"] for e in by_kind["round"])
        # durations end at t and are non-negative; this peer waited for nobody in particular
        for e in by_kind["compute"] + by_kind["barrier_wait"] + by_kind["phase"]:
            assert e.value is not None and e.value >= 0 and e.peer == pid
        assert all(e.other is None for e in by_kind["barrier_wait"])
        assert all(e.detail["name"] == "sync" for e in by_kind["phase"])
        # the payload of every bytes event sums to what the peer's report says it sent
        assert all(e.peer == pid and e.other != pid for e in by_kind["bytes"])
        assert sum(e.value for e in by_kind["bytes"]) == report.payload_bytes_sent > 0
        # scores: this peer reports on every contributor of each committed round, the attacker included
        scored = defaultdict(set)
        for e in by_kind["score"]:
            assert e.other == pid
            assert {"cosine", "norm_ratio", "dist_ratio", "long_cosine", "bad", "reasons"} <= set(e.detail)
            scored[e.round].add(e.peer)
        for r in range(ROUNDS):
            assert set(honest) <= scored[r], (r, scored[r])
        assert all(e.value is not None for e in by_kind["loss"])
        # the tampering attempt was aborted, and the peer that proved it blames the attacker
        assert by_kind["abort"], "the tampered attempt should have aborted"
        assert not by_kind["attack"]


@pytest.mark.timeout(120)
def test_attacker_and_coordinator_traces(swarm):
    folder, reports, coord, bad = swarm
    assert isinstance(reports[bad], Exception) and "excluded" in str(reports[bad])
    with TraceReader(folder / f"{bad}.trace") as reader:
        attacks = reader.events(kind="attack")
    assert [(e.peer, e.detail["attack"]) for e in attacks] == [(bad, "tamper")]

    with TraceReader(folder / "coordinator.trace") as reader:
        events = reader.events()
    assert {e.source for e in events} == {"coordinator"}
    rounds = [e for e in events if e.kind == "round"]
    assert [e.round for e in rounds] == list(range(ROUNDS)) == list(range(coord.stats["commits"]))
    assert all(e.detail["hash"] == coord.agreed[e.round] for e in rounds)
    excluded = [e for e in events if e.kind == "exclude"]
    assert [e.peer for e in excluded] == [bad]
    assert excluded[0].detail["evidence"] and excluded[0].detail["rule"]
    assert excluded[0].detail["evidence"] == coord.trust.decisions[0]["evidence"]
    joins = {e.peer for e in events if e.kind == "join"}
    assert joins == set(reports)
    assert bad in {e.peer for e in events if e.kind == "leave"}
    aborts = [e for e in events if e.kind == "abort"]
    assert aborts and all(e.detail.get("reason") for e in aborts)
    assert aborts[0].peer == bad  # the proof in the reason names the attacker, not the honest peer that failed
    # the JSON-lines events file is written as before, next to the trace
    lines = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines if x["event"] == "commit"] == list(range(ROUNDS))
    assert [x["peer"] for x in lines if x["event"] == "exclude" and "rule" in x] == [bad]


@pytest.mark.timeout(60)
def test_report_over_all_files_names_the_excluded_peer(swarm, capsys):
    folder, reports, coord, bad = swarm
    paths = sorted(folder.glob("*.trace"))
    assert len(paths) == N + 1
    with TraceReader(paths) as reader:
        report = summarize(reader)
    assert [x.peer for x in report.exclusions] == [bad]
    assert report.rounds_committed == ROUNDS and not report.divergent_rounds
    assert set(report.sources) == set(reports) | {"coordinator"}
    sent = {p.peer: p.bytes_sent for p in report.peers}
    for pid, r in reports.items():
        if pid != bad:
            assert sent[pid] == r.payload_bytes_sent
    capsys.readouterr()
    assert main(["report", *map(str, paths)]) == 0
    assert bad in capsys.readouterr().out


@pytest.mark.parametrize("command", [
    ["peer", "--coordinator", "127.0.0.1:1", "--task", "digits"],
    ["coordinator", "--listen", "127.0.0.1:0"],
])
def test_trace_to_a_missing_folder_exits_2_before_joining(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setenv("GOSSAMER_HOME", str(tmp_path / "home"))
    missing = tmp_path / "missing" / "run.trace"
    assert main([*command, "--trace", str(missing)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "does not exist" in err[0] and str(tmp_path / "missing") in err[0], err
    assert not (tmp_path / "home").exists()  # no key was created: it stopped before anything else


def test_peer_checks_the_trace_path_when_built(tmp_path):
    task = make_task("digits")
    from gossamer.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        Peer(task.make_model(0), task.loss, coordinator="127.0.0.1:1", algorithm="ddp",
             trace=tmp_path / "missing" / "p.trace")


def test_coordinator_events_map_to_trace_kinds(tmp_path):
    """Each coordinator event as trace events: one straggler per late member, evictions, who an abort blames."""
    from gossamer.trace import TraceWriter

    path = tmp_path / "c.trace"
    with TraceWriter(path, source="coordinator") as w:
        Coordinator._trace_event(w, "straggler", {"round": 3, "late": ["b", "c"], "waited": 12.5, "deadline": 10.0})
        Coordinator._trace_event(w, "evict", {"peer": "b", "reason": "RuntimeError: boom", "failures": 3, "round": 4})
        Coordinator._trace_event(w, "evict", {"peer": "b", "reason": "evicted after 3", "round": 4, "members": 2})
        Coordinator._trace_event(w, "lost", {"peer": "c", "reason": "connection lost", "round": 5, "members": 1})
        Coordinator._trace_event(w, "abort", {"round": 5, "epoch": 9, "attempt": 2, "reason": "member c left the group: x"})
        Coordinator._trace_event(w, "admit", {"peer": "d", "round": 6, "members": 2})  # no trace kind
    with TraceReader(path) as reader:
        got = [(e.kind, e.round, e.peer, e.value) for e in reader.events()]
        stragglers = reader.events(kind="straggler")
    assert got == [("straggler", 3, "b", 12.5), ("straggler", 3, "c", 12.5), ("evict", 4, "b", None),
                   ("leave", 4, "b", None), ("leave", 5, "c", None), ("abort", 5, "c", None)]
    assert stragglers[0].detail == {"waited": 12.5, "deadline": 10.0}
    assert blamed_by("peer a failed: AuditFailed: g (round 0): proven misbehaviour: z: tampered with chunk 2") == "z"
    assert blamed_by("peer a failed: PeerError: lost") == "a"
    assert blamed_by("members saw different signed statements from x, y") is None

"""The simulator writes a trace in the recorder's schema, readable by ``gossamer report``."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from gossamer.cli import main
from gossamer.errors import ConfigError
from gossamer.sim import Scenario, run_algorithm
from gossamer.trace import TraceReader

PEERS = ("p0", "p1", "p2")


def _scenario(trace: Path | None, algorithms: tuple[str, ...] = ("diloco",), **kw: object) -> Scenario:
    base: dict[str, object] = dict(task="quadratic", algorithms=algorithms, peers=3, steps=12, inner_steps=4, evals=3,
                                   compute_time=0.01, seed=3, trace=None if trace is None else str(trace))
    base.update(kw)
    return Scenario(**base)  # type: ignore[arg-type]


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, t, source, round, kind, peer, other, value, detail FROM events ORDER BY id").fetchall()


@pytest.mark.parametrize("algorithm", ["ddp", "diloco", "streaming_diloco"])
def test_trace_has_every_peer_and_matches_the_run(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "sim.trace"
    scenario = _scenario(path, (algorithm,))
    run = run_algorithm(scenario, algorithm)
    rows = _rows(path)
    assert {r[2] for r in rows} == {"sim"}
    for kind in ("compute", "bytes", "round", "loss", "phase"):
        assert {r[5] for r in rows if r[4] == kind} == set(PEERS), kind
    # one round, loss and phase event per peer and completed sync
    for kind in ("round", "loss", "phase"):
        for pid in PEERS:
            assert sorted(r[3] for r in rows if r[4] == kind and r[5] == pid) == list(range(run.rounds)), (kind, pid)
    # payload bytes per peer, summed over links and rounds, are what the transports counted
    sent: dict[str, float] = defaultdict(float)
    for r in rows:
        if r[4] == "bytes":
            assert r[6] in PEERS and r[6] != r[5] and r[7] > 0
            sent[r[5]] += r[7]
    assert [sent[p] for p in PEERS] == run.extra["payload_bytes_sent_by_peer"]
    # and payload + framing to the mean that the run reports
    framing = sum(json.loads(r[8])["framing"] for r in rows if r[4] == "bytes")
    assert (sum(sent.values()) + framing) / len(PEERS) == pytest.approx(run.bytes_sent_per_peer)
    # compute is the virtual seconds charged: compute_time per local step
    compute = sum(r[7] for r in rows if r[4] == "compute")
    assert compute == pytest.approx(len(PEERS) * scenario.steps * scenario.compute_time)
    # virtual time: per peer, in the order written, t never goes back; the run ends at sim_time_s
    last: dict[str, float] = {}
    for r in rows:
        if r[5] is not None:
            assert r[1] >= last.get(r[5], 0.0), r
            last[r[5]] = r[1]
    assert max(last.values()) == pytest.approx(run.sim_time_s, abs=1e-9)
    # a compute span ends where it says and starts no earlier than 0
    assert all(r[1] - r[7] >= -1e-12 for r in rows if r[4] == "compute")
    # evaluations: one per curve point, the validation metric as value
    evals = [r for r in rows if r[4] == "eval"]
    assert [json.loads(r[8])["step"] for r in evals] == [p.step for p in run.curve]
    assert [r[7] for r in evals] == pytest.approx([p.val_metric for p in run.curve])
    assert all(json.loads(r[8])["metric"] == run.metric_name for r in evals)
    # round events carry the members and, with bit parity, the same hash on every peer
    with TraceReader(path) as reader:
        meta = reader.meta()[str(path)]
        rounds = reader.events(kind="round")
    assert meta["source"] == "sim" and meta["algorithm"] == algorithm
    assert all(e.detail["members"] == list(PEERS) for e in rounds)
    by_round: dict[int, set[str]] = defaultdict(set)
    for e in rounds:
        by_round[e.round].add(e.detail["hash"])
    assert all(len(hs) == 1 for hs in by_round.values())
    assert not [r for r in rows if r[4] == "attack"]


def test_report_reads_a_simulated_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sim.trace"
    run_algorithm(_scenario(path), "diloco")
    png, out = tmp_path / "timeline.png", tmp_path / "report.json"
    assert main(["report", str(path), "--plot", str(png), "--json", str(out)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    report = json.loads(out.read_text())
    assert [p["peer"] for p in report["peers"]] == list(PEERS)
    assert report["rounds_committed"] == 3 and report["divergent_rounds"] == []
    assert "sources: sim" in capsys.readouterr().out


def test_same_seed_same_events(tmp_path: Path) -> None:
    a, b = tmp_path / "a.trace", tmp_path / "b.trace"
    run_algorithm(_scenario(a), "diloco")
    run_algorithm(_scenario(b), "diloco")
    rows = _rows(a)
    assert rows and rows == _rows(b)
    other = tmp_path / "c.trace"
    run_algorithm(_scenario(other, seed=4), "diloco")
    assert _rows(other) != rows


def test_a_rerun_replaces_the_trace(tmp_path: Path) -> None:
    path = tmp_path / "sim.trace"
    run_algorithm(_scenario(path), "diloco")
    first = _rows(path)
    run_algorithm(_scenario(path), "diloco")
    assert _rows(path) == first


def test_byzantine_peers_get_an_attack_event_and_no_hash(tmp_path: Path) -> None:
    path = tmp_path / "sim.trace"
    run_algorithm(_scenario(path, ("ddp",), steps=4, byzantine=1, attack="signflip", aggregator="median"), "ddp")
    with TraceReader(path) as reader:
        attacks = reader.events(kind="attack")
        rounds = reader.events(kind="round")
    assert [(e.peer, e.t, e.detail) for e in attacks] == [("p2", 0.0, {"attack": "signflip"})]
    assert {e.peer for e in rounds if "hash" in e.detail} == {"p0", "p1"}


def test_several_algorithms_write_one_file_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.trace"
    args = ["simulate", "--task", "quadratic", "--peers", "3", "--steps", "8", "--inner-steps", "4", "--evals", "2",
            "--compute-time", "0.01", "--algorithms", "ddp,diloco", "--trace", str(path)]
    assert main(args) == 0
    assert not path.exists()
    out = capsys.readouterr().out.replace("\n", "")
    for algorithm in ("ddp", "diloco"):
        one = tmp_path / f"run-{algorithm}.trace"
        assert f"run-{algorithm}.trace" in out
        with TraceReader(one) as reader:
            assert reader.meta()[str(one)]["algorithm"] == algorithm
            assert {e.peer for e in reader.events(kind="compute")} == set(PEERS)
    scenario = _scenario(path, ("diloco",))
    assert scenario.trace_path("diloco") == path


def test_bad_trace_path_exits_2_before_any_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import gossamer.sim.runner as runner

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started despite a bad --trace")

    monkeypatch.setattr(runner, "run_algorithm", no_training)
    monkeypatch.setattr(runner, "task_for", no_training)
    missing = tmp_path / "no" / "such" / "folder" / "t.trace"
    args = ["simulate", "--task", "quadratic", "--peers", "3", "--steps", "4", "--algorithms", "ddp"]
    assert main([*args, "--trace", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(missing.parent) in err
    assert main([*args, "--trace", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_scenario_validates_the_trace_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _scenario(tmp_path / "missing" / "t.trace")
    with pytest.raises(ConfigError, match="trace must be a file path"):
        Scenario(task="quadratic", peers=3, trace="")
    with pytest.raises(ConfigError, match="is a folder"):
        Scenario.from_dict({"task": "quadratic", "peers": 3, "trace": str(tmp_path)})


def test_no_trace_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = run_algorithm(_scenario(None), "diloco")
    assert run.rounds == 3
    assert list(tmp_path.iterdir()) == []

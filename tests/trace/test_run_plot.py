"""``gossamer report --plot`` draws a run (loss, validation, bytes and duration per
round, aborts and exclusions marked, the timeline) and ``--json`` holds the series:
on a synthetic trace with known numbers and on the trace of a tiny real simulated run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from gossamer.cli import main
from gossamer.trace import TraceReader, TraceWriter, plot_run, run_series, summarize


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()  # a truncated or corrupt file raises here
    with Image.open(path) as im:
        return im.size


@pytest.fixture()
def swarm_trace(tmp_path):
    """Two peers' files and a coordinator's: 4 committed rounds (0, 1, 3, 4), round 2
    aborted twice (seen by both peers and the coordinator) and never committed,
    round 3 aborted once before it committed, p1 excluded in round 4."""
    files = [tmp_path / "p0.trace", tmp_path / "p1.trace", tmp_path / "coordinator.trace"]
    writers = {p: TraceWriter(f, source=p) for p, f in zip(("p0", "p1", "coordinator"), files)}
    t = 100.0
    for r in range(5):
        for i, p in enumerate(("p0", "p1")):
            w = writers[p]
            w.record("compute", round=r, peer=p, value=1.0, t=t + 1.0)
            w.record("bytes", round=r, peer=p, other="p1" if p == "p0" else "p0", value=1000.0 * (r + 1), t=t + 1.2)
            aborts = 2 if r == 2 else 1 if r == 3 else 0
            for a in range(aborts):
                w.record("abort", round=r, reason="deadline", attempt=a, t=t + 1.3 + a * 0.1)
            if r != 2:
                w.record("round", round=r, peer=p, hash=f"h{r}", members=["p0", "p1"], t=t + 1.5 + 0.01 * i)
                w.record("loss", round=r, peer=p, value=2.0 - 0.25 * r + (0.1 if p == "p1" else 0.0), t=t + 1.5)
            if r in (1, 4):
                w.record("eval", round=r, peer=p, value=0.5 + 0.1 * r, metric="val_accuracy", loss=1.0, step=10 * (r + 1),
                         t=t + 1.6)
        c = writers["coordinator"]
        for a in range(2 if r == 2 else 1 if r == 3 else 0):
            c.record("abort", round=r, reason="peer p1 failed: deadline", attempt=a + 1, t=t + 1.3)
        if r != 2:
            c.record("round", round=r, hash=f"h{r}", members=["p0", "p1"], loss=99.0, bytes=1.0, t=t + 1.4)
        t += 2.0
    writers["coordinator"].record("exclude", round=4, peer="p1", other="p0", rule="proof", evidence=["equivocated"], t=t)
    for w in writers.values():
        w.close()
    return files


def test_series_counts_what_the_traces_say(swarm_trace):
    with TraceReader(swarm_trace) as reader:
        s = run_series(reader.events())
    assert [p.round for p in s.rounds] == [0, 1, 3, 4]
    by = {p.round: p for p in s.rounds}
    # the peers' losses win over the coordinator's reported mean; their bytes over its count
    assert by[0].loss == pytest.approx(2.05) and by[4].loss == pytest.approx(1.05)
    assert by[0].bytes == 2000.0 and by[3].bytes == 8000.0
    # earliest commit record of each round (the coordinator's), durations between consecutive rounds only
    assert by[0].t == pytest.approx(101.4) and by[1].duration_s == pytest.approx(2.0)
    assert by[0].duration_s is None and by[3].duration_s is None and by[4].duration_s == pytest.approx(2.0)
    # one abort of round 3, seen by three processes, counts once
    assert by[3].aborts == 1 and by[1].aborts == 0
    assert s.aborted_attempts() == {2: 2, 3: 1}  # round 2 never committed: aborted, but no point
    assert [(m.kind, m.peer, m.round, m.reason) for m in s.exclusions] == [("exclude", "p1", 4, "proof")]
    assert s.metric == "val_accuracy" and [(e.round, e.value) for e in s.evals] == [(1, 0.6), (1, 0.6), (4, 0.9), (4, 0.9)]


def test_coordinator_trace_alone_gives_its_reported_loss_and_bytes(swarm_trace):
    with TraceReader(swarm_trace[2]) as reader:
        s = run_series(reader.events())
    assert [(p.round, p.loss, p.bytes) for p in s.rounds] == [(0, 99.0, 1.0), (1, 99.0, 1.0), (3, 99.0, 1.0), (4, 99.0, 1.0)]


def test_plot_run_writes_a_sane_png(swarm_trace, tmp_path):
    out = tmp_path / "run.png"
    with TraceReader(swarm_trace) as reader:
        plot_run(reader, out)
    width, height = _png_size(out)
    assert 800 <= width <= 2000 and 600 <= height <= 2500, (width, height)


def test_empty_trace_still_plots(tmp_path):
    path = tmp_path / "empty.trace"
    TraceWriter(path, source="p0").close()
    with TraceReader(path) as reader:
        plot_run(reader, tmp_path / "empty.png")
        assert run_series(reader.events()).rounds == ()
    _png_size(tmp_path / "empty.png")


def test_cli_report_plots_a_real_simulated_run(tmp_path, capsys):
    trace = tmp_path / "sim.trace"
    assert main(["simulate", "--task", "quadratic", "--algorithms", "diloco", "--peers", "3", "--steps", "24",
                 "--inner-steps", "4", "--evals", "3", "--trace", str(trace)]) == 0
    png, js = tmp_path / "run.png", tmp_path / "report.json"
    capsys.readouterr()
    assert main(["report", str(trace), "--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "curves: loss" in out and "payload bytes per round" in out
    width, height = _png_size(png)
    assert 800 <= width <= 2000 and 600 <= height <= 2500, (width, height)
    series = json.loads(js.read_text())["series"]
    rounds = series["rounds"]
    assert [r["round"] for r in rounds] == list(range(6))  # 24 steps / H=4: six syncs
    assert all(r["loss"] is not None and r["bytes"] > 0 and r["aborts"] == 0 for r in rounds)
    assert all(r["duration_s"] > 0 for r in rounds[1:])
    assert series["metric"] == "rel_dist_to_opt" and len(series["evals"]) >= 3
    assert series["evals"][0]["round"] is None  # the evaluation before any round
    with TraceReader(trace) as reader:
        assert summarize(reader).series.rounds[-1].round == 5

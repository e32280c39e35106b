"""Reports over a small synthetic trace: the slow peer, the aborting peer and its
reason, the excluded peer and its evidence are named; the timeline is a PNG; the
``gossamer report`` command prints them and exits 2 on a missing file."""

from __future__ import annotations

import json

import pytest

from gossamer.cli import main
from gossamer.trace import TraceReader, TraceWriter, plot_timeline, render_text, summarize

PEERS = ("p0", "p1", "p2", "p3")


@pytest.fixture()
def trace(tmp_path):
    """Four peers, four rounds; p2 computes 3x longer than the others, p1 is blamed
    for two timeouts, p3 is excluded for a hash mismatch. Sim file + coordinator file."""
    sim, coord = tmp_path / "sim.db", tmp_path / "coordinator.db"
    with TraceWriter(sim, source="sim") as ws, TraceWriter(coord, source="coordinator") as wc:
        t = 0.0
        for r in range(4):
            if r == 0:
                wc.record("join", peer="p0", t=t)
            for p in PEERS:
                compute = 3.0 if p == "p2" else 1.0
                ws.record("compute", round=r, peer=p, value=compute, t=t + compute)
                if p != "p2":
                    ws.record("barrier_wait", round=r, peer=p, value=2.0, t=t + 3.0)
                for q in PEERS:
                    if q != p:
                        ws.record("bytes", round=r, peer=p, other=q, value=1000.0, t=t + 3.2)
            if r in (1, 2):
                wc.record("abort", round=r, peer="p1", reason="timeout", t=t + 3.5)
            else:
                wc.record("round", round=r, hash=f"h{r}", members=list(PEERS), t=t + 3.5)
            t += 4.0
        wc.record("exclude", round=3, peer="p3", other="p0", rule="hash-mismatch", evidence={"expected": "h3", "got": "zz"}, t=t)
        wc.record("evict", round=3, peer="p1", reason="2 aborts", t=t + 0.1)
        wc.record("leave", peer="p0", t=t + 0.2)
    return sim, coord


def test_summarize_names_slow_aborting_and_excluded_peers(trace):
    report = summarize(TraceReader(trace))
    assert report.slow_peers == ("p2",)
    by = {p.peer: p for p in report.peers}
    assert by["p2"].median_compute_s == 3.0 and by["p2"].compute_vs_swarm == pytest.approx(3.0)
    assert by["p2"].median_wait_caused_s == 2.0 and by["p0"].median_wait_caused_s == 0.0
    assert by["p0"].median_wait_s == 2.0 and by["p2"].median_wait_s is None
    assert by["p0"].rounds == 4
    assert by["p0"].bytes_sent == 4 * 3 * 1000.0 and by["p0"].bytes_received == 4 * 3 * 1000.0
    (failure,) = report.failures
    assert failure.peer == "p1" and failure.aborts == 2 and failure.reasons == {"timeout": 2} and failure.rounds == (1, 2)
    (exclusion,) = report.exclusions
    assert exclusion.peer == "p3" and exclusion.rule == "hash-mismatch" and exclusion.evidence == {"expected": "h3", "got": "zz"}
    assert exclusion.accuser == "p0" and exclusion.round == 3
    assert [(e.peer, e.reason) for e in report.evictions] == [("p1", "2 aborts")]
    assert report.rounds_committed == 2 and report.divergent_rounds == ()
    assert report.sources == ("coordinator", "sim")
    json.dumps(report.to_json())  # serialisable

    text = render_text(report)
    assert "p2" in text and "SLOW" in text
    assert "timeout x2" in text
    assert "hash-mismatch" in text and '"got": "zz"' in text


def test_straggler_event_marks_a_peer_slow_and_divergent_hashes_are_reported(tmp_path):
    path = tmp_path / "t.db"
    with TraceWriter(path, source="sim") as w:
        w.record("straggler", round=0, peer="p5", value=4.0, t=1.0)
        w.record("round", round=0, hash="aa", t=2.0)
        w.record("round", round=0, hash="bb", t=2.0)
    report = summarize(TraceReader([path]))
    assert report.slow_peers == ("p5",)
    assert report.divergent_rounds == (0,) and report.rounds_committed == 1
    assert "DIVERGENT" in render_text(report)


def test_plot_timeline_writes_a_png(trace, tmp_path):
    out = tmp_path / "timeline.png"
    plot_timeline(TraceReader(trace), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_empty_trace_reports_and_plots(tmp_path):
    path = tmp_path / "empty.db"
    TraceWriter(path, source="p0").close()
    reader = TraceReader([path])
    report = summarize(reader)
    assert report.events == 0 and report.peers == () and "(none)" in render_text(report)
    plot_timeline(reader, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_report_prints_the_excluded_peer_and_writes_outputs(trace, tmp_path, capsys):
    png, js = tmp_path / "t.png", tmp_path / "r.json"
    assert main(["report", str(trace[0]), str(trace[1]), "--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "exclusions" in out and "p3" in out and "hash-mismatch" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert data["slow_peers"] == ["p2"] and data["exclusions"][0]["peer"] == "p3"


def test_cli_report_missing_or_bad_file_exits_2_with_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent.db")]) == 2
    err = capsys.readouterr().err
    assert "absent.db" in err and "no such file" in err and err.count("\n") == 1
    junk = tmp_path / "junk.db"
    junk.write_text("hello " * 200)
    assert main(["report", str(junk)]) == 2
    assert "not an SQLite" in capsys.readouterr().err

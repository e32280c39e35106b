"""``gossamer peer`` shows its progress and keeps its curves: two real peers and a
real coordinator on 127.0.0.1; each committed round is one line with the loss, the
validation metric when evaluated, bytes and the group; the --json report holds the
complete loss curve and the validation curve; the coordinator's commits carry the
bytes and loss the peers reported; ``gossamer report --plot`` draws the swarm's
traces. Plus the progress printer itself (plain lines, and the live line of a terminal)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
from PIL import Image

from gossamer.cli import main
from gossamer.swarm.cli import PeerProgress, commit_line

STEPS, H, EVAL_EVERY = 32, 4, 3
ROUNDS = STEPS // H  # diloco syncs every H steps: 8 rounds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished swarm run (the module's tests read its outputs)."""
    root = tmp_path_factory.mktemp("progress")
    env = dict(os.environ, GOSSAMER_HOME=str(root / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cli = [sys.executable, "-m", "gossamer.swarm.cli"]
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(root / f"{name}.out", "wb") as out, open(root / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(cli + args, stdout=out, stderr=err, env=env, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        coord = start("coordinator", ["coordinator", "--listen", "127.0.0.1:0", "--min-peers", "2",
                                      "--trace", str(root / "coordinator.trace"), "--events", str(root / "events.jsonl")])
        deadline = time.monotonic() + 60
        while "listening on" not in (root / "coordinator.out").read_text():
            assert coord.poll() is None and time.monotonic() < deadline, (root / "coordinator.err").read_text()
            time.sleep(0.1)
        port = (root / "coordinator.out").read_text().split("listening on")[1].split()[0].rsplit(":", 1)[1]
        peers = [start(f"p{i}", ["peer", "--coordinator", f"127.0.0.1:{port}", "--task", "digits", "--algorithm",
                                 "diloco", "--steps", str(STEPS), "--inner-steps", str(H), "--eval-every", str(EVAL_EVERY),
                                 "--shard", f"{i}/2", "--deadline-floor", "10", "--key", str(root / f"p{i}.pem"),
                                 "--json", str(root / f"p{i}.json"), "--trace", str(root / f"p{i}.trace")])
                 for i in range(2)]
        for i, p in enumerate(peers):
            assert p.wait(timeout=150) == 0, (root / f"p{i}.err").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return root


@pytest.mark.timeout(200)
def test_one_line_per_committed_round_with_loss_bytes_group_and_validation(run):
    for i in range(2):
        out = (run / f"p{i}.out").read_text()
        commits = re.findall(r"round (\d+) committed at step (\d+), group of 2, loss ([0-9.]+)(?:, val_accuracy ([0-9.]+))?, "
                             r"sent ([0-9.]+ [KM]?B) \(\+([0-9.]+ [KM]?B)\), hash [0-9a-f]{16}", out)
        assert [int(c[0]) for c in commits] == list(range(ROUNDS)), out
        assert [int(c[1]) for c in commits] == [H * (r + 1) for r in range(ROUNDS)]
        evaluated = [int(c[0]) for c in commits if c[3]]
        assert evaluated == [r for r in range(ROUNDS) if (r + 1) % EVAL_EVERY == 0], out
        assert all(0.0 <= float(c[3]) <= 1.0 for c in commits if c[3])
        # the round after the last evaluated one ends the run: one final validation line
        assert re.search(rf"val_accuracy [0-9.]+ \(validation loss [0-9.]+\) after round {ROUNDS - 1}, step {STEPS}", out)
        assert re.search(rf"left after {ROUNDS} rounds, {STEPS} steps, \d+ aborts, [0-9.]+ KB of payload sent", out)


@pytest.mark.timeout(200)
def test_the_json_report_holds_the_complete_loss_and_validation_curves(run):
    for i in range(2):
        report = json.loads((run / f"p{i}.json").read_text())
        steps = [p["step"] for p in report["losses"]]
        assert steps == [10, 20, 30, STEPS]  # every 10 steps, and the last step
        assert all(isinstance(p["loss"], float) and p["loss"] > 0 for p in report["losses"])
        assert report["losses"][-1]["loss"] < report["losses"][0]["loss"]  # it learnt
        assert report["metric"] == "val_accuracy"
        evals = report["evals"]
        assert [e["round"] for e in evals] == [2, 5, ROUNDS - 1]  # every 3rd round, and the end
        assert [e["step"] for e in evals] == [12, 24, STEPS]
        assert all(e["metric"] == "val_accuracy" and 0 <= e["value"] <= 1 and e["loss"] > 0 for e in evals)
        assert evals[-1]["value"] > 0.3  # 10 classes: better than chance
    a, b = (json.loads((run / f"p{i}.json").read_text()) for i in range(2))
    assert [e["value"] for e in a["evals"]] == [e["value"] for e in b["evals"]]  # one shared model


@pytest.mark.timeout(200)
def test_the_coordinator_commits_carry_the_bytes_and_loss_the_peers_reported(run):
    commits = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "commit"]
    assert [c["round"] for c in commits] == list(range(ROUNDS))
    reports = [json.loads((run / f"p{i}.json").read_text()) for i in range(2)]
    assert sum(c["bytes"] for c in commits) == sum(r["payload_bytes_sent"] for r in reports)
    assert all(c["bytes"] > 0 and c["loss"] > 0 for c in commits)


@pytest.mark.timeout(200)
def test_report_plots_the_swarm_traces(run, capsys):
    png, js = run / "run.png", run / "report.json"
    traces = [str(run / f"{n}.trace") for n in ("p0", "p1", "coordinator")]
    assert main(["report", *traces, "--plot", str(png), "--json", str(js)]) == 0
    assert "curves: loss" in capsys.readouterr().out
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert 800 <= im.size[0] <= 2000 and 600 <= im.size[1] <= 2500
    series = json.loads(js.read_text())["series"]
    assert [r["round"] for r in series["rounds"]] == list(range(ROUNDS))
    assert all(r["loss"] is not None and r["bytes"] > 0 for r in series["rounds"])
    reports = [json.loads((run / f"p{i}.json").read_text()) for i in range(2)]
    assert sum(r["bytes"] for r in series["rounds"]) == sum(r["payload_bytes_sent"] for r in reports)
    assert sorted({(e["peer"], e["round"]) for e in series["evals"]}) == sorted(
        (r["peer_id"], rnd) for r in reports for rnd in (2, 5, ROUNDS - 1))


def _commit(r: int, **kw):
    return {"event": "commit", "round": r, "hash": "ab" * 32, "step": 4 * (r + 1), "group": 2, "members": 3,
            "loss": 0.5, "payload_bytes_sent": 2600 * (r + 1), "bytes_sent": 2700 * (r + 1), "round_bytes": 2600,
            "aborts": 0, **kw}


def test_commit_line_names_every_quantity():
    line = commit_line(_commit(4, val={"metric": "val_accuracy", "value": 0.91234, "round": 4}))
    assert line == ("round 4 committed at step 20, group of 2 (3 in the swarm), loss 0.5, val_accuracy 0.9123, "
                    "sent 13.0 KB (+2.6 KB), hash abababababababab")
    assert "loss -," in commit_line(_commit(0, loss=float("nan"), members=2))
    assert "in the swarm" not in commit_line(_commit(0, members=2))


def test_progress_prints_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = PeerProgress("p" * 16, "val_accuracy", stream=out)
    assert not progress.live_mode
    progress({"event": "admitted", "round": 0, "hash": "x"})
    progress(_commit(0))
    progress({"event": "abort", "round": 1, "reason": "member x left the group"})
    progress({"event": "rejoin", "round": 1, "reason": "lost the coordinator"})
    progress(_commit(1))
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == f"peer {'p' * 16}: admitted to round 0"
    assert lines[1].startswith(f"peer {'p' * 16}: round 0 committed at step 4")
    assert "round 1 aborted (member x left the group); retrying" in lines[2]
    assert "rejoining the swarm at round 1: lost the coordinator" in lines[3]
    assert len(lines) == 5


def test_progress_updates_one_live_line_on_a_terminal():
    out = io.StringIO()
    progress = PeerProgress("q" * 16, "val_accuracy", stream=out, live=True)
    for r in range(3):
        progress(_commit(r, val={"metric": "val_accuracy", "value": 0.8, "round": r}) if r == 1 else _commit(r))
    progress({"event": "abort", "round": 3, "reason": "deadline"})
    progress.close()
    raw = out.getvalue()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # without the terminal's styles
    # no line per commit: the live line is redrawn in place (cursor moves), events print above it
    assert "committed at step" not in text
    assert "round 2" in text and "val_accuracy 0.8 (round 1)" in text and "loss 0.5" in text
    assert "round 3 aborted (deadline); retrying" in text
    assert "\x1b[2K" in raw  # the line is erased and redrawn in place, not appended

"""Churn in the simulator (issue 14.3): seeded failures, joins and stragglers under
the real coordinator's round rules; goodput; a realized schedule replays exactly."""

from __future__ import annotations

import json

import pytest

import gossamer
from gossamer.errors import ConfigError
from gossamer.sim.churn import Churn, ChurnEvent, draw_slowdown, parse_slowdown

BASE = dict(task="digits", peers=5, steps=40, inner_steps=4, compute_time=0.05, link="100mbit,10ms", evals=2)
MODEL = {"mtbf": 10.0, "joins_per_hour": 7200, "stragglers": 0.15, "slowdown": "pareto:1.2", "straggler_grace": 0.5}


def _run(algorithm="diloco", seed=0, **churn):
    options = {"streaming_diloco": {"tau": 0}} if algorithm == "streaming_diloco" else {}
    return gossamer.simulate(**BASE, algorithms=(algorithm,), seed=seed, churn=churn or None,
                             algorithm_options=options).runs[0]


def _rounds(run):
    return [(r["round"], r["members"], r["attempts"]) for r in run.extra["churn"]["rounds"]]


def test_the_same_seed_gives_the_same_faults_and_bytes_another_seed_other_faults():
    a, b = _run(**MODEL), _run(**MODEL)
    assert a.extra["churn"]["events"] == b.extra["churn"]["events"]
    assert _rounds(a) == _rounds(b)
    assert a.extra["payload_bytes_sent_by_peer"] == b.extra["payload_bytes_sent_by_peer"]
    assert a.extra["final_state_hash"] == b.extra["final_state_hash"] and a.sim_time_s == b.sim_time_s
    c = _run(seed=1, **MODEL)
    assert c.extra["churn"]["events"] != a.extra["churn"]["events"]


@pytest.mark.parametrize("algorithm", ["diloco", "ddp", "streaming_diloco"])
def test_a_fault_model_fails_joins_and_slows_peers_and_every_committed_round_agrees(algorithm):
    run = _run(algorithm, **MODEL)
    c = run.extra["churn"]
    kinds = {e["kind"] for e in c["events"]}
    assert {"join", "slow"} <= kinds and kinds & {"leave", "crash"}, c["events"]
    assert run.extra["state_hashes_equal"], "members of a committed round must hold the same state"
    assert 0 < c["goodput"] < 1 and c["committed_rounds"] == run.rounds
    members = [set(r["members"]) for r in c["rounds"]]
    assert len(set(map(frozenset, members))) > 1, "membership never changed"
    joined = {e["peer"] for e in c["events"] if e["kind"] == "join"}
    assert all(j >= BASE["peers"] for j in joined)


def test_the_realized_schedule_replayed_commits_the_same_rounds_and_state():
    drawn = _run(**MODEL)
    events = drawn.extra["churn"]["events"]
    again = _run(events=events, straggler_grace=MODEL["straggler_grace"], max_joins=BASE["peers"])
    assert _rounds(again) == _rounds(drawn)
    assert again.extra["final_state_hash"] == drawn.extra["final_state_hash"]


def test_an_exact_schedule_crash_join_leave_and_a_straggler_that_sits_out():
    run = _run(straggler_grace=1.0, events=[
        {"round": 2, "peer": 1, "kind": "crash"}, {"round": 3, "peer": 5, "kind": "join"},
        {"round": 4, "peer": 2, "kind": "leave"}, {"round": 6, "peer": 3, "kind": "slow", "factor": 16.0}])
    by = {r["round"]: r for r in run.extra["churn"]["rounds"]}
    assert by[2]["attempts"] == 2 and "p1" not in by[2]["members"] and "p1" in by[1]["members"]
    assert "p5" in by[3]["members"] and "p5" not in by[2]["members"]
    assert "p2" not in by[4]["members"] and "p2" in by[3]["members"]
    assert "p3" not in by[6]["members"] and "p3" in by[6]["sat_out"] and "p3" in by[9]["members"]
    c = run.extra["churn"]
    assert (c["failures"], c["joins"], c["aborted_attempts"]) == (2, 1, 1) and c["sat_out"] >= 1
    assert run.extra["state_hashes_equal"] and c["completed"]


def test_a_mild_straggler_is_waited_for_and_the_round_takes_longer():
    slow = _run(straggler_grace=1.0, events=[{"round": 3, "peer": 0, "kind": "slow", "factor": 3.0}])
    base = _run()
    by = {r["round"]: r for r in slow.extra["churn"]["rounds"]}
    assert "p0" in by[3]["members"] and not by[3]["sat_out"]
    assert slow.sim_time_s == pytest.approx(base.sim_time_s + 2 * 4 * 0.05, rel=0.02)
    assert slow.extra["final_state_hash"] == base.extra["final_state_hash"]


def test_when_every_peer_fails_the_run_ends_early_and_says_so():
    run = _run(mtbf=0.3)
    c = run.extra["churn"]
    assert not c["completed"] and c["failures"] == BASE["peers"]
    assert run.curve[-1].step < BASE["steps"]


def test_goodput_counts_the_lost_work_of_a_straggler():
    run = _run(straggler_grace=0.5, events=[{"round": 2, "peer": 1, "kind": "slow", "factor": 10.0}])
    c = run.extra["churn"]
    lost = 4 * 0.05 * 10  # its round-2 steps, sat out
    assert c["compute_s"] - c["committed_compute_s"] == pytest.approx(lost, rel=1e-6)
    assert c["goodput"] == pytest.approx(c["committed_compute_s"] / c["compute_s"])


def test_slowdown_distributions_give_factors_of_at_least_one():
    import random
    rng = random.Random(0)
    for spec in ("fixed:2", "uniform:1.5,3", "lognormal:0.5", "pareto:1.5"):
        kind, params = parse_slowdown(spec)
        xs = [draw_slowdown(kind, params, rng) for _ in range(500)]
        assert min(xs) >= 1.0, spec
    assert all(x == 2 for x in [draw_slowdown("fixed", (2.0,), rng)])


@pytest.mark.parametrize("churn, needle", [
    ({"mtbf": -1}, "mtbf"), ({"stragglers": 1.5}, "stragglers"), ({"slowdown": "weibull:2", "stragglers": 0.1}, "weibull"),
    ({"slowdown": "uniform:3,2", "stragglers": 0.1}, "uniform"), ({"bogus": 1}, "bogus"),
    ({"events": [{"round": 0, "peer": 5, "kind": "join"}]}, "round must be >= 1"),
    ({"events": [{"round": 2, "peer": 1, "kind": "join"}]}, "starts the run"),
    ({"events": [{"round": 2, "peer": 9, "kind": "crash"}]}, "out of range"),
    ({"events": [{"round": 2, "peer": 1, "kind": "explode"}]}, "kind"),
    ({"events": [{"round": 2, "peer": 1}]}, "{round, peer, kind"),
    ({"events": [{"round": 2, "peer": 1, "kind": "slow"}]}, "factor > 1"),
    ({"events": [{"round": 2, "peer": 1, "kind": "slow", "factor": 0.5}]}, "factor > 1"),
    ({"events": [{"round": 2, "peer": 1, "kind": "crash", "factor": 2}]}, "slow events only"),
    ({"events": [{"round": 2, "peer": 1, "kind": "crash"}, {"round": 4, "peer": 1, "kind": "crash"}]}, "not in the swarm"),
    ({"events": [{"round": 2, "peer": 5, "kind": "slow", "factor": 2}, {"round": 3, "peer": 5, "kind": "join"}]},
     "not in the swarm"),
    ({"slowdown": "fixed:2"}, "without stragglers"),
])
def test_a_bad_churn_table_is_one_clear_error_before_any_work(churn, needle):
    with pytest.raises(ConfigError, match=None) as err:
        gossamer.Scenario(**BASE, algorithms=("diloco",), churn=churn)
    assert needle in str(err.value)


def test_churn_refuses_algorithms_without_a_swarm_wide_round_and_audits():
    with pytest.raises(ConfigError, match="tau=0"):
        gossamer.Scenario(**BASE, algorithms=("streaming_diloco",), churn={"mtbf": 10})
    with pytest.raises(ConfigError, match="gossip has no swarm-wide round"):
        gossamer.Scenario(**BASE, algorithms=("diloco", "gossip"), churn={"mtbf": 10})
    with pytest.raises(ConfigError, match="audit"):
        gossamer.Scenario(**BASE, algorithms=("diloco",), churn={"mtbf": 10}, audit=1)


def test_a_scenario_file_churn_table_and_cli_flags(tmp_path):
    from gossamer.cli import main

    path = tmp_path / "s.toml"
    path.write_text('task = "digits"\nalgorithms = ["diloco"]\npeers = 4\nsteps = 24\ninner_steps = 4\n'
                    'compute_time = 0.05\nevals = 1\n[churn]\nstraggler_grace = 0.5\n'
                    'events = [{round = 2, peer = 1, kind = "crash"}]\n')
    out = tmp_path / "r.json"
    assert main(["simulate", str(path), "--stragglers", "0.2", "--slowdown", "fixed:20", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    c = run["churn"]
    assert {"round": 2, "peer": 1, "kind": "crash"} in c["events"]  # the file's schedule
    assert any(e["kind"] == "slow" and e["factor"] == 20 for e in c["events"])  # and the flags' stragglers
    assert Churn.parse({"events": [{"round": 1, "peer": 0, "kind": "leave"}]}).events == (ChurnEvent(1, 0, "leave"),)
    from gossamer.bench.churn import load_schedule
    events, settings = load_schedule(str(out))  # a results file gives bench churn its schedule and settings
    assert events == c["events"]
    assert (settings["peers"], settings["rounds"], settings["inner_steps"], settings["step_sleep"],
            settings["straggler_grace"], settings["algorithm"]) == (4, run["rounds"], 4, 0.05, 0.5, "diloco")

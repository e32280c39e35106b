"""Issue 14.3: one fault schedule, replayed in the simulator and in a real swarm on
loopback (a real coordinator and peers over TCP), commits the same rounds with the
same members and attempts, and ends in the same state, bit for bit."""

from __future__ import annotations

import pytest

from gossamer.bench.churn import DEFAULT_SCHEDULE, run_churn_replay
from gossamer.cli import main


@pytest.mark.timeout(300)
def test_a_schedule_commits_the_same_rounds_in_the_simulator_and_a_real_swarm():
    row = run_churn_replay(DEFAULT_SCHEDULE, peers=4, rounds=12, inner_steps=4, step_sleep=0.05, straggler_grace=1.0)
    sim = {r[0]: r for r in row["sim_rounds"]}
    assert sim[2][2] == 2, "the crash aborts round 2's first attempt"
    assert len(sim[3][1]) == 4 and len(sim[5][1]) == 3, "the joiner is in from round 3, the leaver out from round 5"
    assert len(sim[6][1]) == 2 and len(sim[9][1]) == 3, "the 16x straggler sits rounds 6-8 out and is back for 9"
    assert row["rounds_equal"], list(zip(row["sim_rounds"], row["real_rounds"]))
    assert row["hash_equal"], (row["sim_hash"], row["real_hash"])


@pytest.mark.timeout(300)
def test_a_joiner_that_fails_at_once_and_a_straggler_late_for_the_last_rounds():
    """Review of issue 14: a peer that joins and leaves in the same round stayed a member
    of the real swarm; a straggler that sat the last rounds out made the real swarm give
    up after 60 s (no swarm to rejoin). ddp (no inner steps) could not be replayed."""
    row = run_churn_replay([{"round": 3, "peer": 4, "kind": "join"}, {"round": 3, "peer": 4, "kind": "leave"},
                            {"round": 6, "peer": 3, "kind": "slow", "factor": 16.0}],
                           peers=4, rounds=8, inner_steps=4, step_sleep=0.05, straggler_grace=1.0)
    assert all(len(r[1]) == 4 for r in row["sim_rounds"][:6]) and len(row["sim_rounds"][6][1]) == 3
    assert row["rounds_equal"], list(zip(row["sim_rounds"], row["real_rounds"]))
    assert row["hash_equal"], (row["sim_hash"], row["real_hash"])
    ddp = run_churn_replay([{"round": 3, "peer": 1, "kind": "crash"}], algorithm="ddp", peers=3, rounds=6,
                           step_sleep=0.05, straggler_grace=1.0)
    assert ddp["rounds_equal"] and ddp["hash_equal"] and ddp["sim_rounds"][3][2] == 2


@pytest.mark.parametrize("schedule, needle", [
    ('[]', "empty"),
    ('[{"round": 40, "peer": 1, "kind": "crash"}]', "--rounds"),
    ('[{"round": 0, "peer": 1, "kind": "leave"}]', "round 0"),
    ('[{"round": 2, "peer": 7, "kind": "crash"}]', "out of range"),
    ('not json', "no such file"),
    ('{"runs": []}', "churn run"),
])
def test_bench_churn_refuses_a_bad_schedule_before_running_anything(schedule, needle, capsys):
    assert main(["bench", "churn", "--schedule", schedule]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err

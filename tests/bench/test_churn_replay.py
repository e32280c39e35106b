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


@pytest.mark.parametrize("schedule, needle", [
    ('[{"round": 0, "peer": 1, "kind": "leave"}]', "round 0"),
    ('[{"round": 2, "peer": 7, "kind": "crash"}]', "out of range"),
    ('not json', "no such file"),
    ('{"runs": []}', "churn run"),
])
def test_bench_churn_refuses_a_bad_schedule_before_running_anything(schedule, needle, capsys):
    assert main(["bench", "churn", "--schedule", schedule]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err

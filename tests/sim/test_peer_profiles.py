"""Heterogeneous peers in scenarios (peer_profiles: links and compute speeds),
the modelled coordinator, and their validation."""

from __future__ import annotations

import dataclasses

import pytest

from gossamer.errors import ConfigError
from gossamer.sim.runner import run_algorithm
from gossamer.sim.scenario import Scenario

BASE = dict(task="quadratic", algorithms=("ddp",), peers=4, steps=6, compute_time=0.1, link="1gbit,1ms", evals=1)


def run(**kw):
    sc = Scenario(**{**BASE, **kw})
    return run_algorithm(sc, sc.algorithms[0])


def test_a_slow_peer_makes_every_round_wait_for_it():
    base = run()
    slow = run(peer_profiles=[{"ranks": [2], "compute_scale": 3.0}])
    # ddp syncs after every step: each of the 6 rounds waits 2 x 0.1 s more for the straggler
    assert slow.sim_time_s - base.sim_time_s == pytest.approx(6 * 0.2, rel=1e-4)
    assert slow.extra["payload_bytes_sent_by_peer"] == base.extra["payload_bytes_sent_by_peer"]  # only times change
    assert slow.extra["final_state_hash"] == base.extra["final_state_hash"]


def test_a_slow_link_on_one_peer_slows_the_all_reduce():
    big = dict(task="digits", steps=3, link="100mbit,5ms")
    base = run(**big)
    slow = run(**big, peer_profiles=[{"count": 1, "link": "1mbit/100mbit,5ms"}])
    assert slow.sim_time_s > 2 * base.sim_time_s
    assert slow.extra["payload_bytes_sent_by_peer"] == base.extra["payload_bytes_sent_by_peer"]


def test_coordinator_adds_two_round_trips_per_round():
    base = run()
    ctl = run(coordinator="1gbit,1ms")
    # ready -> start, done -> decision: 4 one-way latencies of 1 ms per round (the messages themselves take microseconds)
    assert ctl.sim_time_s - base.sim_time_s == pytest.approx(6 * 4 * 0.001, rel=2e-2)
    assert ctl.extra["payload_bytes_sent_by_peer"] == base.extra["payload_bytes_sent_by_peer"]


def test_round_overhead_is_charged_once_per_round():
    base = run()
    slow = run(round_overhead=0.05)
    assert slow.sim_time_s - base.sim_time_s == pytest.approx(6 * 0.05, rel=1e-6)
    with pytest.raises(ConfigError, match="round_overhead must be a finite number of seconds >= 0"):
        Scenario(**BASE, round_overhead=-1)


def test_heterogeneous_runs_are_deterministic():
    kw = dict(task="digits", steps=4, algorithms=("diloco",), inner_steps=2, link="20mbit/100mbit,10ms",
              coordinator="100mbit,20ms", peer_profiles=[{"fraction": 0.5, "link": "5mbit/50mbit,40ms", "compute_scale": 1.5}])
    a, b = run(**kw), run(**kw)
    assert a.sim_time_s == b.sim_time_s
    assert a.extra["payload_bytes_sent_by_peer"] == b.extra["payload_bytes_sent_by_peer"]


def test_profiles_are_assigned_to_ranks():
    sc = Scenario(**{**BASE, "peers": 8}, peer_profiles=[
        {"ranks": [7], "link": "1mbit,100ms"},
        {"count": 2, "compute_scale": 2},
        {"fraction": 0.25, "link": "10mbit/100mbit,20ms"},
    ])
    assert [str(sc.peer_link(r)) for r in range(8)] == [
        "1gbit,1ms", "1gbit,1ms", "10mbit/100mbit,20ms", "10mbit/100mbit,20ms", "1gbit,1ms", "1gbit,1ms", "1gbit,1ms",
        "1mbit,100ms"]
    assert [sc.compute_scale(r) for r in range(8)] == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_profiles_and_coordinator_from_toml(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('''task = "quadratic"
peers = 4
link = "100mbit/1gbit,20ms"
coordinator = "1gbit,5ms"
[[peer_profiles]]
count = 1
link = "10mbit/50mbit,60ms"
compute_scale = 4.0
''')
    sc = Scenario.from_toml(path)
    assert str(sc.peer_link(0)) == "10mbit/50mbit,60ms" and sc.compute_scale(0) == 4.0
    assert str(sc.peer_link(1)) == "100mbit/1gbit,20ms" and sc.compute_scale(3) == 1.0
    assert str(sc.coordinator_spec) == "1gbit,5ms"
    assert list(sc.as_dict()["peer_profiles"]) == [{"count": 1, "link": "10mbit/50mbit,60ms", "compute_scale": 4.0}]


@pytest.mark.parametrize("profiles, words", [
    ({"count": 1}, "must be a list of tables"),
    ([{"link": "1mbit,1ms"}], "exactly one of count, fraction or ranks"),
    ([{"count": 1, "ranks": [0]}], "exactly one of count, fraction or ranks"),
    ([{"count": 0}], "count must be a positive integer"),
    ([{"fraction": 1.5}], "fraction must be a number in (0, 1]"),
    ([{"fraction": 0.1}], "is no peer"),
    ([{"ranks": [4]}], "out of range"),
    ([{"ranks": [1, 1]}], "listed twice"),
    ([{"ranks": []}], "non-empty list"),
    ([{"count": 1, "link": "fast"}], "peer_profiles[0]: bad link spec 'fast'"),
    ([{"count": 1, "compute_scale": 0}], "compute_scale must be a finite number > 0"),
    ([{"count": 1, "speed": 2}], "unknown key(s) speed in peer_profiles[0]"),
    ([{"ranks": [0]}, {"ranks": [0, 1]}], "rank 0 is already in peer_profiles[0]"),
    ([{"count": 3}, {"count": 2}], "peer_profiles[1] wants 2 peer(s) but only 1"),
    (["fast"], "peer_profiles[0] must be a table"),
])
def test_bad_profiles_are_one_line_config_errors(profiles, words):
    with pytest.raises(ConfigError) as err:
        Scenario(**BASE, peer_profiles=profiles)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_coordinator_is_a_config_error():
    with pytest.raises(ConfigError, match="bad link spec '20ms'"):
        Scenario(**BASE, coordinator="20ms")
    with pytest.raises(ConfigError, match="coordinator must be a link spec string"):
        Scenario(**BASE, coordinator=20)


def test_default_scenario_has_no_profiles_and_no_coordinator():
    sc = Scenario(**BASE)
    assert sc.peer_profiles == () and sc.coordinator is None and sc.coordinator_spec is None
    assert dataclasses.replace(sc, peers=5).compute_scale(4) == 1.0

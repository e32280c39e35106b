"""Reputation: strikes in a window, proofs at once, the probation cap, state."""

from __future__ import annotations

import json

import pytest

from gossamer.errors import ConfigError
from gossamer.verify.reputation import Exclusion, Reputation

PEERS = [f"p{i}" for i in range(10)]


def test_one_bad_round_is_forgiven_two_in_the_window_exclude() -> None:
    rep = Reputation(strikes=2, window=5)
    assert rep.observe(1, {"p3": ["cosine -0.93 < -0.1"]}, PEERS) == []
    for r in (2, 3, 4):
        assert rep.observe(r, {}, PEERS) == []
    assert not rep.is_excluded("p3")
    got = rep.observe(5, {"p3": ["distance ratio 4.1 > 3"]}, PEERS)
    assert got == [
        Exclusion(
            peer="p3",
            round=5,
            rule="strikes",
            evidence=((1, ("cosine -0.93 < -0.1",)), (5, ("distance ratio 4.1 > 3",))),
        )
    ]
    assert rep.is_excluded("p3") and rep.decisions == tuple(got)


def test_strikes_outside_the_window_do_not_count() -> None:
    rep = Reputation(strikes=2, window=5)
    rep.observe(1, {"p3": ["zero update"]}, PEERS)
    for r in range(2, 7):  # rounds 2..6: round 1 falls out of p3's last 5
        rep.observe(r, {}, PEERS)
    assert rep.observe(7, {"p3": ["zero update"]}, PEERS) == []
    assert not rep.is_excluded("p3")
    assert rep.observe(8, {"p3": ["zero update"]}, PEERS)[0].evidence == (
        (7, ("zero update",)),
        (8, ("zero update",)),
    )


def test_window_counts_the_peers_observed_rounds_not_calendar_rounds() -> None:
    rep = Reputation(strikes=2, window=2)
    rep.observe(1, {"p3": ["zero update"]}, PEERS)
    for r in range(2, 50):  # p3 absent: its window is unchanged
        rep.observe(r, {}, [p for p in PEERS if p != "p3"])
    assert [e.peer for e in rep.observe(50, {"p3": ["zero update"]}, PEERS)] == ["p3"]


def test_proof_excludes_at_once() -> None:
    rep = Reputation()
    got = rep.observe(1, {"p1": ["proof: equivocated"], "p2": ["proof: tampered chunk 3", "cosine -1.00 < -0.1"]}, PEERS)
    assert [(e.peer, e.rule) for e in got] == [("p1", "proof"), ("p2", "proof")]
    assert got[1].evidence == ((1, ("proof: tampered chunk 3", "cosine -1.00 < -0.1")),)


def test_excluded_stays_excluded_and_is_not_decided_again() -> None:
    rep = Reputation()
    rep.observe(1, {"p1": ["proof: equivocated"]}, PEERS)
    assert rep.observe(2, {"p1": ["proof: equivocated"]}, PEERS) == []
    assert rep.is_excluded("p1") and len(rep.decisions) == 1
    assert "p1" not in rep.contributors(PEERS) and "p1" not in rep.voters(PEERS)


def test_reasons_must_be_a_sequence_and_rounds_may_repeat() -> None:
    rep = Reputation()
    with pytest.raises(ConfigError):
        rep.observe(4, {"p1": "zero update"}, PEERS)  # a string, not a sequence of reasons
    # a rollback replays round 4: each call is a new observation
    rep.observe(4, {"p1": ["zero update"]}, PEERS)
    assert [e.peer for e in rep.observe(4, {"p1": ["zero update"]}, PEERS)] == ["p1"]


def test_convict_excludes_at_once_and_only_once() -> None:
    rep = Reputation()
    ex = rep.convict("p4", 7, "equivocated in round 7")
    assert ex == Exclusion(peer="p4", round=7, rule="proof", evidence=((7, ("equivocated in round 7",)),))
    assert rep.is_excluded("p4") and rep.convict("p4", 8, "again") is None
    assert rep.decisions == (ex,)
    assert rep.observe(7, {"p4": ["zero update"]}, PEERS) == []


def test_present_advances_age_and_ends_probation() -> None:
    rep = Reputation(probation_rounds=3)
    for r in range(1, 3):
        rep.observe(r, {}, ["a"])
    assert rep.age("a") == 2 and rep.on_probation("a")
    rep.observe(3, {}, ["a", "b"])
    assert rep.age("a") == 3 and not rep.on_probation("a") and rep.age("b") == 1


def established(n: int = 10) -> tuple[Reputation, list[str]]:
    rep = Reputation()
    honest = [f"h{i}" for i in range(n)]
    for r in range(1, 6):
        rep.observe(r, {}, honest)
    return rep, honest


def test_thousand_fresh_ids_get_two_slots_next_to_ten_established() -> None:
    rep, honest = established()
    sybils = [f"s{i:04d}" for i in range(1000)]
    candidates = honest + sybils
    admitted = rep.contributors(candidates)
    assert admitted == honest + ["s0000", "s0001"]  # max(1, floor(0.25 * 10)) = 2
    assert rep.voters(candidates) == honest
    # the Sybils keep at most 2 slots per round while they are on probation
    for r in range(6, 11):
        admitted = rep.contributors(candidates)
        assert sum(p.startswith("s") for p in admitted) <= 2
        rep.observe(r, {}, admitted)


def test_the_cap_is_at_least_one() -> None:
    rep, honest = established(2)
    assert rep.contributors(honest + ["x", "y"]) == honest + ["x"]


def test_new_swarm_admits_everyone_and_everyone_votes() -> None:
    rep = Reputation()
    fresh = [f"n{i}" for i in range(7)]
    assert rep.contributors(fresh) == fresh and rep.voters(fresh) == fresh


def test_contributors_keep_the_given_order_and_drop_repeats() -> None:
    rep, honest = established(4)
    assert rep.contributors(["x", "h2", "h0", "x", "h1", "y", "h3"]) == ["x", "h2", "h0", "h1", "h3"]


def test_state_dict_round_trip_through_json() -> None:
    rep = Reputation(strikes=2, window=4, probation_rounds=3, probation_share=0.5)
    rep.observe(1, {"p1": ["cosine -0.50 < -0.1"], "p2": ["proof: equivocated"]}, PEERS)
    rep.observe(2, {}, PEERS[:6])
    state = json.loads(json.dumps(rep.state_dict()))
    other = Reputation(strikes=2, window=4, probation_rounds=3, probation_share=0.5)
    other.load_state_dict(state)
    assert other.state_dict() == rep.state_dict()
    assert other.decisions == rep.decisions and other.is_excluded("p2")
    # both continue identically
    a = rep.observe(3, {"p1": ["zero update"]}, PEERS)
    b = other.observe(3, {"p1": ["zero update"]}, PEERS)
    assert a == b and [e.peer for e in a] == ["p1"]
    assert other.contributors(PEERS + ["new"]) == rep.contributors(PEERS + ["new"])


def test_load_state_dict_refuses_other_config_and_garbage() -> None:
    state = Reputation().state_dict()
    with pytest.raises(ConfigError):
        Reputation(window=9).load_state_dict(state)
    with pytest.raises(ConfigError):
        Reputation().load_state_dict({"version": 1})


def test_bad_config_is_refused() -> None:
    with pytest.raises(ConfigError):
        Reputation(strikes=0)
    with pytest.raises(ConfigError):
        Reputation(strikes=6, window=5)
    with pytest.raises(ConfigError):
        Reputation(probation_share=-0.1)

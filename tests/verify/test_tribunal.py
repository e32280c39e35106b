"""The tribunal judges audited attempts by majority and signatures: liars are convicted, honest peers never."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comm"))
from test_audit import inputs_for, make_group, run_all  # noqa: E402

from gossamer.comm.audit import AuditFailed, verify_statement  # noqa: E402
from gossamer.comm.byzantine import make_behaviour  # noqa: E402
from gossamer.verify.tribunal import judge  # noqa: E402


def sim_verify(signer, ctx, st):
    from gossamer.comm.audit import KeyBook

    book = KeyBook.simulated("p0", [f"p{i}" for i in range(10)], 0)
    return verify_statement(signer, ctx, st, owns=book.owns)


def report_of(comm, out):
    o = out.outcome if isinstance(out, AuditFailed) else comm.audits[-1]
    return {"bad": {p: list(w) for p, w in o.bad.items()}, "proven": dict(o.proven), "views": dict(o.views),
            "ctx": o.ctx, "statements": o.statements}


def attempt(comms, r, liar=None, lie=None):
    for c in comms:
        c.round = r
        c.audits.clear()
    outs = run_all(comms, inputs_for(len(comms), seed=r))
    return {c.peer_id: report_of(c, o) for c, o in zip(comms, outs)}


def test_equivocating_owner_is_proven_by_its_own_signatures():
    n = 6
    comms = make_group(n, aggregator="cclip")
    comms[1].behaviour = make_behaviour("equivocate")
    reports = attempt(comms, 0)
    voters = [c.peer_id for c in comms]
    j = judge(reports, voters, verify=sim_verify)
    assert "p1" in j.views_differ
    assert set(j.proven) == {"p1"}, j.proven
    assert "equivocated" in j.proven["p1"]


def test_honest_attempt_has_no_verdicts_and_one_view():
    comms = make_group(6, aggregator="cclip")
    reports = attempt(comms, 0)
    j = judge(reports, [c.peer_id for c in comms], hashes={p: "h" for p in reports}, verify=sim_verify)
    assert not j.proven and not j.bad and not j.views_differ


def test_liars_cannot_frame_an_honest_peer():
    comms = make_group(7, aggregator="cclip")
    reports = attempt(comms, 0)
    voters = [c.peer_id for c in comms]
    for liar in ("p4", "p5", "p6"):  # three of seven claim p0 is proven guilty and bad
        reports[liar]["proven"] = {"p0": "tampered (a lie)"}
        reports[liar]["bad"] = {"p0": ["a lie"]}
    j = judge(reports, voters, verify=sim_verify)
    assert "p0" not in j.proven and "p0" not in j.bad
    for liar in ("p4", "p5", "p6"):  # their false accusations are held against them
        assert liar in j.bad


def test_a_forged_statement_counts_against_its_reporter():
    comms = make_group(5, aggregator="cclip")
    comms[2].behaviour = make_behaviour("equivocate")
    reports = attempt(comms, 0)
    st = reports["p0"]["statements"]["p2"][0]
    reports["p0"]["statements"]["p2"][0] = [st[0], st[1], st[2], "00" * 64]
    j = judge(reports, [c.peer_id for c in comms], verify=sim_verify)
    assert "p0" in j.bad and "p0" not in j.proven


@pytest.mark.parametrize("hashlie", [True])
def test_a_hash_liar_is_marked_bad(hashlie):
    comms = make_group(5)
    reports = attempt(comms, 0)
    hashes = {p: "agreed" for p in reports}
    hashes["p3"] = "a lie"
    j = judge(reports, list(reports), hashes=hashes, verify=sim_verify)
    assert set(j.bad) == {"p3"}


@pytest.mark.parametrize("attack", ["equivocate", "tamper", "statlie", "falseaccuse"])
def test_over_many_rounds_only_the_liar_is_ever_convicted(attack):
    n = 7
    comms = make_group(n, aggregator="cclip")
    liar = 3
    comms[liar].behaviour = make_behaviour(attack)
    convicted = 0
    for r in range(8):
        reports = attempt(comms, r)
        j = judge(reports, [c.peer_id for c in comms], verify=sim_verify)
        assert set(j.proven) <= {f"p{liar}"}, (r, j.proven)
        assert not set(j.bad) - {f"p{liar}"}, (r, j.bad)
        convicted += bool(j.proven)
    assert convicted >= 1


def test_the_first_reports_alone_cannot_convict():
    """A majority is of every voter of the attempt, not of those who reported so far."""
    voters = [f"p{i}" for i in range(5)]
    early = {"p0": {"proven": {"p3": "tampered"}, "blame": "p3", "bad": {"p3": ["x"]}},
             "p1": {"proven": {"p3": "tampered"}, "blame": "p3", "bad": {"p3": ["x"]}}}
    j = judge(early, voters, complete=False)
    assert not j.proven and not j.bad
    early["p2"] = dict(early["p1"])
    j = judge(early, voters, complete=False)
    assert set(j.proven) == {"p3"} and "p3" in j.bad

"""Judging one attempt of an audited round from what every member reports.

Pure functions, shared by the swarm's coordinator and the simulator so that the
same run reaches the same verdicts in both.

Input: per reporter, the dict its audited all-reduces produced
(``comm.audit.AuditOutcome``, merged over the attempt by the runtime)::

    {"bad": {peer: [reason, ...]},      # contribution scores judged bad
     "proven": {peer: reason},           # offences proven by recomputation
     "views": {signer: hex},             # hash of every statement received per signer
     "statements": {signer: [[kind, H(body), key, sig], ...]},
     "blame": [peer, ...] | absent}      # whom it was waiting for when the attempt timed out

and ``voters``: the members whose word counts (established, not on probation).

Rules (``judge``):

- *Majority, never one voice.* A peer is found bad, proven guilty or blamed
  for a stall only when more than half of the voters other than itself say
  so. Honest members compute identical scores and verdicts from identical
  signed data, so an honest majority always agrees, and up to ``f <
  voters/2`` liars can neither frame an honest peer nor clear a guilty one.
- *Lying reporters.* Every honest member reports the same ``bad`` set; a
  reporter whose set differs from the majority's outcome lied about others'
  scores and is itself marked bad when it accuses a peer the majority found
  fine (``scorelie``; missing a bad peer is not held against a reporter:
  a joiner's score history is shorter). A state hash that differs
  from the majority's in an audited round (where honest hashes agree bit
  for bit) is marked the same way (``hashlie``).
- *Equivocation.* When views of a signer differ, the statements decide: two
  statements of that signer with the same ``ctx`` and kind but different
  body digests, both with valid signatures, prove it sent two versions
  (``comm.audit.verify_statement``). A statement that does not verify
  proves the reporter forged it.

The desk (``TrustDesk``): per attempt a runtime calls ``open(epoch, round,
group)``, then ``hear(epoch, peer, audit, hash)`` for each member's report
(also after an abort), and ``conclude(epoch)`` once the attempt committed.
Proofs exclude at once; score strikes go to ``verify.reputation.Reputation``
(strikes in a window) at the commit; every exclusion calls ``exclude(peer,
reason, record)`` exactly once and is kept in ``decisions``.
``views_differ(epoch)`` tells the runtime not to commit an attempt whose
members saw different signed statements. The swarm's coordinator and the
simulator both use it, so the same reports give the same exclusions.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .scores import combine_reports


@dataclass
class Judgement:
    """Verdicts of one attempt. ``bad``: a strike each (reasons); ``proven``: exclusion now."""

    bad: dict[str, tuple[str, ...]] = field(default_factory=dict)
    proven: dict[str, str] = field(default_factory=dict)
    views_differ: tuple[str, ...] = ()


def _carried(claims: Mapping[str, set[str]], voters: Sequence[str]) -> list[str]:
    """The peers a strict majority of their eligible voters accuse (``scores.combine_reports``)."""
    verdicts = combine_reports({r: dict.fromkeys(peers, True) for r, peers in claims.items()}, voters=voters)
    return [peer for peer, bad in verdicts.items() if bad]


def judge(reports: Mapping[str, Mapping[str, Any]], voters: Sequence[str], *,
          hashes: Mapping[str, str] | None = None,
          verify: Callable[[str, str, Sequence[str]], bool] | None = None, complete: bool = True) -> Judgement:
    """The verdicts of one attempt (see the module docstring). ``hashes``: the state hash each
    reporter reported (committed attempts only); ``verify(signer, ctx, statement)`` checks a
    statement's signature (``comm.audit.verify_statement``). ``complete=False`` while reports are
    still arriving: liars about scores are not judged then (the majority is not known yet)."""
    out = Judgement()
    voters = list(voters)  # a majority of all voters of the attempt, whether they reported yet or not
    # proven offences: a majority of voters must have proven the same peer guilty
    proven_claims = {r: set(rep.get("proven", {})) for r, rep in reports.items()}
    for peer in _carried(proven_claims, voters):
        reasons = Counter(str(reports[v]["proven"][peer]) for v in voters if peer in reports.get(v, {}).get("proven", {}))
        out.proven[peer] = "proof: " + reasons.most_common(1)[0][0]
    # stalls: a majority of voters waited for the same member when the attempt timed out
    blame_claims = {r: ({rep["blame"]} if isinstance(rep.get("blame"), str) else
                        {b for b in rep.get("blame") or () if isinstance(b, str)})
                    for r, rep in reports.items() if rep.get("blame")}
    for peer in _carried(blame_claims, voters):
        count = sum(1 for v in voters if v != peer and peer in blame_claims.get(v, ()))
        out.bad[peer] = out.bad.get(peer, ()) + (f"stalled the collective ({count} of {len(voters)} voters waited for it)",)
    # contribution scores
    bad_claims = {r: set(rep.get("bad", {})) for r, rep in reports.items()}
    found = set(_carried(bad_claims, voters))
    for peer in sorted(found):
        reasons: Counter[str] = Counter()
        for v in voters:
            reasons.update(str(w) for w in reports.get(v, {}).get("bad", {}).get(peer, ()))
        out.bad[peer] = out.bad.get(peer, ()) + tuple(w for w, _ in reasons.most_common(3))
    for reporter in voters if complete else ():
        # accusing a peer the majority found fine is a lie (honest members compute the same
        # scores); missing one is not held against anyone (a joiner's history is shorter)
        framed = sorted(bad_claims.get(reporter, set()) - {reporter} - found)
        if framed:
            out.bad[reporter] = out.bad.get(reporter, ()) + (f"accused peers the majority found fine ({', '.join(framed[:4])})",)
    if hashes:
        tally = Counter(hashes[v] for v in voters if v in hashes)
        if tally:
            agreed, n = tally.most_common(1)[0]
            if 2 * n > len([v for v in voters if v in hashes]):
                for reporter, h in hashes.items():
                    if h != agreed:
                        out.bad[reporter] = out.bad.get(reporter, ()) + ("reported a state hash the majority contradicts",)
    # views and equivocation
    signers = set().union(*(rep.get("views", {}).keys() for rep in reports.values())) if reports else set()
    differ = sorted(s for s in signers if len({rep.get("views", {}).get(s) for rep in reports.values()
                                               if s in rep.get("views", {})}) > 1)
    out.views_differ = tuple(differ)
    if differ and verify is not None:
        ctxs = {str(rep.get("ctx", "")) for rep in reports.values()}
        for signer in differ:
            seen: dict[tuple[str, str], str] = {}
            for reporter, rep in reports.items():
                ctx = str(rep.get("ctx", ""))
                for st in rep.get("statements", {}).get(signer, []):
                    if not (isinstance(st, (list, tuple)) and len(st) == 4):
                        continue
                    if not verify(signer, ctx, st):
                        if reporter in voters and reporter != signer:
                            out.bad[reporter] = out.bad.get(reporter, ()) + (f"reported a statement of {signer} that does not verify",)
                        continue
                    slot = (ctx, str(st[0]))
                    if slot in seen and seen[slot] != st[1]:
                        out.proven[signer] = f"proof: equivocated (two signed {st[0]} statements for one operation)"
                    seen.setdefault(slot, str(st[1]))
        del ctxs
    return out


KEEP_TRIALS = 16



class TrustDesk:
    """See the module docstring ("The desk")."""

    def __init__(self, exclude: Callable[[str, str, dict[str, Any]], None], *,
                 verify: Callable[[str, str, Sequence[str]], bool] | None = None,
                 reputation: Any | None = None) -> None:
        from .reputation import Reputation  # noqa: PLC0415

        self.reputation = reputation or Reputation()
        self.verify = verify
        self.exclude = exclude
        self.trials: dict[int, dict[str, Any]] = {}
        self.decisions: list[dict[str, Any]] = []

    def open(self, epoch: int, round_: int, group: Sequence[str]) -> None:
        self.trials[epoch] = {"round": round_, "group": tuple(group), "voters": list(self.reputation.voters(list(group))),
                              "reports": {}, "hashes": {}, "done": set()}
        for old in [e for e in self.trials if e < epoch - KEEP_TRIALS]:
            del self.trials[old]

    def audited(self, epoch: int) -> bool:
        t = self.trials.get(epoch)
        return bool(t and t["reports"])

    def hear(self, epoch: int, peer: str, audit: dict[str, Any], state_hash: str | None = None) -> None:
        t = self.trials.get(epoch)
        if t is None or peer not in t["group"] or not isinstance(audit, dict):
            return
        t["reports"][peer] = audit
        if state_hash is not None:
            t["hashes"][peer] = state_hash
        j = self._judge(t, final=False)
        self._apply_proofs(t, j)
        for p, why in j.bad.items():  # a stall blamed by a majority is a strike now (no commit may come)
            stalls = tuple(w for w in why if w.startswith("stalled"))
            if stalls and (p, "stall") not in t["done"] and not self.reputation.is_excluded(p):
                t["done"].add((p, "stall"))
                for ex in self.reputation.observe(t["round"], {p: stalls}, []):
                    self._excluded(ex.peer, ex.round, ex.rule, list(ex.evidence))

    def views_differ(self, epoch: int) -> tuple[str, ...]:
        t = self.trials.get(epoch)
        if t is None or not t["reports"]:
            return ()
        return self._judge(t, final=False).views_differ

    def conclude(self, epoch: int) -> None:
        """The attempt committed: score strikes, hash and score liars, pending stalls."""
        t = self.trials.get(epoch)
        if t is None or not t["reports"]:
            return
        j = self._judge(t, final=True)
        self._apply_proofs(t, j)
        bad = {p: why for p, why in j.bad.items() if not all(w.startswith("stalled") for w in why)}
        bad = {p: w for p, w in bad.items() if not self.reputation.is_excluded(p)}
        for ex in self.reputation.observe(t["round"], bad, list(t["group"])):
            self._excluded(ex.peer, ex.round, ex.rule, list(ex.evidence))

    # ------------------------------------------------------------------ internals
    def _judge(self, t: dict[str, Any], *, final: bool) -> Judgement:
        return judge(t["reports"], t["voters"], hashes=t["hashes"] if final else None, verify=self.verify, complete=final)

    def _apply_proofs(self, t: dict[str, Any], j: Judgement) -> None:
        for peer, reason in j.proven.items():
            if peer in t["done"] or self.reputation.is_excluded(peer):
                continue
            t["done"].add(peer)
            ex = self.reputation.convict(peer, t["round"], reason)
            if ex is not None:
                self._excluded(ex.peer, ex.round, ex.rule, list(ex.evidence))

    def _excluded(self, peer: str, round_: int, rule: str, evidence: list[Any]) -> None:
        lines = []
        for item in evidence:
            r, reasons = item if isinstance(item, (tuple, list)) and len(item) == 2 else (round_, (str(item),))
            lines.append(f"round {r}: " + "; ".join(str(w) for w in reasons)[:300])
        text = " | ".join(lines)
        accuser = text.rsplit("(shown by ", 1)[1].split(")", 1)[0] if "(shown by " in text else None
        record = {"peer": peer, "round": round_, "rule": rule, "evidence": lines, "accuser": accuser}
        self.decisions.append(record)
        logging.getLogger(__name__).warning("excluded peer %s at round %d (%s): %s", peer, round_, rule, "; ".join(record["evidence"])[:400])
        self.exclude(peer, f"excluded from the swarm at round {round_} ({rule}): {text}"[:500], record)

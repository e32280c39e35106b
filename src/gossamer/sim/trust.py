"""The simulator's stand-in for the coordinator's trust desk: attempts, verdicts, exclusion.

Contract: with ``Scenario.audit > 0`` every simulated peer runs the audited
all-reduce (``comm/audit.py``) with deterministic simulated keys, and its
sync goes through ``SimTrust.attempt``: every member of the current group
reports its audit outcome (``comm.audit.audit_report``) and state hash; once
all have reported, the same ``verify.tribunal.TrustDesk`` the swarm's
coordinator uses judges them (majority of voters, signed statements). The
attempt commits, or (a proof, differing views) is retried by every member
from its state before the attempt; excluded peers leave the group before the
next attempt, and their loops stop. Swarm-level lies (``hashlie``,
``scorelie``) are told here as the swarm peer tells them. So the same seeded
scenario reaches the same exclusions in the simulator and over TCP (tested
in tests/sim/test_trust.py).

Not modelled: deadlines (``withhold`` needs real time: refused by the
scenario), state transfer to joiners (no churn in the simulator).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from ..comm.audit import KeyBook, verify_statement
from ..verify.tribunal import TrustDesk


class Excluded(Exception):
    """This simulated peer was excluded; its round loop ends."""


class SimTrust:
    def __init__(self, ids: Sequence[str], *, seed: int, lies: dict[str, str] | None = None, trace: Any = None) -> None:
        self.group = list(ids)
        self.trace = trace  # a trace.TraceWriter: exclusions and aborts go there, as the coordinator's do
        self.lies = dict(lies or {})
        book = KeyBook.simulated(ids[0], ids, seed)
        self.desk = TrustDesk(self._exclude, verify=lambda s, c, st: verify_statement(s, c, st, owns=book.owns))
        self.excluded: dict[str, int] = {}
        self.epoch = 1
        self.round = 0
        self._reports: dict[str, tuple[dict[str, Any], str | None]] = {}
        self._decided: asyncio.Future[str] | None = None
        self.desk.open(self.epoch, self.round, self.group)
        self.aborts = 0

    def _exclude(self, peer: str, reason: str, record: dict[str, Any]) -> None:
        self.excluded[peer] = int(record["round"])
        if self.trace is not None:
            self.trace.record("exclude", round=int(record["round"]), peer=peer, other=record.get("accuser"),
                              rule=record["rule"], evidence=record["evidence"])

    async def attempt(self, peer: str, report: dict[str, Any], state_hash: str | None) -> tuple[str, list[str], int]:
        """Report one attempt; returns (decision, next group, next epoch) once every member reported.
        ``decision``: ``commit``, ``retry`` or ``excluded`` (for this peer)."""
        if self.lies.get(peer) == "scorelie":
            report = dict(report, bad={p: ["framed by a scorelie attacker"] for p in self.group if p != peer})
        if state_hash is not None and self.lies.get(peer) == "hashlie":
            state_hash = hashlib.blake2b(f"lie {self.round} {self.epoch}".encode(), digest_size=32).hexdigest()
        if self._decided is None or self._decided.done():
            self._decided = asyncio.get_running_loop().create_future()
        decided = self._decided
        self._reports[peer] = (report, state_hash)
        self.desk.hear(self.epoch, peer, report, state_hash)
        if all(p in self._reports for p in self.group):
            decided.set_result(self._decide())
        decision = await asyncio.shield(decided)
        if peer in self.excluded:
            return "excluded", self.group, self.epoch
        return decision, self.group, self.epoch

    def _decide(self) -> str:
        ok = all(h is not None for _, h in self._reports.values())
        differ = self.desk.views_differ(self.epoch)
        decision = "commit" if ok and not differ else "retry"
        if decision == "commit":
            self.desk.conclude(self.epoch)
            self.round += 1
        else:
            self.aborts += 1
            if self.trace is not None:
                proven = sorted({p for rep, _ in self._reports.values() for p in rep.get("proven", {})})
                reason = ("proven misbehaviour: " + ", ".join(proven)) if proven else \
                    (f"members saw different signed statements from {', '.join(differ)}" if differ else "a member failed")
                self.trace.record("abort", round=self.round, peer=proven[0] if proven else None, reason=reason,
                                  attempt=self.epoch, proven=proven)
        self._reports = {}
        self.group = [p for p in self.group if p not in self.excluded]
        self.epoch += 1
        self.desk.open(self.epoch, self.round, self.group)
        return decision

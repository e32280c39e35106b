"""Reputation: who is excluded, who may contribute, who may vote.

Pure bookkeeping (no clocks, no sockets, no randomness): the same calls in the
same order give the same decisions, and :meth:`Reputation.state_dict` /
:meth:`Reputation.load_state_dict` carry the whole state as JSON-able data so
the coordinator can persist it.

Input, once per round: ``bad``, the peers found
bad this round (already combined across reporters, see
:func:`gossamer.verify.scores.combine_reports`) with their reasons, and
``present``, the peers that took part: pass the peers that contributed (the
:meth:`Reputation.contributors` admitted and that delivered), not every
connected candidate, or waiting Sybils would age out of probation unseen.
Each call is one observation; ``round`` is a label recorded in the evidence
(it may repeat, e.g. after the swarm rolled back to an older checkpoint).
:meth:`Reputation.convict` records a proven offence outside ``observe``.

Exclusion rules (an excluded peer stays excluded; every decision is kept as
an :class:`Exclusion` record in :attr:`Reputation.decisions`):

* ``"proof"``: a reason starting with ``"proof:"`` (a verifiable offence,
  e.g. ``"proof: equivocated"``, ``"proof: tampered chunk 3"``) excludes the
  peer at once;
* ``"strikes"``: a peer found bad in at least ``strikes`` of its last
  ``window`` observed rounds (the rounds it was present or found bad in) is
  excluded. Defaults 2 of 5: one noisy round is forgiven, a pattern is not.
  The evidence is the reasons of the bad rounds inside the window.

Probation (against Sybils): a peer's *age* is the number of observed rounds
it was present in; with ``age < probation_rounds`` it is on probation.
:meth:`Reputation.contributors` admits, in the given (seniority) order, every
established candidate and at most
``max(1, floor(probation_share * n_established))`` probationary ones, so
1,000 fresh keys next to 10 established honest peers get 2 slots a round; a
new swarm with no established peer admits everyone. :meth:`Reputation.voters`
is the established candidates (all of them when none is established).
Limitation: a Sybil that behaves for ``probation_rounds`` contributed rounds
becomes established; the cap bounds how fast such peers can accumulate age
(at most ``cap`` probationary contributors a round), it does not stop
patient, well-behaved ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gossamer.errors import ConfigError

__all__ = ["PROOF_PREFIX", "Exclusion", "Reputation"]

#: Reasons starting with this are proven offences: exclusion at once.
PROOF_PREFIX = "proof:"

_STATE_VERSION = 1


@dataclass(frozen=True)
class Exclusion:
    """One exclusion decision.

    ``rule`` is ``"proof"`` or ``"strikes"``; ``evidence`` holds the
    ``(round, reasons)`` pairs that counted, oldest first.
    """

    peer: str
    round: int
    rule: str
    evidence: tuple[tuple[int, tuple[str, ...]], ...]


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"Reputation: {name} must be an int >= {low}, got {value!r}")
    return value


class Reputation:
    """Strikes, proofs and probation for one swarm (see the module docstring)."""

    def __init__(
        self,
        *,
        strikes: int = 2,
        window: int = 5,
        probation_rounds: int = 5,
        probation_share: float = 0.25,
    ) -> None:
        self.strikes = _int(strikes, "strikes", 1)
        self.window = _int(window, "window", 1)
        if self.strikes > self.window:
            raise ConfigError(f"Reputation: strikes ({strikes}) must be <= window ({window})")
        self.probation_rounds = _int(probation_rounds, "probation_rounds", 0)
        if isinstance(probation_share, bool) or not (
            isinstance(probation_share, (int, float)) and 0.0 <= probation_share and math.isfinite(probation_share)
        ):
            raise ConfigError(f"Reputation: probation_share must be a finite float >= 0, got {probation_share!r}")
        self.probation_share = float(probation_share)
        self._last_round: int | None = None
        self._age: dict[str, int] = {}
        # per peer: its last `window` observed rounds, (round, reasons or None when not bad)
        self._history: dict[str, list[tuple[int, tuple[str, ...] | None]]] = {}
        self._excluded: dict[str, Exclusion] = {}
        self._decisions: list[Exclusion] = []

    # ----------------------------------------------------------------- input
    def observe(
        self, round: int, bad: Mapping[str, Sequence[str]], present: Sequence[str]
    ) -> list[Exclusion]:
        """Record one round; return the exclusions it caused (in peer order of
        ``present`` then ``bad``). Already excluded peers are ignored."""
        if isinstance(round, bool) or not isinstance(round, int):
            raise ConfigError(f"Reputation.observe: round must be an int, got {round!r}")
        for peer, reasons in bad.items():
            if isinstance(reasons, str):
                raise ConfigError(
                    f"Reputation.observe: reasons for {peer!r} must be a sequence of strings, got a string"
                )
        self._last_round = round
        order: list[str] = []
        for peer in [*present, *bad]:
            if peer not in order:
                order.append(peer)
        here = set(present)
        new: list[Exclusion] = []
        for peer in order:
            if peer in self._excluded:
                continue
            if peer in here:
                self._age[peer] = self._age.get(peer, 0) + 1
            reasons = tuple(str(r) for r in bad[peer]) if peer in bad else None
            hist = self._history.setdefault(peer, [])
            hist.append((round, reasons))
            del hist[: max(0, len(hist) - self.window)]
            decision = self._decide(peer, round, reasons, hist)
            if decision is not None:
                self._excluded[peer] = decision
                self._decisions.append(decision)
                new.append(decision)
        return new

    def _decide(
        self,
        peer: str,
        round: int,
        reasons: tuple[str, ...] | None,
        hist: list[tuple[int, tuple[str, ...] | None]],
    ) -> Exclusion | None:
        if reasons is None:
            return None
        if any(r.startswith(PROOF_PREFIX) for r in reasons):
            return Exclusion(peer=peer, round=round, rule="proof", evidence=((round, reasons),))
        counted = tuple((r, why) for r, why in hist if why is not None)
        if len(counted) >= self.strikes:
            return Exclusion(peer=peer, round=round, rule="strikes", evidence=counted)
        return None

    def convict(self, peer: str, round: int, reason: str) -> Exclusion | None:
        """Exclude ``peer`` at once for a proven offence (rule ``"proof"``).

        ``reason`` is recorded as given (a ``"proof:"`` prefix is not needed
        here). Returns the new record, or None if ``peer`` was already excluded.
        """
        if isinstance(round, bool) or not isinstance(round, int):
            raise ConfigError(f"Reputation.convict: round must be an int, got {round!r}")
        if peer in self._excluded:
            return None
        decision = Exclusion(peer=peer, round=round, rule="proof", evidence=((round, (str(reason),)),))
        self._excluded[peer] = decision
        self._decisions.append(decision)
        return decision

    # --------------------------------------------------------------- queries
    def is_excluded(self, peer: str) -> bool:
        return peer in self._excluded

    @property
    def decisions(self) -> tuple[Exclusion, ...]:
        """Every exclusion so far, in the order it was decided."""
        return tuple(self._decisions)

    def age(self, peer: str) -> int:
        """Rounds ``peer`` was observed present in."""
        return self._age.get(peer, 0)

    def on_probation(self, peer: str) -> bool:
        return self.age(peer) < self.probation_rounds

    def _split(self, candidates: Sequence[str]) -> tuple[list[str], list[str]]:
        seen: set[str] = set()
        established: list[str] = []
        fresh: list[str] = []
        for peer in candidates:
            if peer in seen or peer in self._excluded:
                continue
            seen.add(peer)
            (fresh if self.on_probation(peer) else established).append(peer)
        return established, fresh

    def contributors(self, candidates: Sequence[str]) -> list[str]:
        """The candidates that may contribute this round, in the given order:
        every established one and at most
        ``max(1, floor(probation_share * n_established))`` on probation (the
        first ones in the given order); everyone when none is established.
        Excluded and repeated candidates are left out."""
        established, fresh = self._split(candidates)
        if not established:
            return fresh
        cap = max(1, math.floor(self.probation_share * len(established)))
        admitted = set(established) | set(fresh[:cap])
        out: list[str] = []
        for peer in candidates:
            if peer in admitted and peer not in out:
                out.append(peer)
        return out

    def voters(self, candidates: Sequence[str]) -> list[str]:
        """The established, non-excluded candidates (all non-excluded ones when
        none is established), in the given order."""
        established, fresh = self._split(candidates)
        return established if established else fresh

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The whole state as JSON-serialisable data (lists, dicts, ints, strs)."""
        return {
            "version": _STATE_VERSION,
            "config": {
                "strikes": self.strikes,
                "window": self.window,
                "probation_rounds": self.probation_rounds,
                "probation_share": self.probation_share,
            },
            "last_round": self._last_round,
            "age": dict(self._age),
            "history": {
                peer: [[r, None if why is None else list(why)] for r, why in hist]
                for peer, hist in self._history.items()
            },
            "decisions": [
                {
                    "peer": d.peer,
                    "round": d.round,
                    "rule": d.rule,
                    "evidence": [[r, list(why)] for r, why in d.evidence],
                }
                for d in self._decisions
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (its config must match this
        instance's, else ConfigError: a different window or strike count would
        silently change past decisions' meaning)."""
        try:
            if state["version"] != _STATE_VERSION:
                raise ConfigError(
                    f"Reputation state: expected version {_STATE_VERSION}, got {state['version']!r}"
                )
            mine = self.state_dict()["config"]
            if dict(state["config"]) != mine:
                raise ConfigError(
                    f"Reputation state: config {dict(state['config'])} does not match this instance's {mine}"
                )
            last = state["last_round"]
            age = {str(p): int(a) for p, a in state["age"].items()}
            history = {
                str(p): [(int(r), None if why is None else tuple(str(x) for x in why)) for r, why in hist]
                for p, hist in state["history"].items()
            }
            decisions = [
                Exclusion(
                    peer=str(d["peer"]),
                    round=int(d["round"]),
                    rule=str(d["rule"]),
                    evidence=tuple((int(r), tuple(str(x) for x in why)) for r, why in d["evidence"]),
                )
                for d in state["decisions"]
            ]
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"Reputation state: malformed ({type(exc).__name__}: {exc})") from exc
        self._last_round = None if last is None else int(last)
        self._age = age
        self._history = history
        self._decisions = decisions
        self._excluded = {d.peer: d for d in decisions}

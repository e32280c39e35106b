"""Protocol-level Byzantine behaviours, for red-teaming the audited all-reduce.

A test feature: ``gossamer peer --attack NAME`` and the simulator's
``--attack NAME`` install one of these as ``Communicator.behaviour``. Each
deviates from ``comm.audit.Behaviour`` (the honest member) in one role:

========== ==================================================================
name       what the member does
========== ==================================================================
tamper     as a chunk owner, sends ``-10 x`` the true reduced chunk (signed)
equivocate as a chunk owner, sends the true result to the first half of the
           group and a tampered one (``-10 x``) to the rest, both signed
withhold   as a chunk owner, never sends its reduced chunk
statlie    as a chunk owner, reports ``2 s + 1`` for every robust-rule statistic ``s``
falseaccuse as an auditor, accuses every owner it audits (with real evidence)
========== ==================================================================

Swarm-level lies (a wrong state hash, false reports about others' scores)
live in the swarm runtime (``swarm/peer.py``), contributor attacks in
``sim/attacks.py``; ``ATTACKS`` below lists the owner-side names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError
from .audit import Behaviour

#: Tampering factor: the poisoned chunk is this multiple of the true one.
TAMPER = -10.0


class Tamper(Behaviour):
    def result(self, chunk: int, data: bytes, reduced: torch.Tensor, encode: Callable[[torch.Tensor], bytes],
               group: Sequence[str]) -> bytes | dict[str, bytes]:
        return encode(reduced * TAMPER)


class Equivocate(Behaviour):
    def result(self, chunk: int, data: bytes, reduced: torch.Tensor, encode: Callable[[torch.Tensor], bytes],
               group: Sequence[str]) -> bytes | dict[str, bytes]:
        bad = encode(reduced * TAMPER)
        half = len(group) // 2
        return {p: (data if i < half else bad) for i, p in enumerate(group)}


class Withhold(Behaviour):
    def withhold_result(self) -> bool:
        return True


class StatLie(Behaviour):
    def stat(self, phase: int, stat: torch.Tensor) -> torch.Tensor:
        return stat * 2.0 + 1.0 if phase < 900 else stat


class FalseAccuse(Behaviour):
    def accuse(self, chunk: int, honest_verdict_ok: bool) -> bool:
        return True


ATTACKS: dict[str, type[Behaviour]] = {
    "tamper": Tamper,
    "equivocate": Equivocate,
    "withhold": Withhold,
    "statlie": StatLie,
    "falseaccuse": FalseAccuse,
}


def make_behaviour(name: str) -> Behaviour:
    """The owner-side behaviour ``name`` (see the table above); ConfigError names the known ones."""
    try:
        return ATTACKS[name]()
    except KeyError:
        raise ConfigError(f"unknown owner-side attack {name!r}; known: {', '.join(sorted(ATTACKS))}") from None

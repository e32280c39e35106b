"""Majority vote over the state hashes that peers report after an outer step.

Contract: ``majority(reports, order)`` takes ``{peer_id: hash}`` and an order
of precedence over the peers (e.g. seniority) and returns a ``Verdict``:

- ``agreed``: the hash reported by the most peers. On a tie, the hash whose
  best-ranked reporter comes first in ``order`` wins and ``tie`` is True (no
  strict majority exists: the caller should log it loudly).
- ``agreeing``: the peers that reported ``agreed``, in ``order``.
- ``dissenters``: every other reporting peer, in ``order``: they must resync
  from an agreeing peer.

Pure: no clocks, no I/O. Peers missing from ``order`` rank after all listed
ones, by id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    agreed: str | None
    agreeing: tuple[str, ...]
    dissenters: tuple[str, ...]
    tie: bool


def majority(reports: Mapping[str, str], order: Sequence[str] = ()) -> Verdict:
    """See the module docstring."""
    if not reports:
        return Verdict(None, (), (), False)
    rank = {p: i for i, p in enumerate(order)}

    def key(peer: str) -> tuple[int, str]:
        return (rank.get(peer, len(rank)), peer)

    peers = sorted(reports, key=key)
    votes: dict[str, list[str]] = {}
    for p in peers:
        votes.setdefault(reports[p], []).append(p)
    best = max(len(v) for v in votes.values())
    leaders = [h for h, v in votes.items() if len(v) == best]
    agreed = min(leaders, key=lambda h: key(votes[h][0]))
    agreeing = tuple(votes[agreed])
    dissenters = tuple(p for p in peers if reports[p] != agreed)
    return Verdict(agreed, agreeing, dissenters, len(leaders) > 1)

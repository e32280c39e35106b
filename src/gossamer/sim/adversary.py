"""The omniscient adversary of a simulated run.

Contract: ``Adversary(attack, honest, byzantine, seed)`` hands every peer a
``contribution_hook`` for its ``Communicator``. An honest peer's hook posts
its contribution to a shared board and returns it unchanged. A Byzantine
peer's hook waits until every honest contribution to the same operation is on
the board (Byzantine peers see the honest updates, as the literature assumes)
and returns its row of ``attack.craft(honest, len(byzantine), ...)``. The
crafted vector then travels through the very same collective, codec and
aggregator as everyone else's, so an attack costs and counts like real
traffic. Randomness comes from a generator seeded by ``(seed, op)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import torch

from ..seeding import generator
from .attacks import Attack

Hook = Callable[[str, int, torch.Tensor], Awaitable[torch.Tensor]]


class Adversary:
    def __init__(self, attack: Attack, honest: Sequence[str], byzantine: Sequence[str], *, seed: int = 0) -> None:
        self.attack = attack
        self.honest = tuple(honest)
        self.byzantine = tuple(byzantine)
        self.seed = seed
        self._board: dict[int, dict[str, torch.Tensor]] = {}
        self._ready: dict[int, asyncio.Event] = {}
        self._served: dict[int, int] = {}
        self._previous: dict[str, torch.Tensor] = {}

    def _event(self, op: int) -> asyncio.Event:
        if op not in self._ready:
            self._ready[op] = asyncio.Event()
        return self._ready[op]

    def hook_for(self, peer_id: str) -> Hook:
        if peer_id in self.byzantine:
            return lambda name, op, flat: self._byzantine(peer_id, op, flat)
        return lambda name, op, flat: self._honest(peer_id, op, flat)

    async def _honest(self, peer: str, op: int, flat: torch.Tensor) -> torch.Tensor:
        board = self._board.setdefault(op, {})
        board[peer] = flat
        if len(board) == len(self.honest):
            self._event(op).set()
        return flat

    async def _byzantine(self, peer: str, op: int, flat: torch.Tensor) -> torch.Tensor:
        await self._event(op).wait()
        board = self._board[op]
        honest = torch.stack([board[p] for p in self.honest])
        crafted = self.attack.craft(
            honest,
            len(self.byzantine),
            generator=generator("attack", self.seed, op),
            own=flat,
            previous=self._previous.get(peer),
        )
        mine = crafted[self.byzantine.index(peer)].clone()
        self._previous[peer] = mine
        self._served[op] = self._served.get(op, 0) + 1
        if self._served[op] == len(self.byzantine):  # everyone served: forget this op
            del self._board[op], self._ready[op], self._served[op]
        return mine

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


def craft_colluding(attack: Attack, colluders: torch.Tensor, index: int, *, group_size: int, seed: int,
                    round_: int, op: int, previous: torch.Tensor | None) -> torch.Tensor:
    """The row that colluding Byzantine member ``index`` sends, knowing only the colluders'
    own honestly computed updates ``colluders`` (``(f, d)``, in their fixed order): the
    non-omniscient setting of a real swarm, where attackers see no honest peer's update
    and pool what they compute themselves (ALIE's and IPM's statistics are then estimated
    from f samples; ALIE's z uses the real group size). The simulator's colluding mode and
    ``gossamer peer --attack`` both call this, so the same seed crafts the same bytes."""
    f = int(colluders.shape[0])
    if attack.name == "alie" and attack.params.get("z") is None:
        from .attacks import alie_z, make_attack  # noqa: PLC0415
        attack = make_attack("alie", z=alie_z(group_size, f))
    if attack.name == "freerider:stale" and previous is None:
        previous = colluders[index]  # a replay needs something to replay: the first contribution is honest
    rows = attack.craft(colluders, f, generator=generator("attack", seed, round_, op), own=colluders[index],
                        previous=previous)
    return rows[index].clone()


class Collusion:
    """The simulator's colluding (non-omniscient) adversary: ``hook_for(peer, comm)``."""

    def __init__(self, attack: Attack, byzantine: Sequence[str], *, seed: int = 0) -> None:
        self.attack = attack
        self.byzantine = tuple(byzantine)
        self.seed = seed
        self._board: dict[tuple[int, int, str], dict[str, torch.Tensor]] = {}
        self._ready: dict[tuple[int, int, str], asyncio.Event] = {}
        self._previous: dict[str, torch.Tensor] = {}
        self._served: dict[tuple[int, int, str], int] = {}

    def hook_for(self, peer: str, comm: object) -> Hook | None:
        """The contribution hook of Byzantine ``peer`` (None for an honest one)."""
        if peer not in self.byzantine:
            return None

        async def hook(name: str, op: int, flat: torch.Tensor) -> torch.Tensor:
            round_ = int(getattr(comm, "round", 0))
            key = (round_, op, name)
            board = self._board.setdefault(key, {})
            board[peer] = flat
            ev = self._ready.setdefault(key, asyncio.Event())
            active = [p for p in self.byzantine if p in getattr(comm, "group", self.byzantine)]  # not excluded
            if len(board) >= len(active):
                ev.set()
            await ev.wait()
            present = [p for p in self.byzantine if p in board]
            stacked = torch.stack([board[p] for p in present])
            mine = craft_colluding(self.attack, stacked, present.index(peer), group_size=int(getattr(comm, "size")),
                                   seed=self.seed, round_=round_, op=op, previous=self._previous.get(peer))
            self._previous[peer] = mine
            self._served[key] = self._served.get(key, 0) + 1
            if self._served[key] == len(present):  # everyone served: forget this operation
                del self._board[key], self._ready[key], self._served[key]
            return mine
        return hook

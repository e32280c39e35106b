"""The one round loop: drives any ``Algorithm`` over any ``Transport``.

A template method (as Flower's server loop or torchft's Manager own theirs):
``RoundLoop.run()`` is written once and used by the simulator
(``sim.runner``), the swarm peer (``swarm.peer``) and the tests::

    while algo.steps < total_steps and not self.stopping():
        batch = self.next_batch()
        loss = await self.local_step(batch)          # hook: inline, or in a worker thread
        if algo.sync_due(total_steps):
            await self.sync()                        # hook: a plain call, or barrier/attempt/commit
            self.after_sync()                        # hook: hashes, bytes, trace
        self.after_step(loss)                        # hook: evaluation, progress
        await asyncio.sleep(0)                       # let the other peers of this process run

Runtimes customise the hooks and touch the algorithm only through its
contract (``step``, ``sync_due``, ``synchronize``, ``state_dict``,
``load_state_dict``, ``shared_hash``, ``eval_model``). The loop resumes from
``algo.steps``: a peer that loaded a state (a joiner, a resumed peer) goes on
from the step that state was taken at, with the same schedule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .base import Algorithm


class RoundLoop:
    """One peer's training run: ``total_steps`` local steps of ``algo`` on
    batches from ``next_batch()``, with a sync wherever the algorithm wants one
    (and at the end for algorithms that end runs with one)."""

    def __init__(self, algo: Algorithm, next_batch: Callable[[], Any], total_steps: int) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        self.algo = algo
        self.next_batch = next_batch
        self.total_steps = total_steps
        self.last_loss = float("nan")

    async def run(self) -> None:
        """The template method (see the module docstring)."""
        algo = self.algo
        while algo.steps < self.total_steps and not self.stopping():
            batch = self.next_batch()
            if batch is None:
                break
            self.last_loss = await self.local_step(batch)
            if algo.sync_due(self.total_steps):
                await self.sync()
                self.after_sync()
            self.after_step(self.last_loss)
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ hooks
    async def local_step(self, batch: Any) -> float:
        """One local step; the default runs it inline."""
        return self.algo.step(batch)

    async def sync(self) -> None:
        """The sync after the step just taken; the default is a plain call."""
        await self.algo.synchronize()

    def after_sync(self) -> None:
        """Called after each completed sync."""

    def after_step(self, loss: float) -> None:
        """Called after each local step (and its sync, if any)."""

    def stopping(self) -> bool:
        """True to end the run before the next step."""
        return False

"""The one round loop: drives any ``Algorithm`` over any ``Transport``.

A template method (as Flower's server loop or torchft's Manager own theirs):
``RoundLoop.run()`` is written once and used by the simulator
(``sim.runner``), the swarm peer (``swarm.peer``) and the tests::

    while algo.steps < total_steps and not self.stopping():
        batch = await self.fetch_batch()             # hook: next(batches), or the user's step()
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
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..errors import PeerError
from .base import Algorithm, Gradients


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
            batch = await self.fetch_batch()
            if batch is None:
                break
            self.last_loss = await self.local_step(batch)
            if algo.sync_due(self.total_steps):
                await self.sync()
                self.after_sync()
            self.after_step(self.last_loss)
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ hooks
    async def fetch_batch(self) -> Any:
        """The next batch (``None`` ends the run); the default calls ``next_batch()``."""
        return self.next_batch()

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


class StepHandoff:
    """The bridge between a user's training loop and a round loop.

    The user's thread computes gradients and calls ``submit(grads)`` (a
    ``Gradients``), which blocks until the round loop, running in an event
    loop on another thread, has taken the local step and any sync due after
    it, and returns the step's loss. The loop side (``take``/``resolve``)
    runs in the event loop: ``take()`` returns the next ``Gradients`` or
    ``None`` once ``close()`` was called. ``fail(exc)`` (the round loop
    ended) fails the step in flight and every later ``submit`` with
    ``exc``. One user thread per handoff.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[Gradients, Future[float]] | None] | None = None
        self._pending: Future[float] | None = None
        self._dead: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------ loop side
    def bind(self) -> None:
        """Attach to the running event loop (call from inside it, before ``take``)."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            if self._closed:
                self._queue.put_nowait(None)

    async def take(self) -> Gradients | None:
        assert self._queue is not None, "bind() first"
        item = await self._queue.get()
        if item is None:
            return None
        grads, self._pending = item
        return grads

    def resolve(self, loss: float) -> None:
        """The step taken by the last ``take`` (and its sync) is done."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.set_result(loss)

    def fail(self, exc: BaseException) -> None:
        """The round loop is over: the step in flight and every later one raise ``exc``."""
        with self._lock:
            self._dead = exc
            pending, self._pending = self._pending, None
            queued: list[Future[float]] = []
            if self._queue is not None:
                while not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is not None:
                        queued.append(item[1])
        for fut in ([pending] if pending is not None else []) + queued:
            if not fut.done():
                fut.set_exception(exc)

    # ------------------------------------------------------------ user side
    def submit(self, grads: Gradients) -> float:
        fut: Future[float] = Future()
        with self._lock:
            if self._dead is not None:
                raise self._dead
            if self._closed:
                raise PeerError("step() after close(): this optimizer has left the swarm")
            if self._loop is None or self._queue is None:
                raise PeerError("the round loop is not running yet")
            try:
                self._loop.call_soon_threadsafe(self._enqueue, (grads, fut))
            except RuntimeError:  # the loop closed after the round loop ended
                raise self._dead or PeerError("the round loop has ended") from None
        while True:
            try:
                return fut.result(timeout=0.5)
            except TimeoutError:
                with self._lock:  # the loop may have stopped before it ran our _enqueue
                    dead = self._dead
                if dead is not None and not fut.done():
                    raise dead from None

    def _enqueue(self, item: tuple[Gradients, Future[float]]) -> None:
        """In the loop: queue a step, unless the round loop has ended (then fail it)."""
        with self._lock:
            dead = self._dead
            if dead is None and self._queue is not None:
                self._queue.put_nowait(item)
                return
        if not item[1].done():
            item[1].set_exception(dead or PeerError("the round loop has ended"))

    def close(self) -> None:
        """No more steps: the round loop ends after the step in flight."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._loop is not None and self._queue is not None and self._dead is None:
                try:
                    self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
                except RuntimeError:  # the loop is gone already
                    pass

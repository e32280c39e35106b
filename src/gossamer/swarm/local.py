"""A coordinator inside this process, for notebooks, examples and tests.

::

    with gossamer.LocalCoordinator(min_peers=2) as coordinator:
        ...  # peers (threads or processes) join coordinator.address, e.g. "127.0.0.1:39017"

The coordinator runs in a background thread with its own event loop. It is
the same ``Coordinator`` that ``gossamer coordinator`` runs, with the same
keyword options (``min_peers``, ``state_path``, ``trace``, ...); its identity
is a fresh key unless ``key`` names a key file. For a swarm that must outlive
the script, run ``gossamer coordinator`` instead (docs/swarm.md).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from ..errors import ConfigError
from ..transport.identity import Identity


class LocalCoordinator:
    """A ``Coordinator`` serving on ``host:port`` (port 0: a free one) from a
    background thread. ``address`` is ``"host:port"`` once started (the
    constructor starts it and raises ``ConfigError`` for a busy port or a bad
    option). ``close()`` (or leaving the ``with`` block) stops it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, swarm_id: str = "gossamer",
                 key: str | os.PathLike[str] | None = None, start_timeout: float = 30.0, **options: Any) -> None:
        from .coordinator import Coordinator

        identity = Identity.load_or_create(key) if key is not None else Identity.generate()
        self.peer_id = identity.peer_id
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._coordinator: Any = None
        self._stop: asyncio.Event | None = None

        async def serve() -> None:
            try:
                self._stop = asyncio.Event()
                self._coordinator = await Coordinator.start(identity, swarm_id, host, port, **options)
            except BaseException as exc:
                self._error = exc
                self._started.set()
                return
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                await self._coordinator.close()

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(serve(),),
                                        name="gossamer-coordinator", daemon=True)
        self._thread.start()
        if not self._started.wait(start_timeout):
            raise ConfigError(f"the coordinator did not start within {start_timeout:g} s")
        if self._error is not None:
            self._thread.join(5)
            if isinstance(self._error, TypeError):  # an option the Coordinator does not take
                raise ConfigError(f"LocalCoordinator: {self._error}") from None
            raise self._error
        h, p = self._coordinator.address
        self.address = f"{h}:{p}"

    def close(self) -> None:
        """Stop serving (idempotent); members lose their coordinator."""
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> "LocalCoordinator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalCoordinator({getattr(self, 'address', '?')})"

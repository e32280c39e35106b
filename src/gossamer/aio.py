"""Small asyncio helpers shared by the swarm and the transports."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` (children of the running task) and wait until each has ended.

    Whatever the children raise is dropped: their end was asked for. A cancellation
    of the *running* task that arrives while it waits here is not dropped: it is
    re-raised (the children are cancelled all the same), so that a caller cancelling
    a peer mid-cleanup sees ``CancelledError`` rather than a normal return.
    (``contextlib.suppress(BaseException)`` around the ``await`` swallowed both, and
    a cancelled ``Peer.run`` could return a report.)
    """
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)  # raises CancelledError only if *we* are cancelled
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: moot once cancelled

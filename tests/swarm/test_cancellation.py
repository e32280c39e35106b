"""A cancelled peer must end with CancelledError, never with a normal return.

CI once saw a ``Peer.run`` that was cancelled mid-round return a report: its
cleanup cancelled child tasks and awaited them under
``contextlib.suppress(BaseException)``, which also swallowed the cancellation of
the peer's own task when it arrived during that await.
"""

from __future__ import annotations

import asyncio

import pytest

from gossamer import Identity, Peer
from gossamer.aio import cancel_and_wait
from gossamer.tasks import make_task


async def _slow_to_die(started: asyncio.Event, cleanup_s: float = 0.3) -> None:
    """A child whose cancellation takes ``cleanup_s`` (it tidies up first)."""
    started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(cleanup_s)
        raise


def test_cancel_and_wait_drops_the_childs_end_but_returns():
    async def main():
        started = asyncio.Event()
        child = asyncio.ensure_future(_slow_to_die(started, 0.01))
        failing = asyncio.ensure_future(asyncio.sleep(0))

        async def boom():
            raise ValueError("moot")
        failed = asyncio.ensure_future(boom())
        await started.wait()
        await asyncio.sleep(0)
        await cancel_and_wait(child, failing, failed)
        return child.cancelled(), failed.done()

    assert asyncio.run(main()) == (True, True)


def test_cancel_and_wait_reraises_a_cancel_of_the_waiting_task():
    async def main():
        started = asyncio.Event()
        child = asyncio.ensure_future(_slow_to_die(started))

        async def cleanup():
            await started.wait()
            await cancel_and_wait(child)
            return "returned normally"

        outer = asyncio.ensure_future(cleanup())
        await asyncio.sleep(0.05)  # outer is now waiting for the child's slow cleanup
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await asyncio.sleep(0.4)
        return child.cancelled()

    assert asyncio.run(main()) is True


def test_a_peer_cancelled_while_it_stops_a_child_is_cancelled_not_stopped():
    """``Peer._interruptible``: a stop request cancels the awaited child; a cancel of
    the peer that lands during that cleanup used to become a normal stop."""
    task = make_task("digits")
    peer = Peer(task.make_model(0), task.loss, coordinator="127.0.0.1:9", identity=Identity.generate())

    async def main():
        peer._stop = asyncio.Event()
        started = asyncio.Event()
        inner = asyncio.ensure_future(peer._interruptible(_slow_to_die(started)))
        await started.wait()
        peer._stop.set()
        await asyncio.sleep(0.05)  # the child is being cancelled, slowly
        inner.cancel()
        try:
            await inner
        except asyncio.CancelledError:
            return "cancelled"
        except BaseException as exc:  # noqa: BLE001
            return type(exc).__name__
        return "returned"

    assert asyncio.run(main()) == "cancelled"

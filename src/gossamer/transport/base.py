"""The one ``Transport`` interface that the simulated and the TCP network implement.

Contract:

- A transport belongs to one peer (``peer_id``) and moves opaque byte payloads
  to and from other peers, each message addressed by a ``Tag`` (round,
  operation id, phase) so that a receiver asks for exactly the message it
  expects: ``recv(src, tag)``. Messages from one sender with different tags may
  arrive in any order; ``recv`` matches on ``(src, tag)``.
- ``send`` never blocks on the receiver calling ``recv`` (implementations
  buffer), so collectives may send to everyone before receiving.
- Every byte is counted: ``counters`` holds payload and framing bytes per
  direction and per remote peer. Framing is what the wire carries beyond the
  payload (length prefix, header, authentication tag), computed by the same
  frame codec in both transports.
- ``recv_into(src, tag, out)`` is ``recv`` into a buffer the caller owns
  (returns the payload's length); it lets a transport skip the copy
  (``posted_receives`` says whether posting receives early pays off).
- ``compute(seconds)`` tells the transport how long local computation took.
  The simulated transport advances its peer's virtual clock by it; the TCP
  transport ignores it (real time passes by itself).
- ``now()`` is the peer's clock: virtual seconds in the simulator, monotonic
  seconds over TCP.
- ``lane()`` gives a view of this transport for work that runs in the
  background (a non-blocking collective) while the peer computes: same peer,
  same mailbox, same counters and uplink, but its own clock starting at
  ``now()``. ``join_lane(lane)`` waits for the lane: the peer's clock becomes
  ``max(now(), lane.now())``. On a real-time transport (TCP) a lane is the
  transport itself and joining costs nothing, because real time passes for
  both at once; the simulator gets the same overlap in virtual time.
- ``discard_before(epoch)`` drops buffered, unread messages of attempt
  namespaces older than ``epoch`` (see ``comm.collectives``); a no-op where
  nothing is buffered for long.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple

Buffer = bytes | bytearray | memoryview


class Tag(NamedTuple):
    """Addresses one message: ``round`` (outer round), ``op`` (collective id within
    the run, identical on every peer because collectives are called in the same
    order everywhere) and ``phase`` (message index within the collective)."""

    round: int
    op: int
    phase: int


@dataclass
class LinkCounter:
    """Bytes and messages on one direction of one peer's traffic."""

    payload: int = 0
    framing: int = 0
    messages: int = 0

    @property
    def total(self) -> int:
        return self.payload + self.framing

    def add(self, payload: int, framing: int) -> None:
        self.payload += payload
        self.framing += framing
        self.messages += 1


@dataclass
class ByteCounters:
    """Exact byte counts of one peer, by direction, in total and per remote peer."""

    sent: LinkCounter = field(default_factory=LinkCounter)
    received: LinkCounter = field(default_factory=LinkCounter)
    sent_to: dict[str, LinkCounter] = field(default_factory=dict)
    received_from: dict[str, LinkCounter] = field(default_factory=dict)

    def count_sent(self, dst: str, payload: int, framing: int) -> None:
        self.sent.add(payload, framing)
        self.sent_to.setdefault(dst, LinkCounter()).add(payload, framing)

    def count_received(self, src: str, payload: int, framing: int) -> None:
        self.received.add(payload, framing)
        self.received_from.setdefault(src, LinkCounter()).add(payload, framing)

    def snapshot(self) -> dict[str, int]:
        return {
            "sent_payload": self.sent.payload,
            "sent_framing": self.sent.framing,
            "sent_messages": self.sent.messages,
            "received_payload": self.received.payload,
            "received_framing": self.received.framing,
            "received_messages": self.received.messages,
        }


class Transport(ABC):
    """Moves tagged byte payloads between peers; see the module docstring."""

    counters: ByteCounters
    #: True when ``recv_into`` calls may wait concurrently and let payloads
    #: land straight in the caller's buffers (TCP): a collective then posts
    #: every receive of an operation before it sends. False (the simulator,
    #: whose clock advances with each ``recv`` in turn): receive in order.
    posted_receives: bool = False

    @property
    @abstractmethod
    def peer_id(self) -> str: ...

    @abstractmethod
    async def send(self, dst: str, tag: Tag, payload: Buffer) -> None:
        """Queue ``payload`` for ``dst``; returns once it is handed to the network."""

    @abstractmethod
    async def recv(self, src: str, tag: Tag, *, timeout: float | None = None) -> bytes:
        """Return the payload ``src`` sent with ``tag``.

        Raises ``PeerError`` if ``src`` is known to be gone, and
        ``TimeoutError`` if ``timeout`` (seconds on this transport's clock)
        passes first."""

    async def recv_into(self, src: str, tag: Tag, out: Buffer, *, timeout: float | None = None) -> int:
        """Receive the payload ``src`` sent with ``tag`` into the writable
        buffer ``out`` and return its length ``n``: ``out[:n]`` holds it when
        ``n <= len(out)``; a longer payload is not written (the caller sees
        ``n`` and decides). Same errors and byte counts as ``recv``. A
        transport may let the payload land in ``out`` directly (TCP reads it
        there while the call waits); this default copies what ``recv``
        returns."""
        view = memoryview(out)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        data = await self.recv(src, tag, timeout=timeout)
        n = len(data)
        if n <= view.nbytes:
            view[:n] = data
        return n

    @abstractmethod
    def compute(self, seconds: float) -> None:
        """Account ``seconds`` of local computation."""

    @abstractmethod
    def now(self) -> float:
        """This peer's clock in seconds."""

    def lane(self) -> "Transport":
        """A background view of this transport (see the module docstring)."""
        return self

    def join_lane(self, lane: "Transport") -> None:
        """Wait for ``lane``'s work (see the module docstring)."""
        return None

    def discard_before(self, epoch: int) -> int:
        """Drop unread messages of attempt namespaces older than ``epoch``; returns how many."""
        return 0

    async def close(self) -> None:  # pragma: no cover - default no-op
        return None

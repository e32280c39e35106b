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
- ``compute(seconds)`` tells the transport how long local computation took.
  The simulated transport advances its peer's virtual clock by it; the TCP
  transport ignores it (real time passes by itself).
- ``now()`` is the peer's clock: virtual seconds in the simulator, monotonic
  seconds over TCP.
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

    @abstractmethod
    def compute(self, seconds: float) -> None:
        """Account ``seconds`` of local computation."""

    @abstractmethod
    def now(self) -> float:
        """This peer's clock in seconds."""

    async def close(self) -> None:  # pragma: no cover - default no-op
        return None

"""Simulated network: every peer in one process, a virtual clock per peer.

Contract:

- Each peer has its own virtual clock. ``compute(s)`` advances it by ``s``.
- A message of ``B`` bytes (payload plus framing, see ``frame.py``) sent from
  ``a`` to ``b`` leaves through ``a``'s uplink, one message at a time in the
  order ``a`` sends them: it starts at ``max(clock_a, uplink_free_a)``, takes
  ``8 B / bandwidth(a, b)`` seconds to transmit, and arrives
  ``latency(a, b)`` seconds after its last bit left. Sending does not advance
  the sender's clock (sends are asynchronous), but it occupies the uplink.
- With loss probability ``p`` on a link, each transmission attempt is lost
  with probability ``p`` (seeded, per link); a lost attempt costs its
  transmission time plus one round trip (``2 * latency``, the retransmission
  timeout) before the retry. Lost attempts are not counted as payload bytes
  (the counters report what the application sent once).
- ``recv`` returns when the message is there and sets the receiver's clock to
  ``max(clock_b, arrival)``. Because arrival times depend only on the sender's
  own send order and clock, virtual time is deterministic no matter how the
  asyncio scheduler interleaves the peers.
- Downlinks are not modelled as a bottleneck: on home broadband and WAN links
  the uplink is the scarce side. This is a stated approximation.
- A peer removed with ``kill`` fails every pending and future ``recv`` that
  waits on it with ``PeerError``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError, PeerError
from ..seeding import generator
from .base import Buffer, ByteCounters, Tag, Transport
from .frame import message_overhead

_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class LinkSpec:
    """One link: ``bandwidth_bps`` bits per second, one-way ``latency_s``, ``loss``
    probability per transmission attempt."""

    bandwidth_bps: float
    latency_s: float
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise ConfigError(f"link bandwidth must be > 0 bit/s, got {self.bandwidth_bps}")
        if not self.latency_s >= 0:
            raise ConfigError(f"link latency must be >= 0 s, got {self.latency_s}")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"link loss must be in [0, 1), got {self.loss}")

    @classmethod
    def parse(cls, text: str) -> "LinkSpec":
        """Parse ``"100mbit,50ms"`` or ``"1gbit,10ms,0.01"`` (bandwidth, latency, loss)."""
        parts = [p.strip().lower() for p in str(text).split(",")]
        accepted = "expected BANDWIDTH,LATENCY[,LOSS] such as '100mbit,50ms' or '1gbit,5ms,0.01' (units: bit kbit mbit gbit; s ms us)"
        if len(parts) not in (2, 3):
            raise ConfigError(f"bad link spec {text!r}: {accepted}")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]+)", parts[0])
        if not m or m.group(2) not in _RATE_UNITS:
            raise ConfigError(f"bad bandwidth {parts[0]!r} in link spec {text!r}: {accepted}")
        bandwidth = float(m.group(1)) * _RATE_UNITS[m.group(2)]
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]+)", parts[1])
        if not m or m.group(2) not in _TIME_UNITS:
            raise ConfigError(f"bad latency {parts[1]!r} in link spec {text!r}: {accepted}")
        latency = float(m.group(1)) * _TIME_UNITS[m.group(2)]
        loss = 0.0
        if len(parts) == 3:
            try:
                loss = float(parts[2])
            except ValueError:
                raise ConfigError(f"bad loss {parts[2]!r} in link spec {text!r}: {accepted}") from None
        return cls(bandwidth, latency, loss)

    def __str__(self) -> str:
        bw = self.bandwidth_bps
        for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
            if bw >= scale:
                bw_s = f"{bw / scale:g}{unit}"
                break
        else:
            bw_s = f"{bw:g}bit"
        text = f"{bw_s},{self.latency_s * 1e3:g}ms"
        return text + (f",{self.loss:g}" if self.loss else "")


@dataclass
class _Message:
    payload: bytes
    arrival: float


class SimNetwork:
    """The modelled network: links, per-peer uplinks, mailboxes."""

    def __init__(self, link: LinkSpec, *, seed: int = 0) -> None:
        self.default_link = link
        self.seed = seed
        self._links: dict[tuple[str, str], LinkSpec] = {}
        self._transports: dict[str, SimTransport] = {}
        self._dead: set[str] = set()
        self._loss_rng: dict[tuple[str, str], torch.Generator] = {}

    def set_link(self, src: str, dst: str, spec: LinkSpec) -> None:
        """Override the link from ``src`` to ``dst``."""
        self._links[(src, dst)] = spec

    def link(self, src: str, dst: str) -> LinkSpec:
        return self._links.get((src, dst), self.default_link)

    def add_peer(self, peer_id: str, *, clock: float = 0.0) -> "SimTransport":
        if peer_id in self._transports and peer_id not in self._dead:
            raise ConfigError(f"peer {peer_id!r} is already on the simulated network")
        self._dead.discard(peer_id)
        t = SimTransport(self, peer_id, clock)
        self._transports[peer_id] = t
        return t

    def kill(self, peer_id: str) -> None:
        """Remove ``peer_id``: every recv waiting on it fails with PeerError."""
        self._dead.add(peer_id)
        for t in self._transports.values():
            t._fail_waiters(peer_id)

    def is_alive(self, peer_id: str) -> bool:
        return peer_id in self._transports and peer_id not in self._dead

    def transports(self) -> dict[str, "SimTransport"]:
        return dict(self._transports)

    def _lost_attempts(self, src: str, dst: str, loss: float) -> int:
        if loss <= 0.0:
            return 0
        gen = self._loss_rng.get((src, dst))
        if gen is None:
            gen = generator("link-loss", self.seed, src, dst)
            self._loss_rng[(src, dst)] = gen
        lost = 0
        while float(torch.rand((), generator=gen)) < loss:
            lost += 1
        return lost

    def _deliver(self, src: str, dst: str, tag: Tag, payload: bytes, arrival: float) -> None:
        target = self._transports.get(dst)
        if target is None or dst in self._dead:
            return  # like a packet to a dead host: the bytes left, nobody reads them
        target._accept(src, tag, _Message(payload, arrival))


class SimTransport(Transport):
    """One peer's end of a ``SimNetwork``."""

    def __init__(self, network: SimNetwork, peer_id: str, clock: float) -> None:
        self._net = network
        self._id = peer_id
        self.clock = clock
        self.uplink_free = clock
        self.counters = ByteCounters()
        self._mailbox: dict[tuple[str, Tag], _Message] = {}
        self._waiters: dict[tuple[str, Tag], asyncio.Future[_Message]] = {}

    @property
    def peer_id(self) -> str:
        return self._id

    def now(self) -> float:
        return self.clock

    def compute(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"compute time must be >= 0, got {seconds}")
        self.clock += seconds

    async def send(self, dst: str, tag: Tag, payload: Buffer) -> None:
        self._send_at(self.clock, dst, tag, payload)

    def _send_at(self, clock: float, dst: str, tag: Tag, payload: Buffer) -> None:
        data = bytes(payload)
        framing = message_overhead(tag, len(data))
        size = len(data) + framing
        link = self._net.link(self._id, dst)
        tx = 8.0 * size / link.bandwidth_bps
        start = max(clock, self.uplink_free)
        lost = self._net._lost_attempts(self._id, dst, link.loss)
        done = start + tx * (1 + lost) + lost * 2.0 * link.latency_s
        self.uplink_free = done
        self.counters.count_sent(dst, len(data), framing)
        self._net._deliver(self._id, dst, tag, data, done + link.latency_s)

    async def recv(self, src: str, tag: Tag, *, timeout: float | None = None) -> bytes:
        try:
            payload, self.clock = await self._recv_at(self.clock, src, tag, timeout)
        except TimeoutError:
            self.clock += timeout or 0.0
            raise
        return payload

    async def _recv_at(self, clock: float, src: str, tag: Tag, timeout: float | None) -> tuple[bytes, float]:
        """The payload and the receiving clock's new value (``max(clock, arrival)``)."""
        key = (src, tag)
        msg = self._mailbox.pop(key, None)
        if msg is None:
            if not self._net.is_alive(src):
                raise PeerError(f"peer {src!r} is gone (waited for {tag} at {self._id!r})")
            fut: asyncio.Future[_Message] = asyncio.get_running_loop().create_future()
            self._waiters[key] = fut
            try:
                msg = await fut
            finally:
                self._waiters.pop(key, None)
        if timeout is not None and msg.arrival > clock + timeout:
            self._mailbox[key] = msg  # it is still in flight; a later recv may take it; the caller's clock advances by timeout
            raise TimeoutError(f"{self._id!r}: no message {tag} from {src!r} within {timeout:.3f} s")
        self.counters.count_received(src, len(msg.payload), message_overhead(tag, len(msg.payload)))
        return msg.payload, max(clock, msg.arrival)

    def lane(self) -> "SimLane":
        return SimLane(self)

    def join_lane(self, lane: Transport) -> None:
        if isinstance(lane, SimLane) and lane.parent is self:
            self.clock = max(self.clock, lane.clock)

    def _accept(self, src: str, tag: Tag, msg: _Message) -> None:
        key = (src, tag)
        fut = self._waiters.get(key)
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif key in self._mailbox:
            raise RuntimeError(f"duplicate message {tag} from {src!r} to {self._id!r}")
        else:
            self._mailbox[key] = msg

    def _fail_waiters(self, dead: str) -> None:
        for (src, tag), fut in list(self._waiters.items()):
            if src == dead and not fut.done():
                fut.set_exception(PeerError(f"peer {dead!r} is gone (waited for {tag} at {self._id!r})"))


class SimLane(Transport):
    """A background view of a ``SimTransport``: the same peer, mailbox,
    counters and uplink, with its own virtual clock that starts at the
    parent's current time. Work on a lane (a non-blocking collective)
    therefore overlaps the parent's ``compute``; ``parent.join_lane(lane)``
    waits for it."""

    def __init__(self, parent: SimTransport) -> None:
        self.parent = parent
        self.clock = parent.clock
        self.counters = parent.counters

    @property
    def peer_id(self) -> str:
        return self.parent.peer_id

    now = SimTransport.now
    compute = SimTransport.compute

    async def send(self, dst: str, tag: Tag, payload: Buffer) -> None:
        self.parent._send_at(self.clock, dst, tag, payload)

    async def recv(self, src: str, tag: Tag, *, timeout: float | None = None) -> bytes:
        try:
            payload, self.clock = await self.parent._recv_at(self.clock, src, tag, timeout)
        except TimeoutError:
            self.clock += timeout or 0.0
            raise
        return payload

    def lane(self) -> "SimLane":
        return SimLane(self.parent)

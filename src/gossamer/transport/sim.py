"""Simulated network: every peer in one process, a virtual clock per peer.

Contract:

- Each peer has its own virtual clock. ``compute(s)`` advances it by ``s``.
- Each peer has an **access link** (``LinkSpec``: uplink and downlink
  bandwidth in bit/s, one-way latency in s, loss probability): the
  network's default link, or its own (``add_peer(..., link=...)``). The path
  from ``a`` to ``b`` has one-way latency ``(latency_a + latency_b) / 2``
  and loss ``max(loss_a, loss_b)``, so a network where every peer has the
  same link keeps that link's latency and loss; ``set_link(a, b, spec)``
  overrides a pair (its latency, loss, and ``spec``'s uplink rate for what
  ``a`` sends to ``b``).
- **Wire bytes.** A message of ``B`` bytes (payload plus framing, see
  ``frame.py``) occupies the links for ``W = wire.wire_bytes(B)`` bytes: by
  default TCP over IPv4 on Ethernet, ``B + ceil(B / 1448) * (66 + 56)`` (MSS
  1448; 20 IP + 32 TCP with timestamps + 14 Ethernet header bytes per
  segment, which is what a ``tc`` shaper counts, and the acknowledgements
  the peers' symmetric traffic puts on the same links, see
  ``WireOverhead``); ``wire=None`` models none. Only times change: the byte
  counters report payload and framing, as TCP's do.
- **Uplink** (serialization at the sender): the messages a peer sends at
  the same virtual instant (a collective's phase sends to every peer at
  once) share its uplink as concurrent TCP flows do (processor sharing): ``n``
  messages of ``W`` bytes all leave after ``n * 8 W / up_a`` seconds, a
  shorter one earlier. Messages sent later (in virtual time) start when
  those are out. A message's last bit reaches ``b`` ``latency(a, b)`` after
  it left. Sending does not advance the sender's clock (sends are
  asynchronous), but it occupies the uplink.
- **Downlink** (contention at the receiver): ``b``'s downlink carries at most
  ``down_b`` bit/s in total. Each message to ``b`` takes ``8 W`` bits of it,
  at most at the rate it leaves its sender (its share of the uplink), from
  when its first bit can arrive (its batch starts to leave, plus
  ``latency(a, b)``), out of the capacity the messages resolved before it
  left free (a fluid, work-conserving share). A message arrives at the later
  of its last bit leaving the uplink plus the latency and the end of its
  downlink share. So ``n`` senders sending ``W`` bytes each to one receiver
  at once finish after about ``n * 8 W / down_b``; a receiver whose
  downlink is faster than its senders' uplinks sees no contention until
  their sum exceeds it. Measured against real TCP through ``tc``-shaped
  links in ``bench/predict.py``.
- With loss probability ``p`` on a path, each transmission attempt is lost
  with probability ``p`` (seeded, per path); a lost attempt costs its
  transmission time plus one round trip (``2 * latency``, the retransmission
  timeout) before the retry. Lost attempts are not counted as payload bytes
  (the counters report what the application sent once).
- ``recv`` returns when the message is there and sets the receiver's clock to
  ``max(clock_b, arrival)``.
- Determinism: a message's times are fixed when its batch is resolved (the
  first of them is received, or its sender sends at a later instant) and
  depend only on the sender's clock and uplink, the receiver's downlink and
  the order in which the program sends and receives (the simulator's single
  event loop does both in the same order on every run), so a seeded run
  gives the same times every time.
- **Coordinator** (optional, ``SimNetwork(..., coordinator=LinkSpec)``): the
  swarm's control plane. ``await control.rendezvous(key, peer, clock,
  group)`` models one request that every member of ``group`` sends and the
  coordinator answers once the last has arrived (the round barrier, the
  commit decision): every member resumes at ``max_q(clock_q + lat_q) +
  lat_p``, ``lat_p`` the one-way latency between peer ``p`` and the
  coordinator (the mean of their link latencies), plus the transmission of
  ``CONTROL_BYTES`` each way (as one more flow: data in flight does not hold
  it up). Control messages are not counted (they do not travel on the data
  transport).
- A peer removed with ``kill`` fails every pending and future ``recv`` that
  waits on it with ``PeerError``, and is no longer waited for by a
  rendezvous.
- **Modelled payload sizes** (optional, ``SimNetwork(..., payload_size=f)``;
  used by the planner, ``sim/plan.py``): a message whose payload has ``B``
  bytes is modelled as ``f(src, dst, tag, B)`` payload bytes, on the wire
  (its framing and wire bytes are those of a message of that size) and in
  both peers' counters. The planner runs the real collectives on a small
  proxy model and charges each message the size it would have for the
  full-size model. Without ``payload_size`` (the default) a message is
  modelled and counted as the bytes it carries.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..errors import ConfigError, PeerError
from ..seeding import generator
from .base import Buffer, ByteCounters, Tag, Transport
from .frame import message_overhead

_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_NUMBER = r"([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]+)"
_ACCEPTED = ("expected UP[/DOWN],LATENCY[,LOSS] such as '100mbit,50ms' (symmetric), "
             "'10mbit/100mbit,20ms' (10 Mbit/s up, 100 down) or '1gbit,5ms,0.01' "
             "(units: bit kbit mbit gbit; s ms us; latency one-way)")


def _rate(text: str, spec: str, what: str) -> float:
    m = re.fullmatch(_NUMBER, text.strip())
    if not m or m.group(2) not in _RATE_UNITS:
        raise ConfigError(f"bad {what} {text.strip()!r} in link spec {spec!r}: {_ACCEPTED}")
    return float(m.group(1)) * _RATE_UNITS[m.group(2)]


def _format_rate(bw: float) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bw >= scale:
            return f"{bw / scale:g}{unit}"
    return f"{bw:g}bit"


@dataclass(frozen=True)
class LinkSpec:
    """A peer's access link: ``bandwidth_bps`` uplink bits per second (also
    ``up_bps``), one-way ``latency_s`` seconds, ``loss`` probability per
    transmission attempt, ``down_bps`` downlink bits per second (``None``:
    the same as the uplink, a symmetric link)."""

    bandwidth_bps: float
    latency_s: float
    loss: float = 0.0
    down_bps: float | None = None

    def __post_init__(self) -> None:
        if self.down_bps is None:
            object.__setattr__(self, "down_bps", self.bandwidth_bps)
        if not self.bandwidth_bps > 0:
            raise ConfigError(f"link bandwidth must be > 0 bit/s, got {self.bandwidth_bps}")
        if not self.down_bps > 0:  # type: ignore[operator]
            raise ConfigError(f"link downlink bandwidth must be > 0 bit/s, got {self.down_bps}")
        if not self.latency_s >= 0:
            raise ConfigError(f"link latency must be >= 0 s, got {self.latency_s}")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"link loss must be in [0, 1), got {self.loss}")

    @property
    def up_bps(self) -> float:
        """Uplink bandwidth, bit/s (the same as ``bandwidth_bps``)."""
        return self.bandwidth_bps

    @property
    def symmetric(self) -> bool:
        return self.down_bps == self.bandwidth_bps

    @classmethod
    def parse(cls, text: str) -> "LinkSpec":
        """Parse ``UP[/DOWN],LATENCY[,LOSS]``: ``"100mbit,50ms"`` (100 Mbit/s
        both ways, 50 ms one-way), ``"10mbit/100mbit,20ms"`` (10 Mbit/s up,
        100 down), ``"1gbit,10ms,0.01"`` (1% of attempts lost)."""
        spec = str(text)
        parts = [p.strip().lower() for p in spec.split(",")]
        if len(parts) not in (2, 3) or not parts[0]:
            raise ConfigError(f"bad link spec {spec!r}: {_ACCEPTED}")
        rates = parts[0].split("/")
        if len(rates) > 2:
            raise ConfigError(f"bad bandwidth {parts[0]!r} in link spec {spec!r}: one '/' at most (UP/DOWN); {_ACCEPTED}")
        up = _rate(rates[0], spec, "bandwidth" if len(rates) == 1 else "uplink bandwidth")
        down = _rate(rates[1], spec, "downlink bandwidth") if len(rates) == 2 else None
        m = re.fullmatch(_NUMBER, parts[1])
        if not m or m.group(2) not in _TIME_UNITS:
            raise ConfigError(f"bad latency {parts[1]!r} in link spec {spec!r}: {_ACCEPTED}")
        latency = float(m.group(1)) * _TIME_UNITS[m.group(2)]
        loss = 0.0
        if len(parts) == 3:
            try:
                loss = float(parts[2])
            except ValueError:
                raise ConfigError(f"bad loss {parts[2]!r} in link spec {spec!r}: {_ACCEPTED}") from None
        try:
            return cls(up, latency, loss, down)
        except ConfigError as exc:
            raise ConfigError(f"bad link spec {spec!r}: {exc}") from None

    def __str__(self) -> str:
        rate = _format_rate(self.bandwidth_bps)
        if not self.symmetric:
            rate += "/" + _format_rate(float(self.down_bps))  # type: ignore[arg-type]
        text = f"{rate},{self.latency_s * 1e3:g}ms"
        return text + (f",{self.loss:g}" if self.loss else "")


@dataclass(frozen=True)
class WireOverhead:
    """What the network carries beyond a message's frame, per ``mss`` bytes of
    it (at least one segment): ``per_segment`` header bytes, plus ``acks``
    bytes of acknowledgements. Acknowledgements travel the other way, on the
    receiver's uplink; they are charged to the sender's because in the
    collectives every peer receives about as much as it sends at the same
    time (a one-way transfer is then predicted ``acks / (mss + per_segment)``
    too slow)."""

    mss: int = 1448
    per_segment: int = 66
    acks: int = 0

    def wire_bytes(self, size: int) -> int:
        """Bytes a frame of ``size`` bytes costs the link."""
        return size + max(1, math.ceil(size / self.mss)) * (self.per_segment + self.acks)


#: Downlink fills between two prunings of the downlinks' history (``SimNetwork._filled``).
PRUNE_EVERY = 4096

#: A coordinator request or answer (ready, start, done, decision), bytes on
#: its connection: a msgpack map of a few ids, hashes and counters.
CONTROL_BYTES = 400

#: TCP over IPv4 with timestamps on Ethernet (MTU 1500): 1448 payload bytes per
#: segment, 20 + 32 + 14 header bytes; the receiver acknowledges 0.85 segments
#: out of 1 with a 66-byte packet (56 bytes per segment). Measured through tc
#: tbf (which counts Ethernet frames): a 20 Mbit/s link carries 19.15 Mbit/s of
#: TCP payload one way (1448 / 1514), and the receiver's uplink 3.7% of the
#: data's bytes in acknowledgements.
TCP_IPV4 = WireOverhead(acks=56)


class _Capacity:
    """A link's committed rate over virtual time (bit/s), a step function:
    ``used[i]`` holds on ``[times[i], times[i + 1])``."""

    def __init__(self, rate_bps: float) -> None:
        self.rate = rate_bps
        self.times: list[float] = [-math.inf]
        self.used: list[float] = [0.0]

    def _split(self, t: float) -> int:
        """Index of the step that starts at ``t`` (made so if needed)."""
        i = bisect.bisect_right(self.times, t) - 1
        if self.times[i] < t:
            self.times.insert(i + 1, t)
            self.used.insert(i + 1, self.used[i])
            i += 1
        return i

    def forget_before(self, horizon: float) -> None:
        """Drop the steps before ``horizon``: no fill will start earlier."""
        i = bisect.bisect_right(self.times, horizon) - 1
        if i > 0:
            self.times[1 : i + 1] = []
            self.used[0 : i] = []

    def fill(self, start: float, bits: float, cap_bps: float) -> float:
        """Take ``bits`` of the free capacity from ``start`` on, at most
        ``cap_bps`` at a time; returns when the last bit is through."""
        if bits <= 0:
            return start
        i = self._split(start)
        left = bits
        tiny = self.rate * 1e-12
        times, used = self.times, self.used
        while True:
            if self.rate - used[i] <= tiny:
                # Saturated, and so for good (fills only add): merge it with the
                # saturated steps after it, which no fill can use either, so
                # later fills skip them in one step. Values are unchanged.
                j = i + 1
                while j < len(times) and self.rate - used[j] <= tiny:
                    j += 1
                if j > i + 1:
                    del times[i + 1 : j], used[i + 1 : j]
                i += 1
                continue
            s = times[i]
            e = times[i + 1] if i + 1 < len(times) else math.inf
            avail = min(cap_bps, self.rate - used[i])
            if avail > tiny:
                if left <= avail * (e - s):
                    finish = s + left / avail
                    if finish < e:
                        self.times.insert(i + 1, finish)
                        self.used.insert(i + 1, self.used[i])
                    self.used[i] += avail
                    return finish
                left -= avail * (e - s)
                self.used[i] += avail
            i += 1


class SimControl:
    """The coordinator's round trips (see the module docstring)."""

    def __init__(self, network: "SimNetwork", link: LinkSpec) -> None:
        self.network = network
        self.link = link
        self._pending: dict[object, tuple[tuple[str, ...], dict[str, float], dict[str, asyncio.Future[float]]]] = {}

    def latency(self, peer: str) -> float:
        """One-way latency between ``peer`` and the coordinator, s."""
        return (self.network.access_link(peer).latency_s + self.link.latency_s) / 2

    async def rendezvous(self, key: object, peer: str, clock: float, group: Iterable[str]) -> float:
        """Send a request at ``clock``; returns the virtual time the coordinator's
        answer arrives (after every live member of ``group`` asked under ``key``)."""
        members = tuple(group)
        entry = self._pending.get(key)
        if entry is None:
            entry = (members, {}, {})
            self._pending[key] = entry
        asked, futures = entry[1], entry[2]
        asked[peer] = self.network._control_sent(peer, clock) + self.latency(peer)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        futures[peer] = fut
        self._check(key)
        return await fut

    def _check(self, key: object) -> None:
        members, asked, futures = self._pending[key]
        live = [p for p in members if self.network.is_alive(p)]
        if any(p not in asked for p in live):
            return
        del self._pending[key]
        decided = max(asked.values())
        for p, fut in futures.items():
            if not fut.done():
                fut.set_result(self.network._control_received(p, decided + self.latency(p), self.link.bandwidth_bps))

    def peer_gone(self) -> None:
        for key in list(self._pending):
            self._check(key)


class _Message:
    """A message in flight: its payload and, once its uplink batch is resolved, its arrival time."""

    __slots__ = ("payload", "_arrival", "batch", "size")

    def __init__(self, payload: bytes, arrival: float | None = None, batch: "_Batch | None" = None,
                 size: int | None = None) -> None:
        self.payload = payload
        self._arrival = arrival
        self.batch = batch
        #: the modelled payload size in bytes (``len(payload)`` unless the network models another)
        self.size = len(payload) if size is None else size

    @property
    def arrival(self) -> float:
        if self._arrival is None:
            assert self.batch is not None
            self.batch.resolve()
        assert self._arrival is not None
        return self._arrival


@dataclass
class _Send:
    msg: _Message
    dst: str
    bits: float
    tx: float  # seconds of the sender's uplink alone
    latency: float
    lost: int


class _Batch:
    """Messages one peer sent at the same virtual instant: they share its uplink
    (processor sharing, as concurrent TCP flows do), so ``n`` equal messages all
    finish after ``n`` transmission times. Resolved (times fixed) when the first
    of them is received or the uplink is needed for something sent later."""

    def __init__(self, network: "SimNetwork", sender: "SimTransport", clock: float, start: float) -> None:
        self.network, self.sender = network, sender
        self.clock, self.start = clock, start
        self.sends: list[_Send] = []
        self.end: float | None = None

    def resolve(self) -> float:
        """Fix every member's times (idempotent); returns when the uplink is free again."""
        if self.end is not None:
            return self.end
        if self.sender.open_batch is self:
            self.sender.open_batch = None
        n = len(self.sends)
        finish = [0.0] * n
        t, served, active = self.start, 0.0, n
        for k in sorted(range(n), key=lambda k: self.sends[k].tx):  # processor sharing, shortest first out
            t += (self.sends[k].tx - served) * active
            served, active = self.sends[k].tx, active - 1
            finish[k] = t
        self.end = t
        for s, f in zip(self.sends, finish):
            retry = s.lost * (s.tx + 2.0 * s.latency)  # lost attempts: sent again after a round trip each
            done = f + retry
            arrival = done + s.latency
            downlink = self.network._downlinks.get(s.dst)
            if downlink is not None and s.dst not in self.network._dead and done > self.start:
                arrival = max(arrival, downlink.fill(self.start + s.latency, s.bits, s.bits / (done - self.start)))
                self.network._filled()
            s.msg._arrival = arrival
        self.end = t + sum(s.lost * (s.tx + 2.0 * s.latency) for s in self.sends)  # a stream waits for its retries
        self.sender.uplink_free = max(self.sender.uplink_free, self.end)
        return self.end


class SimNetwork:
    """The modelled network: access links, per-peer uplinks and downlinks,
    mailboxes, and optionally the coordinator's round trips (``control``)."""

    def __init__(self, link: LinkSpec, *, seed: int = 0, wire: WireOverhead | None = TCP_IPV4,
                 coordinator: LinkSpec | None = None,
                 payload_size: Callable[[str, str, Tag, int], int] | None = None) -> None:
        self.default_link = link
        self.seed = seed
        self.wire = wire
        #: modelled payload size of a message (module docstring); ``None``: the bytes it carries
        self.payload_size = payload_size
        self._links: dict[tuple[str, str], LinkSpec] = {}
        self._access: dict[str, LinkSpec] = {}
        self._downlinks: dict[str, _Capacity] = {}
        self._transports: dict[str, SimTransport] = {}
        self._dead: set[str] = set()
        self._loss_rng: dict[tuple[str, str], torch.Generator] = {}
        self._fills = 0
        #: the coordinator's round trips (``None``: the network has no coordinator)
        self.control: SimControl | None = SimControl(self, coordinator) if coordinator is not None else None

    def set_link(self, src: str, dst: str, spec: LinkSpec) -> None:
        """Override the path from ``src`` to ``dst``: its latency, its loss, and
        ``spec``'s uplink rate for what ``src`` sends to ``dst`` (``src``'s
        uplink is still shared with its other messages, ``dst``'s downlink
        with its other senders)."""
        self._links[(src, dst)] = spec

    def access_link(self, peer_id: str) -> LinkSpec:
        """``peer_id``'s own link (the default link unless ``add_peer`` gave one)."""
        return self._access.get(peer_id, self.default_link)

    def link(self, src: str, dst: str) -> LinkSpec:
        """The path from ``src`` to ``dst`` as one spec: ``src``'s uplink rate,
        ``dst``'s downlink rate, the pair's latency and loss (module docstring)."""
        up, latency, loss = self._path(src, dst)
        return LinkSpec(up, latency, loss, self.access_link(dst).down_bps)

    def _path(self, src: str, dst: str) -> tuple[float, float, float]:
        """(uplink rate bit/s, one-way latency s, loss) of what ``src`` sends to ``dst``."""
        pair = self._links.get((src, dst))
        if pair is not None:
            return pair.bandwidth_bps, pair.latency_s, pair.loss
        a, b = self.access_link(src), self.access_link(dst)
        return a.bandwidth_bps, (a.latency_s + b.latency_s) / 2, max(a.loss, b.loss)

    def add_peer(self, peer_id: str, *, clock: float = 0.0, link: LinkSpec | None = None) -> "SimTransport":
        """Put ``peer_id`` on the network with its clock at ``clock`` and its own
        access ``link`` (default: the network's)."""
        if peer_id in self._transports and peer_id not in self._dead:
            raise ConfigError(f"peer {peer_id!r} is already on the simulated network")
        self._dead.discard(peer_id)
        if link is not None:
            self._access[peer_id] = link
        if peer_id not in self._downlinks:
            self._downlinks[peer_id] = _Capacity(float(self.access_link(peer_id).down_bps))  # type: ignore[arg-type]
        t = SimTransport(self, peer_id, clock)
        self._transports[peer_id] = t
        return t

    def kill(self, peer_id: str) -> None:
        """Remove ``peer_id``: every recv waiting on it fails with PeerError."""
        self._dead.add(peer_id)
        for t in self._transports.values():
            t._fail_waiters(peer_id)
        if self.control is not None:
            self.control.peer_gone()

    def is_alive(self, peer_id: str) -> bool:
        return peer_id in self._transports and peer_id not in self._dead

    def transports(self) -> dict[str, "SimTransport"]:
        return dict(self._transports)

    def _control_sent(self, peer: str, clock: float) -> float:
        """When a control message ``peer`` sends at ``clock`` has left: a few hundred
        bytes, sharing the uplink with any data as one more flow, so data queued
        before it does not hold it up."""
        return clock + 8.0 * self._wire_bytes(CONTROL_BYTES) / self.access_link(peer).bandwidth_bps

    def _control_received(self, peer: str, first_bit: float, rate_bps: float) -> float:
        """When a control message whose first bit reaches ``peer`` at ``first_bit`` is there."""
        rate = min(rate_bps, float(self.access_link(peer).down_bps))  # type: ignore[arg-type]
        return first_bit + 8.0 * self._wire_bytes(CONTROL_BYTES) / rate

    def _filled(self) -> None:
        """Every ``PRUNE_EVERY`` downlink fills, forget what no later fill can
        touch: the downlinks' history before the earliest time anyone can
        still send from (every live peer's clock, its lanes' clocks and the
        start of its unresolved batch), so memory stays bounded in long runs.
        (A peer added later with an older clock would see that history as
        it stood at the cut.)"""
        self._fills += 1
        if self._fills % PRUNE_EVERY:
            return
        horizon = math.inf
        for pid, t in self._transports.items():
            if pid in self._dead:
                continue
            horizon = min(horizon, t.earliest_send())
        if math.isfinite(horizon):
            for downlink in self._downlinks.values():
                downlink.forget_before(horizon)

    def _wire_bytes(self, size: int) -> int:
        return self.wire.wire_bytes(size) if self.wire is not None else size

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

    def _deliver(self, src: str, dst: str, tag: Tag, msg: _Message) -> None:
        target = self._transports.get(dst)
        if target is None or dst in self._dead:
            return  # like a packet to a dead host: the bytes left, nobody reads them
        target._accept(src, tag, msg)


class SimTransport(Transport):
    """One peer's end of a ``SimNetwork``."""

    def __init__(self, network: SimNetwork, peer_id: str, clock: float) -> None:
        self._net = network
        self._id = peer_id
        self.clock = clock
        self.uplink_free = clock
        #: the messages sent at the current instant, sharing the uplink (not yet resolved)
        self.open_batch: _Batch | None = None
        self._lanes: weakref.WeakSet[SimLane] = weakref.WeakSet()
        self.counters = ByteCounters()
        self._mailbox: dict[tuple[str, Tag], _Message] = {}
        self._waiters: dict[tuple[str, Tag], asyncio.Future[_Message]] = {}

    @property
    def peer_id(self) -> str:
        return self._id

    @property
    def network(self) -> SimNetwork:
        """The network this transport is on."""
        return self._net

    def now(self) -> float:
        return self.clock

    def compute(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"compute time must be >= 0, got {seconds}")
        self.clock += seconds

    def earliest_send(self) -> float:
        """No message of this peer, sent now or later, starts to leave before this time."""
        t = self.clock
        for lane in list(self._lanes):
            t = min(t, lane.clock)
        if self.open_batch is not None:
            t = min(t, self.open_batch.start)
        return t

    def advance_to(self, t: float) -> None:
        """Move the clock to ``t`` if that is later (waiting for something outside the network)."""
        self.clock = max(self.clock, t)

    async def send(self, dst: str, tag: Tag, payload: Buffer) -> None:
        self._send_at(self.clock, dst, tag, payload)

    def _send_at(self, clock: float, dst: str, tag: Tag, payload: Buffer) -> None:
        net = self._net
        data = bytes(payload)
        modelled = len(data) if net.payload_size is None else int(net.payload_size(self._id, dst, tag, len(data)))
        framing = message_overhead(tag, modelled)
        bits = 8.0 * net._wire_bytes(modelled + framing)
        up, latency, loss = net._path(self._id, dst)
        batch = self.open_batch
        if batch is None or batch.clock != clock:
            if batch is not None:
                batch.resolve()
            batch = self.open_batch = _Batch(net, self, clock, max(clock, self.uplink_free))
        msg = _Message(data, batch=batch, size=modelled)
        batch.sends.append(_Send(msg, dst, bits, bits / up, latency, net._lost_attempts(self._id, dst, loss)))
        self.counters.count_sent(dst, modelled, framing)
        net._deliver(self._id, dst, tag, msg)

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
        self.counters.count_received(src, msg.size, message_overhead(tag, msg.size))
        return msg.payload, max(clock, msg.arrival)

    def lane(self) -> "SimLane":
        lane = SimLane(self)
        self._lanes.add(lane)
        return lane

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
        return self.parent.lane()

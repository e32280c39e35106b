"""Collectives over any ``Transport``, written once for the simulator and TCP.

Contract:

- A ``Communicator`` is one peer's handle on an ordered ``group`` of peer ids
  (the same tuple on every member). Collectives must be called in the same
  order on every member; each call takes the next operation id, so tags agree.
- ``all_reduce(tensors)`` returns the element-wise mean (or, with an
  aggregator, the robust aggregate) of every member's tensors. It is a
  butterfly (reduce-scatter, then all-gather): the flat vector is cut into
  ``n`` contiguous chunks, member ``j`` receives chunk ``j`` of everyone,
  reduces it in rank order, and sends the reduced chunk to everyone. Every
  member therefore ends with the bit-identical result, whatever the
  scheduling. Each member sends ``2 (n-1)/n`` of the (encoded) vector.
- With a lossy codec, contributions are encoded per chunk (the owner's own
  contribution goes through encode/decode too, so every contribution is
  treated alike), and the reduced chunk is encoded once by its owner with the
  codec's stateless form; everyone, the owner included, decodes those same
  bytes, so results stay bit-identical.
- ``all_gather(data)`` returns every member's bytes in rank order.
- ``exchange(partner, data)`` swaps bytes with one partner (for gossip).
- Every byte goes through the transport, so its counters see everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import AggregationError, ConfigError
from ..seeding import derive_seed
from ..transport.base import Tag, Transport

log = logging.getLogger(__name__)


class CodecLike(Protocol):
    spec: str
    lossless: bool

    def encode(self, x: torch.Tensor, *, key: Any = None, seed: int = 0) -> bytes: ...

    def decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Any = None, seed: int = 0) -> torch.Tensor: ...


def _raw_encode(x: torch.Tensor) -> bytes:
    return x.detach().to(torch.float32).contiguous().numpy().tobytes()


def _raw_decode(data: bytes | memoryview, numel: int, src: str) -> torch.Tensor:
    if len(data) != 4 * numel:
        raise AggregationError(f"peer {src!r} sent {len(data)} bytes for {numel} float32 values (expected {4 * numel})")
    if numel == 0:
        return torch.zeros(0, dtype=torch.float32)
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


def chunk_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` into ``parts`` contiguous chunks, sizes differing by at most one."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat float32 vector."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cut ``flat`` back into tensors shaped like ``like``."""
    out, start = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[start : start + n].view(t.shape).to(t.dtype))
        start += n
    return out


@dataclass
class CollectiveStats:
    """What one collective did, for the trace."""

    name: str
    op: int
    bytes_payload: int
    dropped: tuple[str, ...] = ()


class Communicator:
    """One peer's handle on a group; see the module docstring."""

    def __init__(
        self,
        transport: Transport,
        group: Sequence[str],
        *,
        codec: CodecLike | None = None,
        aggregator: Any | None = None,
        seed: int = 0,
        timeout: float | None = None,
    ) -> None:
        if transport.peer_id not in group:
            raise ConfigError(f"peer {transport.peer_id!r} is not in its group {list(group)}")
        if len(set(group)) != len(group):
            raise ConfigError(f"group has duplicate peers: {list(group)}")
        self.transport = transport
        self.group = tuple(group)
        self.rank = self.group.index(transport.peer_id)
        self.codec = codec
        self.aggregator = aggregator
        self.seed = seed
        self.timeout = timeout
        self.round = 0
        self._op = 0
        self.history: list[CollectiveStats] = []
        self.listeners: list[Callable[[CollectiveStats], None]] = []
        if aggregator is not None and hasattr(aggregator, "check"):
            aggregator.check(len(self.group))

    @property
    def size(self) -> int:
        return len(self.group)

    @property
    def peer_id(self) -> str:
        return self.transport.peer_id

    def _next_op(self) -> int:
        op = self._op
        self._op += 1
        return op

    def _record(self, stats: CollectiveStats) -> None:
        self.history.append(stats)
        for fn in self.listeners:
            fn(stats)

    async def _send_all(self, op: int, phase: int, payloads: dict[str, bytes]) -> int:
        sent = 0
        for dst, data in payloads.items():
            await self.transport.send(dst, Tag(self.round, op, phase), data)
            sent += len(data)
        return sent

    async def _recv(self, src: str, op: int, phase: int) -> bytes:
        return await self.transport.recv(src, Tag(self.round, op, phase), timeout=self.timeout)

    # ------------------------------------------------------------------ all-gather
    async def all_gather(self, data: bytes, *, name: str = "all_gather") -> list[bytes]:
        """Every member's ``data``, in rank order."""
        op = self._next_op()
        others = [p for p in self.group if p != self.peer_id]
        sent = await self._send_all(op, 0, {p: data for p in others})
        out = []
        for p in self.group:
            out.append(bytes(data) if p == self.peer_id else await self._recv(p, op, 0))
        self._record(CollectiveStats(name, op, sent))
        return out

    async def exchange(self, partner: str, data: bytes, *, name: str = "exchange") -> bytes:
        """Send ``data`` to ``partner`` and return what it sent us (pairwise)."""
        if partner not in self.group or partner == self.peer_id:
            raise ConfigError(f"cannot exchange with {partner!r}: not another member of {list(self.group)}")
        op = self._next_op()
        await self.transport.send(partner, Tag(self.round, op, 0), data)
        got = await self._recv(partner, op, 0)
        self._record(CollectiveStats(name, op, len(data)))
        return got

    # ------------------------------------------------------------------ all-reduce
    async def all_reduce(self, tensors: Sequence[torch.Tensor] | torch.Tensor, *, name: str = "all_reduce") -> list[torch.Tensor]:
        """Mean (or robust aggregate) of every member's ``tensors``; bit-identical on all members."""
        single = isinstance(tensors, torch.Tensor)
        like = [tensors] if single else list(tensors)
        flat = flatten(like)
        op = self._next_op()
        n = self.size
        bounds = chunk_bounds(flat.numel(), n)
        codec = self.codec
        lossy = codec is not None and not codec.lossless

        def enc(x: torch.Tensor, key: Any, chunk: int) -> bytes:
            if codec is None or x.numel() == 0:
                return _raw_encode(x)
            return codec.encode(x, key=key, seed=derive_seed(self.seed, self.round, op, chunk))

        def dec(data: bytes, numel: int, key: Any, chunk: int, src: str) -> torch.Tensor:
            if codec is None or numel == 0:
                return _raw_decode(data, numel, src)
            return codec.decode(data, (numel,), key=key, seed=derive_seed(self.seed, self.round, op, chunk)).reshape(-1)

        # Phase 0: reduce-scatter. Send chunk j of my vector to its owner j.
        payloads: dict[str, bytes] = {}
        own: torch.Tensor | None = None
        for j, peer in enumerate(self.group):
            lo, hi = bounds[j]
            piece = flat[lo:hi]
            if peer == self.peer_id:
                if lossy:
                    key = (name, "rs", self.peer_id, j)
                    own = dec(enc(piece, key, j), hi - lo, key, j, self.peer_id)
                else:
                    own = piece.clone()
            else:
                payloads[peer] = enc(piece, (name, "rs", self.peer_id, j), j)
        sent = await self._send_all(op, 0, payloads)

        lo, hi = bounds[self.rank]
        rows = []
        for src in self.group:
            if src == self.peer_id:
                assert own is not None
                rows.append(own)
            else:
                data = await self._recv(src, op, 0)
                rows.append(dec(data, hi - lo, (name, "rs", src, self.rank), self.rank, src))
        stacked = torch.stack(rows) if rows else torch.zeros(n, 0)

        # Reduce my chunk (fixed rank order), talking to the other owners for global statistics.
        reduced, dropped = await self._reduce_chunk(stacked, op)

        # Phase 1: all-gather of the reduced chunks.
        bcodec = getattr(codec, "stateless", codec) if codec is not None else None
        bseed = derive_seed(self.seed, self.round, op, self.rank, "bcast")
        if bcodec is None or reduced.numel() == 0:
            mine = _raw_encode(reduced)
        else:
            mine = bcodec.encode(reduced, key=None, seed=bseed)
        sent += await self._send_all(op, 1, {p: mine for p in self.group if p != self.peer_id})
        out = torch.empty_like(flat)
        for j, src in enumerate(self.group):
            clo, chi = bounds[j]
            data = mine if src == self.peer_id else await self._recv(src, op, 1)
            if bcodec is None or chi == clo:
                piece = _raw_decode(data, chi - clo, src)
            else:
                piece = bcodec.decode(data, (chi - clo,), key=None, seed=derive_seed(self.seed, self.round, op, j, "bcast")).reshape(-1)
            out[clo:chi] = piece
        self._record(CollectiveStats(name, op, sent, dropped))
        result = unflatten(out, like)
        return result

    async def _reduce_chunk(self, stacked: torch.Tensor, op: int) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Reduce this member's chunk; returns (value, dropped peer ids)."""
        if self.aggregator is None:
            acc = stacked[0].clone()
            for row in stacked[1:]:
                acc += row
            return acc / stacked.shape[0], ()
        gen = self.aggregator.steps(stacked, seed=derive_seed(self.seed, self.round, op, "aggregate"))
        phase = 2
        try:
            stat = next(gen)
            while True:
                total = await self._sum_statistic(stat, op, phase)
                phase += 1
                stat = gen.send(total)
        except StopIteration as stop:
            result = stop.value
        dropped = tuple(self.group[i] for i in result.dropped)
        for peer in dropped:
            log.warning("dropped the contribution of peer %s: non-finite values", peer)
        return result.value.to(torch.float32), dropped

    async def _sum_statistic(self, stat: torch.Tensor, op: int, phase: int) -> torch.Tensor:
        """Sum a small float64 statistic over every member's chunk, in rank order."""
        stat = stat.detach().to(torch.float64).contiguous()
        data = stat.numpy().tobytes()
        await self._send_all(op, phase, {p: data for p in self.group if p != self.peer_id})
        total = torch.zeros_like(stat)
        for src in self.group:
            if src == self.peer_id:
                part = stat
            else:
                raw = await self._recv(src, op, phase)
                if len(raw) != len(data):
                    raise AggregationError(f"peer {src!r} sent a statistic of {len(raw)} bytes, expected {len(data)}")
                part = torch.frombuffer(bytearray(raw), dtype=torch.float64).view(stat.shape)
            total += part
        return total

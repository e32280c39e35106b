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
  In groups of more than ``MIN_OWNERS`` (16) members a small vector is cut
  into fewer chunks (``owner_count``: at least 256 elements per chunk, at
  least 16 owners), owned by the first ranks; members without a chunk send
  their contribution to the owners and receive the reduced chunks, and
  nothing else (the audited all-reduce keeps one chunk per member).
- With a lossy codec, contributions are encoded per chunk (the owner's own
  contribution goes through encode/decode too, so every contribution is
  treated alike), and the reduced chunk is encoded once by its owner with the
  same codec (its error-feedback memory, if any, lives at the owner), as
  ``codecs.codec_for_mean`` decides: ``topk`` is re-sent with n times the
  entries (exact; bytes grow with n), ``ctopk`` under error feedback is
  re-sparsified to K per chunk with the owner's own memory (key ``(name,
  "ag")``, never decayed; bytes independent of n), ``crandk`` is re-sent on
  the positions every contribution shared; everyone, the owner included,
  decodes those same bytes under the same key,
  so results stay bit-identical. Both phases of one chunk share a seed, so
  rand-k sends the reduced chunk on the indices its contributions used.
- Error feedback (``+ef``, ``+ef21``, ``+econtrol``) survives regroups,
  aborts and resyncs:

  * Sender memory is per collective name over the *whole* flat vector, not
    per chunk: a member encodes all its chunks in one
    ``codec.encode_segments`` call (state key ``(name, "rs", me)``), i.e.
    ``c_j = C(x_j + e_j)`` per chunk and ``e <- x + e - D(c)`` over the
    vector. Chunk bounds (which move when the group size changes) therefore
    never change the memory's shape; within one group the bytes equal the
    old per-chunk memory's. The owner's memory of the reduced chunk it
    re-sends (key ``(name, "ag")``) is re-keyed by element: an element keeps
    it while the member still owns it, and it is dropped (one step's
    rounding of the mean) when the element moves to another owner.
  * Estimates (EF21's ``g``, EControl's ``h``) have a copy at the receiver
    (the owner of a chunk, per sender; and everyone, for the all-gathered
    chunks), which a new member or a new owner does not have. They are
    bound to the layout ``(group, shapes)`` of their collective name: the
    first collective of a name under another group (a member left or
    joined, or the order changed) makes every member forget that name's
    estimates, sender and receiver copies alike, before encoding
    (``codec.reset_estimates``). Error memory (``+ef``'s and EControl's
    ``e``) is kept. Every member of a group sees the same change at the same
    call, so all decode the same bytes to bit-identical values.
  * ``state_dict()`` / ``load_state_dict()`` hold all of it (codec state and
    the layouts) as tensors and plain values; algorithms keep it in their
    local state, so an aborted attempt that reloads the algorithm's
    ``state_dict`` also rolls the memory back, and the retry repeats bit for
    bit. A background collective whose handle was not collected yet is
    recorded as not started (its name's state from before it started),
    because a restored algorithm runs it again. ``reset_state()`` forgets
    everything (a joiner).
- ``all_gather(data)`` returns every member's bytes in rank order.
- ``exchange(partner, data)`` swaps bytes with one partner; for tensors,
  ``encode_tensor`` / ``exchange_encoded`` / ``decode_tensor`` put them
  through the run's codec (gossip, NoLoCo): this module is the only place
  that calls codecs, and the codec is the communicator's, one per run.
- ``start_all_reduce(tensors)`` starts an all-reduce in the background and
  returns a ``CollectiveHandle``; ``await handle.wait()`` gives the result.
  The collective takes its op id, round, epoch and group at the start, so
  collectives started later do not disturb it, and runs on a transport lane
  (``Transport.lane``): real overlap over TCP, the same overlap in virtual
  time in the simulator. No algorithm touches a clock.
- Every byte goes through the transport, so its counters see everything.
- Devices and dtypes: inputs may be any floating dtype on any device (a
  CUDA GPU included). What crosses the wire is CPU bytes: inputs are copied
  to the CPU before encoding (a CPU tensor is used as it is) and reduced
  there in float32, so the bytes and the result do not depend on where the
  model runs. ``all_reduce`` (and ``start_all_reduce``'s handle) returns
  each result on the device and in the dtype of its input;
  ``decode_tensor`` / ``exchange_encoded`` / ``as_sent`` return float32
  vectors on the communicator's ``device`` (the device of the model it
  serves, CPU by default). Tested on the CPU only (no GPU in CI).
- Non-finite contributions are never applied: a member whose own
  contribution holds a NaN or inf withholds it whole (empty payloads to
  every owner, logged), and an owner rejects any row that is empty,
  malformed or not all finite (logged with the sender). The mean is over
  the rows kept; if no row of a chunk is kept the collective raises
  ``AggregationError`` (nothing is applied).

Fault tolerance (used by the swarm runtime; the simulator leaves it off):

- ``epoch``: a namespace for one attempt of one round. With ``epoch == 0``
  (the default, and always in the simulator) tags are ``Tag(round, op,
  phase)``. With ``epoch > 0`` the tag's round field is ``(epoch << 32) |
  (round & 0xFFFFFFFF)``: every attempt gets fresh tags, so a stale frame of
  an aborted attempt can never be matched by a later one.
  ``regroup(group, epoch=e)`` switches group and namespace and restarts the
  op ids at 0 (every member of an attempt starts from the same op id).
  ``skip()`` consumes one op id without communicating.
- ``link``: an optional ``LinkEstimator``. When set, every collective runs
  under a deadline derived from the measured link:

      D = deadline_scale * max(floor, k * (phases * rtt + bytes / bandwidth))

  where ``bytes`` is what this member sends plus receives in the operation,
  ``phases`` the number of message rounds, and ``rtt`` / ``bandwidth`` are
  exponentially weighted averages of recent measurements (``observe_rtt``,
  and the bytes and duration of every completed collective). A collective
  that misses its deadline, or loses a member (``PeerError`` from the
  transport), raises ``CollectiveAborted`` and returns nothing: the caller
  never sees a partial result.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..codecs import codec_for_mean
from ..codecs.base import all_finite
from ..errors import AggregationError, CodecError, ConfigError, PeerError
from ..seeding import derive_seed
from ..transport.base import Tag, Transport

log = logging.getLogger(__name__)


class CodecLike(Protocol):
    spec: str
    lossless: bool

    def encode(self, x: torch.Tensor, *, key: Any = None, seed: int = 0) -> bytes: ...

    def decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Any = None, seed: int = 0) -> torch.Tensor: ...


def _raw_encode(x: torch.Tensor) -> memoryview:
    """The raw little-endian fp32 bytes of ``x``: a view of ``x`` itself when
    it already is a contiguous fp32 CPU tensor (no copy), else of a converted
    CPU copy (from any device)."""
    x = x.detach()
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        x = x.to(device="cpu", dtype=torch.float32).contiguous()
    if x.numel() == 0:
        return memoryview(b"")
    return memoryview(x.numpy()).cast("B")


def _raw_decode(data: bytes | bytearray | memoryview, numel: int, src: str) -> torch.Tensor:
    """fp32 values of ``data``; wraps a ``bytearray`` (what TCP's recv returns)
    without copying it, copies anything else into a writable buffer."""
    if len(data) != 4 * numel:
        raise AggregationError(f"peer {src!r} sent {len(data)} bytes for {numel} float32 values (expected {4 * numel})")
    if numel == 0:
        return torch.zeros(0, dtype=torch.float32)
    return torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.float32)


class _BufferPool:
    """fp32 buffers of the plain-mean all-reduce, kept between calls so that a
    steady run of same-size collectives touches no fresh memory (a fresh
    64 MiB buffer costs ~16k page faults, about as much as copying it
    twice). A buffer is handed out again only once nothing references it
    any more: the pool's own reference and the check's are its only ones
    (CPython reference counts; a tensor made by ``torch.frombuffer``, and
    every view of it, holds one). Only buffers of at least ``smallest``
    bytes are kept, ``cap`` bytes in all; the others are plain
    allocations."""

    def __init__(self, cap: int, smallest: int = 1 << 20) -> None:
        self.cap, self.smallest = cap, smallest
        self._bufs: dict[int, list[bytearray]] = {}
        self._held = 0

    def take(self, numel: int) -> torch.Tensor:
        nbytes = 4 * numel
        if nbytes < self.smallest:
            return torch.empty(numel, dtype=torch.float32)
        bufs = self._bufs.setdefault(nbytes, [])
        for buf in bufs:
            if sys.getrefcount(buf) <= 3:  # the list, ``buf`` and getrefcount's argument: nobody else
                return torch.frombuffer(buf, dtype=torch.float32)
        buf = bytearray(nbytes)
        if self._held + nbytes <= self.cap:
            bufs.append(buf)
            self._held += nbytes
        return torch.frombuffer(buf, dtype=torch.float32)


def _writable_bytes(t: torch.Tensor) -> memoryview:
    """A writable byte view of the contiguous CPU tensor ``t`` (for ``recv_into``)."""
    if t.numel() == 0:
        return memoryview(bytearray())
    return memoryview(t.numpy()).cast("B")


def _all_nan(row: torch.Tensor) -> bool:
    """``isnan(row).all()`` (an empty row is not all-NaN), looking at the
    first value before scanning the row."""
    if row.numel() == 0:
        return False
    first = float(row[0])
    return first != first and bool(torch.isnan(row).all())


def _key_name(key: Any) -> Any:
    """The collective name a codec state key belongs to (its first field), else None."""
    return key[0] if isinstance(key, tuple) and key else None


def chunk_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` into ``parts`` contiguous chunks, sizes differing by at most one."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


#: Groups of up to this many members: every member owns a chunk of an all-reduce.
MIN_OWNERS = 16
#: In larger groups, at most one owner per this many elements (at least ``MIN_OWNERS`` owners).
MIN_CHUNK_ELEMENTS = 256


def owner_count(members: int, numel: int) -> int:
    """How many members own a chunk of an all-reduce of ``numel`` elements in a
    group of ``members``: ``min(members, max(MIN_OWNERS, ceil(numel /
    MIN_CHUNK_ELEMENTS)))``. Every member of a group of up to ``MIN_OWNERS``
    (16); in a larger group no more owners than chunks of
    ``MIN_CHUNK_ELEMENTS`` (256) elements, so that a 1,000-member all-reduce
    of a small model sends ``2 * (members - 1) * owners`` messages of useful
    size instead of ``2 * members * (members - 1)`` nearly empty ones. The
    owners are the first ranks; the others own empty chunks and exchange no
    message of that collective's reduce-scatter or all-gather with anyone
    but the owners."""
    return min(members, max(MIN_OWNERS, -(-numel // MIN_CHUNK_ELEMENTS)))


def owner_bounds(total: int, members: int) -> list[tuple[int, int]]:
    """``chunk_bounds`` over the ``owner_count(members, total)`` owners, then an
    empty chunk ``(total, total)`` for each other member."""
    owners = owner_count(members, total)
    return chunk_bounds(total, owners) + [(total, total)] * (members - owners)


def tensor_plan(shapes: Sequence[tuple[int, ...]], parts: int) -> list[list[tuple[int, int, tuple[int, ...]]]]:
    """Assign whole tensors to ``parts`` owners, balancing elements greedily
    (largest first, ties to the lowest owner). Each owner gets a list of
    ``(start, stop, shape)`` segments of the flat vector, in flat order."""
    offsets, at = [], 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        offsets.append((at, at + n, tuple(shape)))
        at += n
    load = [0] * parts
    owner_of = {}
    for idx in sorted(range(len(shapes)), key=lambda i: (-(offsets[i][1] - offsets[i][0]), i)):
        j = min(range(parts), key=lambda k: (load[k], k))
        owner_of[idx] = j
        load[j] += offsets[idx][1] - offsets[idx][0]
    plan: list[list[tuple[int, int, tuple[int, ...]]]] = [[] for _ in range(parts)]
    for idx, seg in enumerate(offsets):
        plan[owner_of[idx]].append(seg)
    return plan


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat float32 vector."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors])


def like_inputs(results: Sequence[torch.Tensor], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``results[i]`` on the device and in the dtype of ``like[i]`` (a result
    already there is returned as it is, without a copy)."""
    out = []
    for r, t in zip(results, like):
        if r.device != t.device or r.dtype != t.dtype:
            r = r.to(device=t.device, dtype=t.dtype)
        out.append(r)
    return out


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cut ``flat`` back into tensors shaped like ``like``."""
    out, start = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[start : start + n].view(t.shape).to(t.dtype))
        start += n
    return out


#: Collectives kept in ``Communicator.history``.
HISTORY = 4096
#: Bytes of buffers (results and received rows) the plain-mean all-reduce keeps between calls.
BUFFER_CAP = 512 << 20


class CollectiveHandle:
    """A collective running in the background (``Communicator.start_all_reduce``)."""

    def __init__(self, comm: "Communicator", lane: Transport, task: "asyncio.Future[list[torch.Tensor]]",
                 name: str, epoch: int) -> None:
        self._comm = comm
        self._lane = lane
        self._task = task
        self.name = name
        self.epoch = epoch
        self.group: tuple[str, ...] = comm.group

    def done(self) -> bool:
        return self._task.done()

    async def wait(self) -> list[torch.Tensor]:
        """The collective's result; raises what it raised (e.g. ``CollectiveAborted``).
        The peer's clock waits for the collective's completion."""
        try:
            return await asyncio.shield(self._task)
        finally:
            if self._task.done():
                self._comm.transport.join_lane(self._lane)
                self._comm._collected(self)

    def cancel(self) -> None:
        self._task.cancel()
        self._comm._collected(self)


class CollectiveAborted(PeerError):
    """A collective did not complete (member lost, or deadline missed); its
    partial result was discarded."""


@dataclass
class LinkEstimator:
    """Measured round-trip time and bandwidth of recent traffic, and the
    deadline they imply (see the module docstring for the formula).

    ``rtt`` is in seconds, ``bandwidth`` in bytes per second; both start at
    the (pessimistic) priors until measured. Pure bookkeeping: the caller
    supplies every measurement."""

    k: float = 4.0
    floor: float = 2.0
    rtt: float = 0.1
    bandwidth: float = 1e6
    alpha: float = 0.3
    samples: int = 0
    rtt_samples: int = 0

    def observe_rtt(self, seconds: float) -> None:
        """Fold in one measured round trip."""
        if seconds >= 0:
            self.rtt = seconds if self.rtt_samples == 0 else (1 - self.alpha) * self.rtt + self.alpha * seconds
            self.rtt_samples += 1

    def observe_transfer(self, nbytes: int, seconds: float, phases: int = 1) -> None:
        """Fold in one completed operation that moved ``nbytes`` in ``seconds``
        over ``phases`` message rounds."""
        if nbytes <= 0 or seconds <= 0:
            return
        wire = max(seconds - phases * self.rtt, 0.25 * seconds)
        sample = nbytes / wire
        self.bandwidth = sample if self.samples == 0 else (1 - self.alpha) * self.bandwidth + self.alpha * sample
        self.samples += 1

    def deadline(self, nbytes: int, phases: int = 1) -> float:
        """Seconds allowed for an operation moving ``nbytes`` in ``phases`` rounds."""
        return max(self.floor, self.k * (phases * self.rtt + nbytes / self.bandwidth))


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
        device: str | torch.device | None = None,
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
        #: Where the vectors this member decodes for its algorithm go
        #: (``decode_tensor``): the model's device; see "Devices and dtypes".
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.round = 0
        #: Attempt namespace (see the module docstring); 0 = plain tags.
        self.epoch = 0
        #: Measured link; when set, collectives run under derived deadlines.
        self.link: LinkEstimator | None = None
        #: Multiplies every derived deadline (the swarm doubles it on retries).
        self.deadline_scale = 1.0
        self._op = 0
        #: The most recent collectives (bounded: a long run must not grow with its length).
        self.history: collections.deque[CollectiveStats] = collections.deque(maxlen=HISTORY)
        self.listeners: list[Callable[[CollectiveStats], None]] = []
        #: Result and row buffers of the plain-mean all-reduce, reused between calls.
        self._buffers = _BufferPool(BUFFER_CAP)
        #: Collectives started with ``start_all_reduce`` and not finished.
        self.in_flight: set[CollectiveHandle] = set()
        #: Per collective name, the (group, shapes) its codec estimates were
        #: built in; a different one resets them (see "Error feedback").
        self._layouts: dict[str, tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]] = {}
        #: Background collectives whose result was not collected yet, with the
        #: codec state of their name from before they started (``state_dict``).
        self._uncollected: dict[CollectiveHandle, tuple[str, dict[str, Any], Any]] = {}
        #: Optional ``async hook(name, op, flat) -> flat`` that sees (and may
        #: replace) this member's contribution before it is sent. The simulator
        #: uses it to play Byzantine peers; honest runtimes leave it None.
        self.contribution_hook: Callable[[str, int, torch.Tensor], Awaitable[torch.Tensor]] | None = None
        #: With a ``comm.audit.KeyBook``, every all-reduce is the audited one
        #: (``comm/audit.py``): it holds when chunk owners lie, scores every
        #: contribution and leaves an ``AuditOutcome`` in ``audits``.
        self.keybook: Any | None = None
        #: Auditors per chunk in the audited all-reduce.
        self.audit_shadows = 1
        #: Red-teaming only: how this member deviates (``comm.audit.Behaviour``).
        self.behaviour: Any | None = None
        #: Thresholds for ``verify.scores.judge`` (None: its defaults).
        self.score_thresholds: Any | None = None
        self.audits: collections.deque[Any] = collections.deque(maxlen=64)
        #: The audited all-reduce's memory of recent slice digests per (name, group, sender).
        self.replay_memory: dict[Any, Any] = {}
        #: The audited all-reduce's recent cosines per member (its long-term score).
        self.score_history: dict[str, Any] = {}
        if aggregator is not None and hasattr(aggregator, "check") and len(self.group) > 1:
            aggregator.check(len(self.group))  # a swarm peer starts alone: its groups are checked when used

    @property
    def size(self) -> int:
        return len(self.group)

    @property
    def peer_id(self) -> str:
        return self.transport.peer_id

    def regroup(self, group: Sequence[str], *, epoch: int) -> None:
        """Switch to ``group`` and the attempt namespace ``epoch`` (> 0); op ids restart at 0."""
        if self.peer_id not in group:
            raise ConfigError(f"peer {self.peer_id!r} is not in its group {list(group)}")
        if len(set(group)) != len(group):
            raise ConfigError(f"group has duplicate peers: {list(group)}")
        if not 0 < epoch < 2**31:
            raise ConfigError(f"epoch must be in [1, 2**31), got {epoch}")
        self.group = tuple(group)
        self.rank = self.group.index(self.peer_id)
        self.epoch = epoch
        self._op = 0

    # ------------------------------------------------------------------ state as data
    def state_dict(self) -> dict[str, Any]:
        """This member's codec state (error-feedback memory, estimates, warm
        starts) as plain values and tensor copies; see "Error feedback" in the
        module docstring. A collective started in the background whose result
        was not collected yet is recorded as not started (its name's state
        from before it started), since a restored algorithm runs it again."""
        codec = self.codec
        pending: dict[str, tuple[dict[str, Any], Any]] = {}
        for name, pre, layout in self._uncollected.values():
            pending.setdefault(name, (pre, layout))  # the oldest one of a name
        layouts = dict(self._layouts)
        rollback = []
        for name, (pre, layout) in pending.items():
            rollback.append([name, pre])
            if layout is None:
                layouts.pop(name, None)
            else:
                layouts[name] = layout
        if codec is None or not hasattr(codec, "state_dict"):
            state: dict[str, Any] = {}
        elif pending:
            state = codec.state_dict(lambda k: _key_name(k) not in pending)
        else:
            state = codec.state_dict()
        return {"codec": state, "rollback": rollback,
                "layouts": [[name, list(group), [list(s) for s in shapes]] for name, (group, shapes) in layouts.items()]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output exactly (a retried attempt then
        repeats its collectives bit for bit)."""
        codec = self.codec
        if codec is not None and hasattr(codec, "load_state_dict"):
            codec.load_state_dict(sd.get("codec", {}))
            for name, pre in sd.get("rollback", []):
                codec.load_state_dict(pre, lambda k, name=name: _key_name(k) == name)
        self._layouts.clear()
        for name, group, shapes in sd.get("layouts", []):
            self._layouts[str(name)] = (tuple(str(p) for p in group), tuple(tuple(int(d) for d in s) for s in shapes))
        self._uncollected.clear()

    def reset_state(self) -> None:
        """Forget all codec state (a joiner, which has only the shared state)."""
        if self.codec is not None and hasattr(self.codec, "reset"):
            self.codec.reset(all_keys=True)
        self._layouts.clear()
        self._uncollected.clear()

    def _collected(self, handle: "CollectiveHandle") -> None:
        self._uncollected.pop(handle, None)

    def skip(self) -> int:
        """Consume one op id without communicating (a member that sits an
        operation out keeps its op ids aligned with the others); returns it."""
        return self._next_op()

    def tag(self, op: int, phase: int) -> Tag:
        """The tag of message ``phase`` of operation ``op`` in the current round and epoch."""
        if self.epoch == 0:
            return Tag(self.round, op, phase)
        return Tag((self.epoch << 32) | (self.round & 0xFFFFFFFF), op, phase)

    async def _guarded(self, name: str, nbytes: int, phases: int, coro: Awaitable[Any]) -> Any:
        """Run one collective under the link-derived deadline (if ``link`` is set)."""
        link = self.link
        if link is None:
            return await coro
        limit = self.deadline_scale * link.deadline(nbytes, phases)
        t0 = self.transport.now()
        try:
            async with asyncio.timeout(limit):
                result = await coro
        except TimeoutError:
            raise CollectiveAborted(
                f"{name} (round {self.round}, epoch {self.epoch}) at {self.peer_id!r} missed its deadline of "
                f"{limit:.2f} s = {self.deadline_scale:g} * max({link.floor:g}, {link.k:g} * ({phases} * "
                f"{link.rtt:.4f} s + {nbytes} B / {link.bandwidth:.0f} B/s))") from None
        except CollectiveAborted:
            raise
        except PeerError as exc:
            raise CollectiveAborted(f"{name} (round {self.round}, epoch {self.epoch}) at {self.peer_id!r} "
                                    f"lost a member: {exc}") from exc
        link.observe_transfer(nbytes, self.transport.now() - t0, phases)
        return result

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
            await self.transport.send(dst, self.tag(op, phase), data)
            sent += len(data)
        return sent

    async def _recv(self, src: str, op: int, phase: int) -> bytes:
        return await self.transport.recv(src, self.tag(op, phase), timeout=self.timeout)

    # ------------------------------------------------------------------ non-blocking
    def start_all_reduce(self, tensors: Sequence[torch.Tensor], *, name: str = "all_reduce") -> "CollectiveHandle":
        """Start ``all_reduce(tensors)`` in the background and return at once.

        The inputs are copied now, so the caller may keep changing them. The
        collective takes its operation id, round, epoch and group now (so
        later collectives may start before it finishes) and runs on a lane of
        the transport (``Transport.lane``): over TCP it really overlaps the
        caller's computation; in the simulator its virtual clock does. Await
        ``handle.wait()`` for the result (the peer's clock then waits for the
        collective, as a real peer would block on it)."""
        frozen = [t.detach().clone() for t in tensors]
        codec = self.codec
        pre = codec.state_dict(lambda k: _key_name(k) == name) if codec is not None and hasattr(codec, "state_dict") else {}
        worker = copy.copy(self)
        worker.transport = self.transport.lane()
        worker._op = self._next_op()
        worker.history = self.history
        worker.listeners = self.listeners
        task = asyncio.ensure_future(worker.all_reduce(frozen, name=name))
        handle = CollectiveHandle(self, worker.transport, task, name, self.epoch)
        handle.group = worker.group
        self.in_flight.add(handle)
        self._uncollected[handle] = (name, pre, self._layouts.get(name))

        def finished(t: "asyncio.Future[Any]") -> None:
            self.in_flight.discard(handle)
            if not t.cancelled():
                t.exception()  # retrieved: a dropped handle's failure is not "never retrieved"

        task.add_done_callback(finished)
        return handle

    def oldest_epoch_in_flight(self) -> int | None:
        """The attempt namespace of the oldest collective still running in the background."""
        live = [h.epoch for h in self.in_flight if not h.done()]
        return min(live) if live else None

    # ------------------------------------------------------------------ tensors to one peer
    def _p2p_seed(self, sender: str) -> int:
        return derive_seed(self.seed, "p2p", self.round, sender)

    def encode_tensor(self, flat: torch.Tensor) -> bytes:
        """This member's flat fp32 vector as it travels to single peers (the run's codec, else raw fp32)."""
        if self.codec is None:
            return bytes(_raw_encode(flat))
        return self.codec.encode(flat.detach().reshape(-1), key=None, seed=self._p2p_seed(self.peer_id))

    def decode_tensor(self, data: bytes, numel: int, sender: str) -> torch.Tensor:
        """Inverse of ``encode_tensor`` for a vector of ``numel`` values from ``sender``;
        a payload of the wrong size raises ``CodecError``/``AggregationError`` naming the sender."""
        if self.codec is None:
            return self._on_device(_raw_decode(data, numel, sender))
        expected = self.codec.encoded_size((numel,))
        if len(data) != expected:
            raise CodecError(f"peer {sender!r} sent {len(data)} bytes for {numel} values, expected {expected} ({self.codec.spec})")
        return self._on_device(self.codec.decode(data, (numel,), key=None, seed=self._p2p_seed(sender)).reshape(-1))

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a CPU tensor) on ``self.device``; ``t`` itself on the CPU."""
        return t if t.device == self.device else t.to(self.device)

    def as_sent(self, flat: torch.Tensor, data: bytes) -> torch.Tensor:
        """What the other members decode from ``data = encode_tensor(flat)``:
        ``flat`` itself without a codec or with a lossless one."""
        if self.codec is None or self.codec.lossless:
            return flat
        return self.decode_tensor(data, flat.numel(), self.peer_id)

    async def exchange_encoded(self, partner: str, data: bytes, numel: int, *, name: str = "exchange") -> torch.Tensor | None:
        """Swap vectors of ``numel`` fp32 values with ``partner``: ``data`` is ours,
        from ``encode_tensor`` (b"" offers nothing). Returns the partner's vector
        decoded with the run's codec, or None when it offered nothing."""
        got = await self.exchange(partner, data, name=name)
        return self.decode_tensor(got, numel, partner) if got else None

    # ------------------------------------------------------------------ all-gather
    async def all_gather(self, data: bytes, *, name: str = "all_gather") -> list[bytes]:
        """Every member's ``data``, in rank order."""
        nbytes = 2 * (self.size - 1) * len(data)
        return await self._guarded(name, nbytes, 1, self._all_gather(data, name))

    async def _all_gather(self, data: bytes, name: str) -> list[bytes]:
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
        return await self._guarded(name, 2 * len(data), 1, self._exchange(partner, data, name))

    async def _exchange(self, partner: str, data: bytes, name: str) -> bytes:
        op = self._next_op()
        await self.transport.send(partner, self.tag(op, 0), data)
        got = await self._recv(partner, op, 0)
        self._record(CollectiveStats(name, op, len(data)))
        return got

    # ------------------------------------------------------------------ all-reduce
    async def all_reduce(self, tensors: Sequence[torch.Tensor] | torch.Tensor, *, name: str = "all_reduce") -> list[torch.Tensor]:
        """Mean (or robust aggregate) of every member's ``tensors``; bit-identical on all members.

        ``tensors``: floating tensors of any shapes, dtypes and devices.
        Returns one tensor per input, of its shape, dtype and device (see
        "Devices and dtypes"); the reduction itself runs on the CPU."""
        like = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        host = [t if t.device.type == "cpu" else t.detach().to("cpu") for t in like]
        codec = self.codec
        if self.link is None:
            out = await self._all_reduce(host, name, codec)
        else:
            numel = sum(t.numel() for t in host)
            # raw fp32 upper bound of what this member sends plus receives: 2 * 2 (n-1)/n * 4 * numel
            nbytes = 16 * (self.size - 1) * numel // max(self.size, 1)
            phases = 2 if self.aggregator is None else 4
            if self.keybook is not None:
                phases, nbytes = phases + 4, nbytes * 3 // 2
            out = await self._guarded(name, nbytes, phases, self._all_reduce(host, name, codec))
        return like_inputs(out, like)

    async def _all_reduce(self, tensors: Sequence[torch.Tensor] | torch.Tensor, name: str, codec: Any) -> list[torch.Tensor]:
        single = isinstance(tensors, torch.Tensor)
        like = [tensors] if single else list(tensors)
        if self.keybook is not None:
            from .audit import AuditedReduce  # noqa: PLC0415 - audit imports this module
            return await AuditedReduce(self, like, name).run()
        if codec is None and self.aggregator is None and self.contribution_hook is None:
            return await self._plain_mean(like, name)
        if self.aggregator is not None and hasattr(self.aggregator, "check"):
            try:
                self.aggregator.check(self.size)
            except ConfigError as exc:
                raise AggregationError(f"{name}: the aggregator cannot run in a group of {self.size}: {exc}") from None
        flat = flatten(like)
        op = self._next_op()
        if self.contribution_hook is not None:
            flat = await self.contribution_hook(name, op, flat)
        owners = owner_count(self.size, flat.numel())
        if codec is not None and getattr(codec, "whole_tensors", False):
            plan = tensor_plan([tuple(t.shape) for t in like], owners) + [[] for _ in range(self.size - owners)]
        else:
            plan = [[(lo, hi, (hi - lo,))] for lo, hi in chunk_bounds(flat.numel(), owners)]
            plan += [[(flat.numel(), flat.numel(), (0,))]] * (self.size - owners)  # one shared (read-only) empty chunk
        owner_ids = self.group[:owners]
        is_owner = self.rank < owners
        lossy = codec is not None and not codec.lossless

        def seed_for(owner: int, seg: int, phase: str) -> int:
            # The same seed in both phases: rand-k then picks the same indices
            # for the contributions and for the reduced chunk.
            return derive_seed(self.seed, self.round, op, owner, seg)

        def encode(c: Any, owner: int, vec: torch.Tensor, key: Any, phase: str) -> bytes:
            """Encode owner's chunk ``vec`` (flat) segment by segment."""
            if c is None:
                return _raw_encode(vec)
            parts, at = [], 0
            for k, (lo, hi, shape) in enumerate(plan[owner]):
                piece = vec[at : at + hi - lo].view(shape)
                at += hi - lo
                parts.append(c.encode(piece, key=None if key is None else (*key, k), seed=seed_for(owner, k, phase)) if hi > lo else b"")
            return b"".join(parts)

        def decode(c: Any, owner: int, data: bytes, key: Any, phase: str, src: str) -> torch.Tensor:
            numel = sum(hi - lo for lo, hi, _ in plan[owner])
            if c is None:
                return _raw_decode(data, numel, src)
            sizes = [c.encoded_size(shape) if hi > lo else 0 for lo, hi, shape in plan[owner]]
            if len(data) != sum(sizes):
                raise CodecError(f"peer {src!r} sent {len(data)} bytes for chunk {owner} of {name}, expected {sum(sizes)} ({c.spec})")
            out, at = [], 0
            view = memoryview(data)
            for k, ((lo, hi, shape), size) in enumerate(zip(plan[owner], sizes)):
                if hi > lo:
                    piece = c.decode(view[at : at + size], shape, key=None if key is None else (*key, k), seed=seed_for(owner, k, phase))
                    out.append(piece.reshape(-1))
                at += size
            return torch.cat(out) if out else torch.zeros(0)

        def gather_chunk(owner: int) -> torch.Tensor:
            segs = [flat[lo:hi] for lo, hi, _ in plan[owner]]
            return torch.cat(segs) if segs else torch.zeros(0)

        def encode_memory(c: Any, owners: Sequence[int], vec: torch.Tensor, key: Any, phase: str,
                          decay: float | None = None) -> list[bytes]:
            """Encode the chunks of ``owners`` (``vec``: their values, concatenated
            in owner order) with the feedback codec ``c``, whose sender state
            for ``key`` spans the vector (see "Error feedback"); one payload per owner."""
            segs = [(j, k, seg) for j in owners for k, seg in enumerate(plan[j])]
            datas = c.encode_segments(vec, [seg for _, _, seg in segs], key=key,
                                      seeds=[seed_for(j, k, phase) for j, k, _ in segs],
                                      inner_keys=[(*key, j, k) for j, k, _ in segs], decay=decay)
            parts: dict[int, list[bytes]] = {j: [] for j in owners}
            for (j, _, _), data in zip(segs, datas):
                parts[j].append(data)
            return [b"".join(parts[j]) for j in owners]

        feedback = codec is not None and hasattr(codec, "encode_segments")
        if codec is not None and hasattr(codec, "reset_estimates"):
            # the estimates (EF21 g, EControl h) are bound to the group and the
            # chunk layout; every member sees the same change at the same call
            layout = (self.group, tuple(tuple(t.shape) for t in like))
            if self._layouts.get(name) != layout:
                if name in self._layouts:
                    log.info("%s: group or layout changed; codec estimates restart (error memory kept)", name)
                codec.reset_estimates(lambda k: _key_name(k) == name)
                self._layouts[name] = layout

        # Phase 0: reduce-scatter. Send my part of chunk j to its owner j. A
        # contribution with a non-finite value is withheld whole (empty
        # payloads): every owner then rejects it, so it is never applied.
        payloads: dict[str, bytes] = {}
        own: torch.Tensor | None = None
        withheld = not all_finite(flat)
        if withheld:
            log.warning("our contribution to %s (round %d) has non-finite values: sending none, it is rejected",
                        name, self.round)
        encoded: list[bytes] | None = None
        if feedback and not withheld:
            whole = flat if not getattr(codec, "whole_tensors", False) else torch.cat(
                [gather_chunk(j) for j in range(self.size)])
            encoded = encode_memory(codec, range(self.size), whole, (name, "rs", self.peer_id), "rs")
        for j, peer in enumerate(self.group):
            if j >= owners and peer != self.peer_id:
                continue  # it owns no chunk: nothing to send it
            key = (name, "rs", self.peer_id, j)
            if withheld:
                if peer == self.peer_id:
                    own = torch.full((sum(hi - lo for lo, hi, _ in plan[j]),), float("nan"))
                else:
                    payloads[peer] = b""
            elif peer == self.peer_id:
                if not lossy:
                    own = gather_chunk(j).clone()
                else:
                    mine = encoded[j] if encoded is not None else encode(codec, j, gather_chunk(j), key, "rs")
                    own = decode(codec, j, mine, key, "rs", peer)
            else:
                payloads[peer] = encoded[j] if encoded is not None else encode(codec, j, gather_chunk(j), key, "rs")
        sent = await self._send_all(op, 0, payloads)

        rows: list[torch.Tensor] = []
        rejected: list[str] = [self.peer_id] if withheld else []
        assert own is not None
        for src in self.group if is_owner else ():  # a member without a chunk: nothing arrives
            if src == self.peer_id:
                rows.append(own)
                continue
            data = await self._recv(src, op, 0)
            try:
                if not data and own.numel():
                    raise AggregationError(f"peer {src!r} sent no contribution (it withheld a non-finite one)")
                row = decode(codec, self.rank, data, (name, "rs", src, self.rank), "rs", src)
                if not all_finite(row):
                    raise AggregationError(f"peer {src!r} sent non-finite values")
                rows.append(row)
            except (CodecError, AggregationError) as exc:
                # A bad contribution costs that contribution, never the run.
                log.warning("rejected the contribution of peer %s to %s: %s", src, name, exc)
                rows.append(torch.full_like(own, float("nan")))
                rejected.append(src)
        if len(rejected) == len(self.group) and own.numel():
            raise AggregationError(f"{name} (round {self.round}): every member's contribution was rejected "
                                   f"(non-finite or malformed); nothing to apply")
        stacked = torch.stack(rows) if is_owner else own.new_empty((self.size, 0))

        # Reduce my chunk (fixed rank order), talking to the other owners for global statistics.
        reduced, dropped = await self._reduce_chunk(stacked, op)
        dropped = tuple(sorted(set(dropped) | set(rejected), key=self.group.index))

        # Phase 1: all-gather of the reduced chunks, encoded once by their owner
        # (error feedback, if any, lives at the owner); everyone, the owner
        # included, decodes the same bytes under the same key, so the results
        # and any receiver-side codec state stay bit-identical.
        bcodec = codec_for_mean(codec, self.size) if lossy else None
        if bcodec is not None and hasattr(bcodec, "encode_segments"):
            mine = encode_memory(bcodec, [self.rank], reduced, (name, "ag"), "ag", decay=1.0)[0]
        else:
            mine = encode(bcodec, self.rank, reduced, (name, "ag", self.rank), "ag")
        sent += await self._send_all(op, 1, {p: mine for p in self.group if p != self.peer_id and is_owner})
        out = torch.empty_like(flat)
        for j, src in enumerate(owner_ids):
            data = mine if src == self.peer_id else await self._recv(src, op, 1)
            piece = decode(bcodec, j, data, (name, "ag", j), "ag", src)
            at = 0
            for lo, hi, _ in plan[j]:
                out[lo:hi] = piece[at : at + hi - lo]
                at += hi - lo
        self._record(CollectiveStats(name, op, sent, dropped))
        return unflatten(out, like)

    async def _plain_mean(self, like: list[torch.Tensor], name: str) -> list[torch.Tensor]:
        """The plain-mean all-reduce (no codec, aggregator or hook) without
        intermediate copies; same messages, same drops and bit-identical
        results as the general path.

        Sends are views of the input (one fp32 contiguous tensor is not even
        flattened). Every row and gathered chunk is received with
        ``recv_into`` into its final place: the gathered chunks straight into
        the output, the rows of this member's chunk into row buffers (both
        reused between calls, see ``_BufferPool``). On a transport with
        ``posted_receives`` (TCP) all receives are posted before the first
        send and the sends of a phase run concurrently, so the kernel writes
        each payload where it is used. The owner sums its chunk in rank
        order into its part of the output, ``acc = row_1 + row_2; acc +=
        row_i; acc /= len(ok)`` (the same float operations as ``acc =
        row_1.clone(); acc += row_2 ...``), skipping rows that are empty (a
        member that withheld its non-finite contribution) or of the wrong
        size. A finite sum proves every row finite (a NaN or inf in any row
        makes its element NaN or inf), so rows are checked one by one only
        when the sum is not finite; those with a non-finite value are then
        rejected and the sum is taken again over the rest."""
        if len(like) == 1 and like[0].dtype == torch.float32 and like[0].is_contiguous():
            flat = like[0].detach().reshape(-1)
        else:
            flat = flatten(like)
        op = self._next_op()
        bounds = owner_bounds(flat.numel(), self.size)
        owners = owner_count(self.size, flat.numel())
        is_owner = self.rank < owners
        lo, hi = bounds[self.rank]
        transport = self.transport
        posted = transport.posted_receives
        out = self._buffers.take(flat.numel())
        acc = out[lo:hi]
        remote = [p for p in self.group if p != self.peer_id]
        senders = remote if is_owner else []  # who sends this member a row of its chunk
        rows = {src: self._buffers.take(hi - lo) for src in senders}
        pending: list[Any] = []

        def receive(src: str, phase: int, into: torch.Tensor) -> Any:
            aw = transport.recv_into(src, self.tag(op, phase), _writable_bytes(into), timeout=self.timeout)
            if posted:
                aw = asyncio.ensure_future(aw)
            pending.append(aw)
            return aw

        async def send_all(phase: int, payloads: dict[str, Any]) -> int:
            if posted:  # concurrently: every link is busy at once
                sends = [asyncio.ensure_future(transport.send(p, self.tag(op, phase), d)) for p, d in payloads.items()]
                pending.extend(sends)
                await asyncio.gather(*sends)
            else:
                for p, d in payloads.items():
                    await transport.send(p, self.tag(op, phase), d)
            return sum(len(d) for d in payloads.values())

        def mean_of(kept: list[torch.Tensor]) -> None:
            if len(kept) == 1:
                acc.copy_(kept[0])
            elif kept:
                torch.add(kept[0], kept[1], out=acc)
                for row in kept[2:]:
                    acc.add_(row)

        try:
            got0 = {src: receive(src, 0, rows[src]) for src in senders} if posted else {}
            got1 = {src: receive(src, 1, out[a:b]) for src, (a, b) in zip(self.group[:owners], bounds)
                    if src != self.peer_id} if posted else {}
            withheld = not all_finite(flat)
            if withheld:
                log.warning("our contribution to %s (round %d) has non-finite values: sending none, it is rejected",
                            name, self.round)
            # one payload per owner: its chunk of our vector
            sent = await send_all(0, {peer: b"" if withheld else _raw_encode(flat[a:b])
                                      for peer, (a, b) in zip(self.group[:owners], bounds) if peer != self.peer_id})
            kept: list[tuple[str, torch.Tensor]] = []
            rejected: list[str] = [self.peer_id] if withheld else []
            for src in self.group:
                if src == self.peer_id:
                    if not withheld:
                        kept.append((src, flat[lo:hi]))
                    continue
                if not is_owner:
                    continue  # no chunk: no rows arrive
                n = await (got0[src] if posted else receive(src, 0, rows[src]))
                if n == 4 * (hi - lo):
                    kept.append((src, rows[src]))
                    continue
                # A bad contribution costs that contribution, never the run.
                why = ("sent no contribution (it withheld a non-finite one)" if n == 0 else
                       f"sent {n} bytes for {hi - lo} float32 values (expected {4 * (hi - lo)})")
                log.warning("rejected the contribution of peer %s to %s: peer %r %s", src, name, src, why)
                rejected.append(src)
            mean_of([row for _, row in kept])
            if not all_finite(acc):  # some row is not finite (or the sum overflowed): find which
                for src, row in kept:
                    if not all_finite(row):
                        log.warning("rejected the contribution of peer %s to %s: peer %r sent non-finite values",
                                    src, name, src)
                        rejected.append(src)
                kept = [(src, row) for src, row in kept if src not in rejected]
                mean_of([row for _, row in kept])
            if not kept and hi > lo:
                raise AggregationError(f"{name} (round {self.round}): every member's contribution was rejected "
                                       f"(non-finite or malformed); nothing to apply")
            if kept:
                acc /= len(kept)
            dropped = tuple(sorted(set(rejected), key=self.group.index))

            mine = _raw_encode(acc)
            sent += await send_all(1, {peer: mine for peer in remote} if is_owner else {})
            for j, src in enumerate(self.group[:owners]):
                if src != self.peer_id:
                    a, b = bounds[j]
                    n = await (got1[src] if posted else receive(src, 1, out[a:b]))
                    if n != 4 * (b - a):
                        raise AggregationError(f"peer {src!r} sent {n} bytes for {b - a} float32 values "
                                               f"(expected {4 * (b - a)})")
        finally:
            for aw in pending:
                if isinstance(aw, asyncio.Future):
                    if not aw.done():
                        aw.cancel()
                    elif not aw.cancelled():
                        aw.exception()  # retrieved: the error that matters is already raised
                else:
                    aw.close()  # a receive never awaited (an earlier one failed)
        self._record(CollectiveStats(name, op, sent, dropped))
        return unflatten(out, like)

    async def _reduce_chunk(self, stacked: torch.Tensor, op: int) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Reduce this member's chunk; returns (value, dropped peer ids)."""
        if self.aggregator is None:
            if stacked.shape[1] == 0:  # an empty chunk (more members than chunks)
                return stacked[0].clone(), ()
            ok = [i for i in range(stacked.shape[0]) if not _all_nan(stacked[i])]  # rejected rows are all-NaN
            acc = stacked[ok[0]].clone()
            for i in ok[1:]:
                acc += stacked[i]
            return acc / len(ok), ()
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

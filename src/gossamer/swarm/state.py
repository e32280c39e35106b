"""State transfer between peers over the ``TcpTransport``.

Contract:

- ``pack_state(tensors, round, hash)`` gives a ``StateBlob``: a msgpack
  header ``{"v": 1, "round", "hash", "layout": [[dtype, shape], ...],
  "bytes", "chunks", "counters"}`` (the algorithm's shared counters) and the tensors' raw little-endian bytes, cut into
  chunks of at most ``CHUNK`` bytes. Nothing is pickled.
- ``send_state(transport, dst, transfer, blob)`` sends the header with
  ``Tag(STATE_ROUND, transfer, 0)`` and chunk ``i`` with
  ``Tag(STATE_ROUND, transfer, i + 1)``. ``transfer`` is a coordinator-issued
  id, unique in the swarm, so two transfers never share a tag.
- ``recv_state(transport, src, transfer, like, timeout)`` receives one,
  checks the header against the receiver's own layout (same dtypes, shapes
  and byte count, bounded chunk count), copies the bytes into ``like`` in
  place only once everything arrived and checked, and returns
  ``(round, hash)``; the caller then verifies ``state_hash(like)`` against the
  coordinator's agreed hash. Anything malformed raises ``ProtocolError``
  naming the peer; a lost peer ``PeerError``; a missed deadline
  ``TimeoutError``. On any error ``like`` is untouched.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import torch

from ..errors import ProtocolError
from ..transport.base import Tag, Transport

#: Tag round field of state transfers (collectives never use negative rounds).
STATE_ROUND = -1
CHUNK = 16 << 20
MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class StateBlob:
    round: int
    hash: str
    header: bytes
    chunks: tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)


def layout(tensors: Sequence[torch.Tensor]) -> list[list[object]]:
    return [[str(t.dtype), list(t.shape)] for t in tensors]


def _raw(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    if sys.byteorder != "little" and t.element_size() > 1:  # pragma: no cover - big-endian hosts
        return t.numpy().byteswap().tobytes()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def state_nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def pack_state(tensors: Sequence[torch.Tensor], round: int, digest: str,
               counters: dict[str, Any] | None = None) -> StateBlob:
    data = b"".join(_raw(t) for t in tensors)
    chunks = tuple(data[i:i + CHUNK] for i in range(0, len(data), CHUNK)) or (b"",)
    header = msgpack.packb({"v": 1, "round": round, "hash": digest, "layout": layout(tensors), "bytes": len(data),
                            "chunks": len(chunks), "counters": dict(counters or {})}, use_bin_type=True)
    return StateBlob(round, digest, header, chunks)


async def send_state(transport: Transport, dst: str, transfer: int, blob: StateBlob) -> None:
    await transport.send(dst, Tag(STATE_ROUND, transfer, 0), blob.header)
    for i, chunk in enumerate(blob.chunks):
        await transport.send(dst, Tag(STATE_ROUND, transfer, i + 1), chunk)


async def recv_state(transport: Transport, src: str, transfer: int, like: Sequence[torch.Tensor],
                     timeout: float) -> tuple[int, str, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.0, deadline - loop.time())

    raw = await transport.recv(src, Tag(STATE_ROUND, transfer, 0), timeout=left())
    if len(raw) > MAX_HEADER:
        raise ProtocolError(f"state header of {len(raw)} bytes from {src!r} exceeds {MAX_HEADER}")
    try:
        head = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_str_len=MAX_HEADER, max_bin_len=0,
                               max_array_len=1 << 16, max_map_len=16, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types on malformed input
        raise ProtocolError(f"state header from {src!r} is not valid msgpack ({type(exc).__name__})") from None
    expected_bytes = state_nbytes(like)
    if not isinstance(head, dict) or set(head) != {"v", "round", "hash", "layout", "bytes", "chunks", "counters"}:
        raise ProtocolError(f"state header from {src!r} has the wrong fields")
    if head["v"] != 1 or type(head["round"]) is not int or not isinstance(head["hash"], str):
        raise ProtocolError(f"state header from {src!r} has a bad version, round or hash")
    if not isinstance(head["counters"], dict) or not all(isinstance(k, str) for k in head["counters"]):
        raise ProtocolError(f"state header from {src!r} has bad counters")
    if head["layout"] != layout(like):
        raise ProtocolError(f"state from {src!r} has a different layout than ours (another model or algorithm?)")
    if head["bytes"] != expected_bytes:
        raise ProtocolError(f"state from {src!r} claims {head['bytes']} bytes, expected {expected_bytes}")
    n_chunks = max(1, -(-expected_bytes // CHUNK))
    if head["chunks"] != n_chunks:
        raise ProtocolError(f"state from {src!r} claims {head['chunks']} chunks, expected {n_chunks}")
    parts = []
    for i in range(n_chunks):
        chunk = await transport.recv(src, Tag(STATE_ROUND, transfer, i + 1), timeout=left())
        want = min(CHUNK, expected_bytes - i * CHUNK)
        if len(chunk) != want:
            raise ProtocolError(f"state chunk {i} from {src!r} has {len(chunk)} bytes, expected {want}")
        parts.append(chunk)
    data = b"".join(parts)
    at = 0
    with torch.no_grad():
        for t in like:
            n = t.numel() * t.element_size()
            if n:
                src_t = torch.frombuffer(bytearray(data[at:at + n]), dtype=torch.uint8)
                t.reshape(-1).view(torch.uint8).copy_(src_t) if t.is_contiguous() else t.copy_(
                    src_t.view(t.dtype).view(t.shape))
            at += n
    return head["round"], head["hash"], head["counters"]

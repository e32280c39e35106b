"""The coordinator protocol: small msgpack requests and responses over an
authenticated, MAC'd stream. No tensor data ever passes through it.

Contract:

- Transport: one TCP connection per peer, dialled by the peer. It starts with
  the TCP transport's mutual Ed25519 handshake (``transport.tcp.handshake``:
  same swarm id, optional allow-list, forward-secret session keys), so the
  coordinator knows each peer's identity for sure and the peer may pin the
  coordinator's id. After it, each side writes frames of ``transport.frame``
  (length-prefixed, MAC'd under the direction key with implicit sequence
  numbers: no replay, reorder or forgery goes unnoticed). A request travels
  with ``Tag(0, request_id, 0)``, its response with ``Tag(0, request_id, 1)``.
  Requests may be outstanding concurrently (long polls); responses may come
  in any order.
- Body: a msgpack map, at most ``MAX_MESSAGE`` bytes. A request has
  ``"op"`` (one of ``OPS``) and the op's fields; a response is
  ``{"ok": True, ...}`` or ``{"ok": False, "code": str, "error": str}``.
  ``decode_message`` refuses anything else with ``ProtocolError`` (bounded
  msgpack limits, no ext types, string keys only); ``field`` checks each
  field's type and bounds. A bad frame costs the connection; a bad request
  only gets an error response.
- ``CoordinatorClient`` is the peer's side: ``request(op, **fields)`` returns
  the response map or raises ``SwarmError`` (the coordinator said no, with its
  code) or ``PeerError`` (the connection is gone). Nothing is pickled.

Requests (peer -> coordinator), each answered once:

==========  ==========================================  ===================================================
op          fields                                      response
==========  ==========================================  ===================================================
join        addr [host, port], fingerprint str          mode "init" | "fetch", round, hash, source, transfer
admit       round int, hash str                         admitted round (long poll while a round runs)
ready       round int                                   round, epoch, attempt, group [ids], addrs {id: addr}
done        epoch int, ok bool, hash str, reason str,   the decision (long poll until the attempt is decided)
            agree bool (default true), local bool,       (local: the failure is the member's own, e.g. its encode raised)
            progress fields (optional)
outcome     epoch int                                   the decision (long poll)
serve       (none)                                      jobs [{to, addr, transfer, round}] (long poll, <= 5 s)
hb          (none); progress fields, optional           round, phase, members, ids
leave       (none); progress fields, optional           {}
==========  ==========================================  ===================================================

Progress fields (optional, on ``hb``, ``done`` and ``leave``; added in issue 13, so a
peer that sends none, or a coordinator that ignores them, works as before;
``progress_fields`` checks them): ``loss`` float, the member's mean local
training loss over its steps since its last committed round (finite only);
``sent`` int >= 0, the payload bytes its transport has sent since the
process started (cumulative, state transfers included); ``step`` int >= 0,
its local steps; ``val`` ``{"round": int, "metric": str, "value": float,
"loss": float}``, its latest validation of the shared model.
The coordinator shows them on its status page and puts the group's mean
``loss`` and the ``bytes`` it sent per round into its ``commit`` events.

A decision is ``{"decision": "commit" | "abort", "round", "epoch", "hash",
"agreed", "resync": None | {"source", "addr", "transfer"}}``. ``agreed`` is
false when a member reported ``agree=False`` (an algorithm without bit
parity between merges, e.g. gossip): the round then commits without a
majority, ``hash`` is the BLAKE2b of the members' hashes in rank order, and
nobody resyncs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import msgpack

from ..aio import cancel_and_wait
from ..errors import GossamerError, PeerError, ProtocolError
from ..transport.base import Tag
from ..transport.frame import encode_frame, read_frame
from ..transport.identity import Identity
from ..transport.tcp import Session, handshake

log = logging.getLogger(__name__)

#: Largest message body (bytes).
MAX_MESSAGE = 1 << 20
#: Frame body limit on coordinator connections.
MAX_FRAME = MAX_MESSAGE + 128
OPS = ("join", "admit", "ready", "done", "outcome", "serve", "hb", "leave", "audit")
#: Longest string field accepted (peer ids are 16 hex chars, hashes 64).
MAX_STR = 512
REQUEST_PHASE = 0
RESPONSE_PHASE = 1


class SwarmError(GossamerError):
    """The coordinator refused a request; ``code`` says why (``evicted``,
    ``stale``, ``rejected``, ``bad_request``, ``busy``, ``banned``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_message(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the limit of {MAX_MESSAGE}")
    return body


def decode_message(data: bytes, where: str) -> dict[str, Any]:
    """The msgpack map in ``data``; ``ProtocolError`` naming ``where`` otherwise."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes from {where} exceeds the limit of {MAX_MESSAGE}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_str_len=MAX_MESSAGE,
                              max_bin_len=MAX_MESSAGE, max_array_len=1 << 16, max_map_len=1 << 16, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types on malformed input
        raise ProtocolError(f"message from {where} is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message from {where} is a {type(obj).__name__}, expected a map")
    if not all(isinstance(k, str) for k in obj):
        raise ProtocolError(f"message from {where} has a key that is not text: {sorted(repr(k) for k in obj)[:8]}"[:300])
    return obj


def field(msg: dict[str, Any], name: str, typ: type | tuple[type, ...], where: str, *, optional: bool = False) -> Any:
    """``msg[name]`` checked to be of ``typ`` (bool is not int; strings bounded)."""
    if name not in msg:
        if optional:
            return None
        raise ProtocolError(f"request from {where} lacks the field {name!r}")
    value = msg[name]
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:
        raise ProtocolError(f"field {name!r} from {where} must be {'/'.join(t.__name__ for t in types)}, found bool")
    if value is None and optional:
        return None
    if not isinstance(value, types):
        raise ProtocolError(f"field {name!r} from {where} must be {'/'.join(t.__name__ for t in types)}, "
                            f"found {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_STR:
        raise ProtocolError(f"field {name!r} from {where} is {len(value)} characters long, limit {MAX_STR}")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**62) <= value < 2**62:
        raise ProtocolError(f"field {name!r} from {where} = {value} is out of range")
    return value


def _finite(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"field {name!r} from {where} must be a finite number, found {value!r}"[:200])
    return float(value)


def progress_fields(msg: dict[str, Any], where: str) -> dict[str, Any]:
    """The optional progress fields of an ``hb`` or ``done`` (module docstring),
    checked: ``{"loss": float, "sent": int, "step": int, "val": {...}}`` with only
    the fields present; ``ProtocolError`` naming a malformed one."""
    out: dict[str, Any] = {}
    if msg.get("loss") is not None:
        out["loss"] = _finite(msg["loss"], "loss", where)
    for name in ("sent", "step"):
        value = field(msg, name, int, where, optional=True)
        if value is not None:
            if value < 0:
                raise ProtocolError(f"field {name!r} from {where} must be >= 0, found {value}")
            out[name] = value
    val = msg.get("val")
    if val is not None:
        if not isinstance(val, dict):
            raise ProtocolError(f"field 'val' from {where} must be a map, found {type(val).__name__}")
        rnd = field(val, "round", int, where)
        metric = field(val, "metric", str, where)
        if not 0 < len(metric) <= 64:
            raise ProtocolError(f"field 'val.metric' from {where} must be 1 to 64 characters")
        out["val"] = {"round": rnd, "metric": metric, "value": _finite(val.get("value"), "val.value", where),
                      **({"loss": _finite(val["loss"], "val.loss", where)} if val.get("loss") is not None else {})}
    return out


def address(value: Any, where: str) -> tuple[str, int]:
    """A ``[host, port]`` pair, checked."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[0], str)
            or isinstance(value[1], bool) or not isinstance(value[1], int)):
        raise ProtocolError(f"address from {where} must be [host, port], found {value!r}"[:200])
    host, port = value
    if not 0 < len(host) <= 255 or not 0 < port < 65536:
        raise ProtocolError(f"address from {where} is out of range: {host!r}:{port}"[:200])
    return host, port


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT`` or ``:PORT``) to ``(host, port)``; ``ValueError`` if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT with a numeric port, got {text!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"port must be in [0, 65535], got {number}")
    return host, number


class FramedStream:
    """Writes and reads MAC'd frames on one handshaken connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session,
                 io_timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session
        self.io_timeout = io_timeout
        self._send_seq = 0
        self._recv_seq = 0
        self._lock = asyncio.Lock()

    async def send(self, tag: Tag, body: bytes) -> None:
        async with self._lock:
            parts = encode_frame(tag, body, self.session.send_key, self._send_seq, max_frame=MAX_FRAME)
            self._send_seq += 1
            for part in parts:
                self.writer.write(part)
            async with asyncio.timeout(self.io_timeout):
                await self.writer.drain()

    async def recv(self) -> tuple[Tag, bytes] | None:
        frame = await read_frame(self.reader, max_frame=MAX_FRAME, mac_key=self.session.recv_key,
                                 seq=self._recv_seq, io_timeout=self.io_timeout)
        if frame is not None:
            self._recv_seq += 1
        return frame

    def close(self) -> None:
        self.writer.transport.abort()


class CoordinatorClient:
    """A peer's connection to the coordinator; see the module docstring."""

    def __init__(self, stream: FramedStream, where: str) -> None:
        self.stream = stream
        self.where = where
        self.coordinator_id = stream.session.peer_id
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="coordinator-client")
        #: Called with each measured request round trip (seconds) of short requests.
        self.on_rtt: Callable[[float], None] | None = None
        self.closed_event = asyncio.Event()

    @classmethod
    async def connect(cls, identity: Identity, swarm_id: str, host: str, port: int, *,
                      coordinator_id: str | None = None, io_timeout: float = 30.0) -> "CoordinatorClient":
        where = f"{host}:{port}"
        try:
            async with asyncio.timeout(io_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            raise PeerError(f"cannot reach the coordinator at {where}: {exc or type(exc).__name__}") from None
        try:
            session = await handshake(reader, writer, identity, swarm_id, initiator=True, io_timeout=io_timeout,
                                      expected_peer=coordinator_id, where=where)
        except BaseException:
            writer.transport.abort()
            raise
        return cls(FramedStream(reader, writer, session, io_timeout), where)

    @property
    def local_host(self) -> str:
        """The local address of this connection (what the coordinator sees us as)."""
        sock = self.stream.writer.get_extra_info("sockname")
        return str(sock[0]) if isinstance(sock, tuple) else "127.0.0.1"

    async def _read_loop(self) -> None:
        reason = "the coordinator closed the connection"
        try:
            while True:
                frame = await self.stream.recv()
                if frame is None:
                    break
                tag, body = frame
                if tag.round != 0 or tag.phase != RESPONSE_PHASE:
                    raise ProtocolError(f"unexpected frame {tag} from the coordinator")
                fut = self._pending.pop(tag.op, None)
                if fut is None:
                    if not 0 < tag.op <= self._last_id:
                        raise ProtocolError(f"response to unknown request {tag.op} from the coordinator")
                    continue  # the answer to a request we stopped waiting for
                if not fut.done():
                    fut.set_result(decode_message(body, "the coordinator"))
        except asyncio.CancelledError:
            reason = "client closed"
            raise
        except (ProtocolError, ConnectionError, OSError) as exc:
            reason = f"connection to the coordinator lost: {exc}"
            log.warning("%s", reason)
        finally:
            self._closed = reason
            self.stream.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(PeerError(reason))
            self._pending.clear()
            self.closed_event.set()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its response (see the module docstring)."""
        if self._closed is not None:
            raise PeerError(self._closed)
        rid = next(self._ids)
        self._last_id = rid
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        t0 = time.monotonic()
        try:
            await self.stream.send(Tag(0, rid, REQUEST_PHASE), encode_message({"op": op, **fields}))
        except (ConnectionError, OSError, TimeoutError) as exc:
            self._pending.pop(rid, None)
            if fut.done():
                fut.exception()  # retrieved: the connection's failure is reported here instead
            else:
                fut.cancel()
            raise PeerError(f"cannot send {op!r} to the coordinator: {exc or type(exc).__name__}") from None
        try:
            resp = await fut
        finally:
            self._pending.pop(rid, None)
        if op == "hb" and self.on_rtt is not None:
            self.on_rtt(time.monotonic() - t0)
        if resp.get("ok") is not True:
            code = resp.get("code")
            error = resp.get("error")
            raise SwarmError(code if isinstance(code, str) else "error",
                             f"coordinator refused {op!r}: {error if isinstance(error, str) else resp!r}"[:500])
        return resp

    async def close(self) -> None:
        await cancel_and_wait(self._reader)

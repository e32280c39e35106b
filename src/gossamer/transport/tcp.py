"""The TCP transport: authenticated, bounded, deadline-guarded frames over
asyncio streams. Same semantics as the simulated transport (``sim.py``).

Contract:

- ``await TcpTransport.start(identity, swarm_id, host, port, ...)`` listens;
  ``await t.connect(peer_id_or_none, host, port)`` dials now and returns the
  authenticated peer id; ``t.add_peer(peer_id, host, port)`` only records an
  address, and the first ``send`` to that peer dials it. Either side may dial;
  a pair of peers may end up with two connections (one dialled by each side),
  which is harmless: frames are read from every connection, sends use the
  first live one.
- Handshake (every connection, before any frame; both sides run the same
  code, ``role`` is "D" for the dialer and "L" for the listener). Each
  handshake message is a u32 little-endian length (at most
  ``HANDSHAKE_LIMIT`` bytes) and a msgpack map with exactly the listed keys::

      HELLO  {"v": 2, "swarm": swarm_id, "pk": Ed25519 public key (32),
              "eph": fresh X25519 public key (32), "nonce": 32 random bytes}
      AUTH   {"sig": Ed25519 signature (64) of
              "gossamer-auth-v1" || role || transcript}
      FIN    {"fin": BLAKE2b-128(key=own send key, person "gossamer-fin-v1",
                                 role || transcript)}

  where ``transcript = BLAKE2b-256(person "gossamer-hs-v1",
  u32len(swarm_id) || swarm_id || u32len(HELLO_D) || HELLO_D || u32len(HELLO_L) || HELLO_L)``
  over the exact bytes of both HELLO messages, so each signature covers the
  swarm id, both nonces, both identity keys, both ephemeral keys and the
  signer's role (a signature cannot be replayed on another connection, in
  another swarm, or reflected back to its signer). After HELLO each side
  rejects a different protocol version or swarm id, its own identity, a peer
  outside the allow-list (when one is given) and, when dialling a known id,
  any other id. After AUTH it rejects a bad signature. Session keys:
  ``BLAKE2b-512(key = X25519(own ephemeral, peer ephemeral), person
  "gossamer-kdf-v1", transcript)`` split into the dialer-to-listener key
  (first 32 bytes) and the listener-to-dialer key (last 32). The ephemeral
  exchange gives forward secrecy: an outsider who records or replays old
  traffic cannot compute a session key, and a recorded frame fails the MAC
  on any other connection. FIN confirms both sides hold the same keys and
  accepted each other: the dialer sends its FIN first, the listener checks
  it, registers the connection and only then answers with its own FIN, so
  when ``connect`` returns both sides are ready. A connection is used only
  after the FINs check out.
  Rejections are logged (WARNING) with the remote address.
- Frames (``frame.py``, protocol version 3) end with a GMAC tag under a key
  derived from the sender's direction key, with the frame sequence number
  as nonce, so a replayed, reordered or reflected frame is a
  ``ProtocolError``. The sender MACs each slice of the payload right before
  it writes it and sends the tag last; the receiver MACs each slice as it
  lands and delivers nothing before the tag checked out.
- Each connection, once its handshake is done, reads frames continuously (an
  ``asyncio.BufferedProtocol``, see ``_FrameProtocol``) into
  mailboxes keyed by ``(src, tag)``, so sends never wait for the receiver to
  call ``recv`` (a collective may send everything before it receives). A
  second frame with a ``(src, tag)`` still in the mailbox or already
  consumed, a peer buffering more than ``max_buffered`` unconsumed payload
  bytes, and every malformed, oversize, forged or stalled frame is a
  ``ProtocolError``: it is logged (WARNING, naming the peer, its address
  and the fault) and costs that peer its connection, never the transport.
- When a peer's last connection drops (closed, reset, protocol error, or the
  transport closing), every pending and later ``recv`` from it raises
  ``PeerError`` naming the peer and the reason, except for messages that had
  already arrived, which are still delivered. A new connection from or to
  the peer (it rejoined) makes it reachable again.
- ``send`` to a peer that cannot be reached (no connection and no known
  address, dial or handshake failure, write failure or a write stalled for
  ``io_timeout``) behaves like the simulator's send to a dead peer: it
  returns without raising, so a collective still reaches the other peers;
  it logs a WARNING, counts nothing (no frame reached the wire) and marks
  the peer gone, so recvs from it raise ``PeerError`` with the reason.
  ``send`` raises only for local faults: ``PeerError`` once this transport
  is closed, ``ProtocolError`` for a tag out of range (or a message that
  would need more than ``MAX_PARTS`` frames). ``connect`` raises
  (``PeerError``/``ProtocolError``).
- Messages of any size: a payload that does not fit one frame of
  ``max_frame`` body bytes is sent as consecutive frames whose headers carry
  ``[index, count]`` (``frame.split_sizes``); the receiver reassembles them
  (parts must arrive in order on one connection; a cut-off message is
  dropped with its connection) and delivers one message. Unread parts count
  against ``max_buffered`` unless a ``recv`` waits for that message.
- Byte counters are exactly the simulator's: ``send`` counts
  ``len(payload)`` and ``message_overhead(tag, size, max_frame)`` (one
  frame's ``frame_overhead(tag)`` unless the message was split) once it has
  written the frames (unlike the simulator, nothing for an unreachable peer); ``recv``
  counts them when it returns the payload. In addition, every
  completed handshake adds the bytes it sent and received (length prefixes
  included) to the framing counts of that peer and direction without counting
  a message; ``handshake_counters`` holds those bytes alone (one "message"
  per handshake) so that ``counters.*.framing - handshake_counters.*.framing``
  is the sum of ``message_overhead`` of the counted messages. Nothing beyond
  the handshakes and frames is ever written.
- Limits and deadlines: frames over ``max_frame`` body bytes are refused on
  both sides; handshake messages over ``HANDSHAKE_LIMIT``; a whole handshake
  must finish within ``io_timeout``; once a frame has begun, every read must
  make progress within ``io_timeout`` and every write drain likewise, or the
  connection is dropped. ``send`` returns only once the whole frame was
  handed to the kernel (asyncio's write buffer is empty), so the sender's
  event loop may block right after it (a long synchronous step) without
  stalling the receiver. Idle connections are not timed out. At most
  ``MAX_PENDING_HANDSHAKES`` inbound handshakes run at once (more are
  refused at once), and a peer keeps at most ``MAX_CONNS_PER_PEER``
  connections (a newer one replaces its oldest, which may be a stale
  half-open socket of a peer that restarted).
- ``compute()`` is a no-op, ``now()`` is ``time.monotonic()``, ``recv``'s
  ``timeout`` is in wall-clock seconds. ``recv`` returns the payload as a
  ``bytearray`` that the caller owns (the buffer the frame was read into;
  ``torch.frombuffer`` can wrap it without a copy). ``recv_into(src, tag,
  out)`` posts ``out`` while it waits: a frame of exactly that message and
  size is read by the kernel straight into it and authenticated there
  (``posted_receives`` is True); if the call fails (timeout, cancel, peer
  gone, forged frame) ``out`` may hold any bytes and is never written again.
  ``close()`` stops listening, cancels
  pending handshakes and dials, flushes and closes every connection and
  fails pending ``recv`` calls with ``PeerError``. Nothing is pickled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ..errors import ConfigError, PeerError, ProtocolError
from .base import Buffer, ByteCounters, LinkCounter, Tag, Transport
from .frame import (
    DEFAULT_MAX_FRAME,
    HEADER_LENGTH,
    LENGTH,
    MAC_BYTES,
    MAX_BODY,
    FrameMac,
    MIN_BODY,
    check_body_length,
    check_header_length,
    check_tag,
    decode_header_part,
    message_overhead,
    split_sizes,
    forged,
    frame_prefix,
    mac_key_for,
)
from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, peer_id_from_public_key, verify_signature

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 3
#: Largest handshake message body accepted (bytes after the length prefix).
HANDSHAKE_LIMIT = 1024
#: Longest swarm id (UTF-8 bytes).
MAX_SWARM_ID = 256
NONCE_BYTES = 32
DEFAULT_IO_TIMEOUT = 30.0
#: StreamReader buffer limit: how much the kernel-to-user reader may run ahead.
STREAM_LIMIT = 16 << 20
#: Scratch buffer for reads outside a large payload (frame heads, small frames).
SCRATCH_BYTES = 256 << 10
#: Payload slice MAC'd and written per ``write`` call; ``send`` waits for
#: asyncio's write buffer to be empty after each (see ``TcpTransport._write``).
WRITE_CHUNK = 1 << 20
#: Most payload bytes one ``recv_into`` system call writes (then they are MAC'd).
RECV_SLICE = 256 << 10
#: Inbound connections still in their handshake, at most.
MAX_PENDING_HANDSHAKES = 64
#: Live connections per peer, at most (one dialled by each side is normal).
MAX_CONNS_PER_PEER = 4
_HS_LEN = struct.Struct("<I")


# --------------------------------------------------------------------------- handshake


@dataclass(frozen=True)
class Session:
    """Outcome of a successful handshake."""

    peer_id: str
    peer_public_key: bytes
    send_key: bytes
    recv_key: bytes
    bytes_sent: int
    bytes_received: int


def _pack_hs(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _HS_LEN.pack(len(body)) + body


async def _read_hs(reader: asyncio.StreamReader, what: str, keys: dict[str, type], where: str) -> tuple[dict[str, Any], bytes]:
    """Read one handshake message; check its size, that it is a msgpack map
    with exactly ``keys`` and that each value has the given type."""
    try:
        head = await reader.readexactly(_HS_LEN.size)
        (n,) = _HS_LEN.unpack(head)
        if n > HANDSHAKE_LIMIT:
            raise ProtocolError(f"handshake {what} from {where} claims {n} bytes, limit is {HANDSHAKE_LIMIT}")
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise PeerError(f"{where} closed the connection during the handshake (waiting for {what}, "
                        f"got {len(exc.partial)} of {exc.expected} bytes); it may have rejected us") from None
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, max_str_len=HANDSHAKE_LIMIT,
                              max_bin_len=HANDSHAKE_LIMIT, max_array_len=16, max_map_len=16, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types on malformed input
        raise ProtocolError(f"handshake {what} from {where} is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj) or set(obj) != set(keys):
        found = sorted(repr(k) for k in obj) if isinstance(obj, dict) else type(obj).__name__
        raise ProtocolError(f"handshake {what} from {where}: expected a map with keys {sorted(keys)}, found {found}"[:300])
    for k, typ in keys.items():
        if type(obj[k]) is not typ:
            raise ProtocolError(f"handshake {what} from {where}: field {k!r} must be {typ.__name__}, "
                                f"found {type(obj[k]).__name__}")
    return obj, head + body


def _transcript(swarm_id: str, hello_d: bytes, hello_l: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32, person=b"gossamer-hs-v1")
    for part in (swarm_id.encode(), hello_d, hello_l):
        h.update(_HS_LEN.pack(len(part)))
        h.update(part)
    return h.digest()


def _auth_message(role: bytes, transcript: bytes) -> bytes:
    return b"gossamer-auth-v1" + role + transcript


def _fin(key: bytes, role: bytes, transcript: bytes) -> bytes:
    return hashlib.blake2b(role + transcript, key=key, digest_size=MAC_BYTES, person=b"gossamer-fin-v1").digest()


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: Identity, swarm_id: str,
                    *, initiator: bool, io_timeout: float | None = DEFAULT_IO_TIMEOUT,
                    allowed: frozenset[str] | None = None, expected_peer: str | None = None,
                    where: str = "peer", accept: Callable[[Session], None] | None = None) -> Session:
    """Run the mutual handshake described in the module docstring on a fresh
    connection; ``initiator`` is True on the dialing side.

    Returns the ``Session``; raises ``ProtocolError`` for a malformed message,
    a mismatch (version, swarm id, identity), a bad signature or key
    confirmation, or a handshake not done within ``io_timeout`` seconds, and
    ``PeerError`` if the other side closes the connection. On the listening
    side ``accept(session)`` runs once the dialer's FIN checked out and before
    the listener's FIN goes out, so when the dialer's handshake returns the
    listener has already accepted (registered) the connection."""
    sent = 0
    received = 0
    my_role, peer_role = (b"D", b"L") if initiator else (b"L", b"D")
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    hello = _pack_hs({"v": PROTOCOL_VERSION, "swarm": swarm_id, "pk": identity.public_key, "eph": eph_pub,
                      "nonce": os.urandom(NONCE_BYTES)})

    async def write(data: bytes) -> None:
        nonlocal sent
        writer.write(data)
        sent += len(data)
        await writer.drain()

    try:
        async with asyncio.timeout(io_timeout):
            await write(hello)
            peer_hello, peer_hello_raw = await _read_hs(
                reader, "HELLO", {"v": int, "swarm": str, "pk": bytes, "eph": bytes, "nonce": bytes}, where)
            received += len(peer_hello_raw)
            if peer_hello["v"] != PROTOCOL_VERSION:
                raise ProtocolError(f"{where} speaks protocol version {peer_hello['v']}, expected {PROTOCOL_VERSION}")
            if peer_hello["swarm"] != swarm_id:
                raise ProtocolError(f"swarm id mismatch: expected {swarm_id!r}, {where} says {peer_hello['swarm']!r}"[:300])
            for name, size in (("pk", PUBLIC_KEY_BYTES), ("eph", 32), ("nonce", NONCE_BYTES)):
                if len(peer_hello[name]) != size:
                    raise ProtocolError(f"handshake HELLO from {where}: {name!r} must be {size} bytes, "
                                        f"found {len(peer_hello[name])}")
            peer_pk: bytes = peer_hello["pk"]
            peer_id = peer_id_from_public_key(peer_pk)
            if peer_pk == identity.public_key:
                raise ProtocolError(f"{where} presents our own identity {peer_id!r}")
            if allowed is not None and peer_id not in allowed:
                raise ProtocolError(f"peer {peer_id!r} at {where} is not in the allowed set")
            if expected_peer is not None and peer_id != expected_peer:
                raise ProtocolError(f"dialled {expected_peer!r} at {where} but it is {peer_id!r}")
            hello_raw = hello
            d_raw, l_raw = (hello_raw, peer_hello_raw) if initiator else (peer_hello_raw, hello_raw)
            transcript = _transcript(swarm_id, d_raw, l_raw)

            await write(_pack_hs({"sig": identity.sign(_auth_message(my_role, transcript))}))
            peer_auth, raw = await _read_hs(reader, "AUTH", {"sig": bytes}, where)
            received += len(raw)
            if len(peer_auth["sig"]) != SIGNATURE_BYTES or not verify_signature(
                    peer_pk, peer_auth["sig"], _auth_message(peer_role, transcript)):
                raise ProtocolError(f"bad handshake signature from {peer_id!r} at {where}")

            try:
                shared = eph.exchange(X25519PublicKey.from_public_bytes(peer_hello["eph"]))
            except ValueError as exc:
                raise ProtocolError(f"bad ephemeral key from {peer_id!r} at {where}: {exc}") from None
            okm = hashlib.blake2b(transcript, key=shared, digest_size=64, person=b"gossamer-kdf-v1").digest()
            d2l, l2d = okm[:32], okm[32:]
            send_key, recv_key = (d2l, l2d) if initiator else (l2d, d2l)

            my_fin = _pack_hs({"fin": _fin(send_key, my_role, transcript)})
            if initiator:
                await write(my_fin)
            peer_fin, raw = await _read_hs(reader, "FIN", {"fin": bytes}, where)
            received += len(raw)
            if not hmac.compare_digest(peer_fin["fin"], _fin(recv_key, peer_role, transcript)):
                raise ProtocolError(f"key confirmation failed for {peer_id!r} at {where}")
            session = Session(peer_id, peer_pk, send_key, recv_key, sent + (0 if initiator else len(my_fin)), received)
            if not initiator:
                if accept is not None:
                    accept(session)
                await write(my_fin)
    except TimeoutError:
        raise ProtocolError(f"handshake with {where} did not complete within {io_timeout} s") from None
    except (ConnectionError, OSError) as exc:
        raise PeerError(f"{where} closed the connection during the handshake ({exc or type(exc).__name__}); "
                        "it may have rejected us") from None
    return session


# --------------------------------------------------------------------------- transport


@dataclass(eq=False)
class _Connection:
    peer_id: str
    where: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    send_key: bytes
    recv_key: bytes
    send_seq: int = 0
    recv_seq: int = 0
    closed: bool = False
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proto: "_FrameProtocol | None" = None
    #: GMAC keys derived from the direction keys (``frame.mac_key_for``).
    send_mac: bytes = b""
    recv_mac: bytes = b""

    def __post_init__(self) -> None:
        self.send_mac = mac_key_for(self.send_key)
        self.recv_mac = mac_key_for(self.recv_key)


class _FrameProtocol(asyncio.BufferedProtocol):
    """The protocol of one connection once its handshake is done: reads
    frames with ``recv_into`` and provides write flow control.

    Outside a large payload the socket is read into a small scratch buffer
    and the bytes of an incomplete frame head or MAC trailer are kept in
    ``pending`` (at most one frame, checked as in ``FrameParser``: length,
    header, then MAC). Once a frame's header is in, its payload gets one
    buffer: the one a ``recv_into`` waiting for exactly that message posted
    (``TcpTransport._take_sink``), else a fresh ``bytearray``. The bytes
    already in ``pending`` are copied there and ``get_buffer`` then hands
    the kernel exactly the rest of that buffer, so the payload is written
    by the kernel where the collective will read it and never read past
    the payload's end. The MAC is updated with each received slice while it
    is still in cache, and checked against the 16-byte trailer before the
    frame is delivered. A frame that has begun must make progress every
    ``io_timeout`` seconds (a timer checks). Frames go to
    ``TcpTransport._deliver``; a ``ProtocolError`` costs the connection
    (logged WARNING), never the transport.

    Writing: the transport's write buffer limits are ``high=0, low=0``, so
    ``drain`` waits until asyncio's buffer is empty (everything handed to
    the kernel)."""

    def __init__(self, owner: "TcpTransport", conn: _Connection) -> None:
        self._owner = owner
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._max_frame = owner.max_frame
        self._io_timeout = owner.io_timeout
        self._scratch = bytearray(SCRATCH_BYTES)
        self._pending = bytearray()
        #: The current frame's payload buffer (own ``bytearray`` or a posted sink), from its header to its MAC.
        self._payload: bytearray | memoryview | None = None
        #: Writable view of ``_payload`` while payload bytes are still to come.
        self._view: memoryview | None = None
        self._got = 0
        self._tag: Tag | None = None
        self._part: tuple[int, int] | None = None
        #: ``(src, tag)`` of the posted sink ``_payload`` is, else None.
        self._sink_key: tuple[str, Tag] | None = None
        #: Bytes of the frame being read that count against the owner's in-flight caps.
        self._reserved = 0
        self._h: FrameMac | None = None
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._dead = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost: str | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # ------------------------------------------------------------- reading

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._view is not None:
            # a slice at a time, so that the MAC reads it while it is still in cache
            return self._view[self._got:self._got + RECV_SLICE]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._dead:
            return
        self._last = self._loop.time()
        try:
            if self._view is not None:
                assert self._h is not None
                self._h.update(self._view[self._got:self._got + nbytes])
                self._got += nbytes
                if self._got == len(self._view):
                    self._payload_done()
            else:
                self._pending += memoryview(self._scratch)[:nbytes]
                self._parse()
        except ProtocolError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a bug here must cost the connection, not the run
            logger.exception("unexpected error reading from %s at %s", self._conn.peer_id, self._conn.where)
            self._stop(f"internal error: {exc!r}", abort=True)
            return
        self._arm()

    def feed(self, data: bytes) -> None:
        """Bytes that arrived before this protocol took over (after the handshake)."""
        n = 0
        while n < len(data) and not self._dead:
            buf = self.get_buffer(len(data) - n)
            k = min(len(buf), len(data) - n)
            memoryview(buf)[:k] = data[n:n + k]
            n += k
            self.buffer_updated(k)

    def _parse(self) -> None:
        buf = self._pending
        while not self._dead:
            if self._h is not None:  # the payload is in; its MAC trailer is next
                if len(buf) < MAC_BYTES:
                    return
                mac = bytes(buf[:MAC_BYTES])
                del buf[:MAC_BYTES]
                self._finish_frame(mac)
                continue
            if len(buf) < LENGTH.size + HEADER_LENGTH.size:
                return
            (body,) = LENGTH.unpack_from(buf, 0)
            check_body_length(body, self._max_frame)
            (hlen,) = HEADER_LENGTH.unpack_from(buf, LENGTH.size)
            check_header_length(hlen, body)
            start = LENGTH.size + HEADER_LENGTH.size
            at = start + hlen
            if len(buf) < at:
                return
            conn = self._conn
            tag, part = decode_header_part(buf[start:at])
            total = body - HEADER_LENGTH.size - hlen - MAC_BYTES
            self._owner._reserve(conn.peer_id, total)  # before a byte of it is allocated
            self._reserved = total
            self._tag, self._part = tag, part
            self._h = FrameMac(conn.recv_mac, conn.recv_seq, bytes(buf[:at]))
            sink = None if part is not None else self._owner._take_sink(conn.peer_id, tag, total, self)
            if sink is not None:
                self._payload, self._sink_key = sink, (conn.peer_id, tag)
            else:
                self._payload = bytearray(total)
            view = memoryview(self._payload)
            have = min(len(buf) - at, total)
            view[:have] = memoryview(buf)[at:at + have]
            del buf[:at + have]
            self._view, self._got = view, have
            self._h.update(view[:have])
            if have < total:
                return  # the rest is read straight into the payload
            self._payload_done()

    def _payload_done(self) -> None:
        """Every payload byte is in: the MAC trailer comes next (via ``pending``)."""
        assert self._view is not None
        self._view.release()
        self._view = None

    def detach_sink(self) -> None:
        """The ``recv_into`` whose buffer this frame is being read into is gone
        (timed out or cancelled): go on in a buffer of our own, so nothing is
        written into the caller's buffer any more."""
        sink = self._payload
        if self._sink_key is None or sink is None:
            return
        own = bytearray(len(sink))
        done = self._got if self._view is not None else len(sink)
        memoryview(own)[:done] = memoryview(sink)[:done]
        if self._view is not None:
            self._view.release()
            self._view = memoryview(own)
        self._payload, self._sink_key = own, None

    def _finish_frame(self, mac: bytes) -> None:
        payload, tag, conn, h = self._payload, self._tag, self._conn, self._h
        assert payload is not None and tag is not None and h is not None
        self._owner._release(conn.peer_id, self._reserved)
        self._reserved = 0
        self._payload, self._tag, self._h = None, None, None
        if self._sink_key is not None:
            self._owner._sink_done(self._sink_key, self)
            self._sink_key = None
        if not hmac.compare_digest(h.finalize(), mac):
            raise forged(conn.recv_seq)
        conn.recv_seq += 1
        if self._part is not None:
            assert isinstance(payload, bytearray)
            self._owner._deliver_part(conn.peer_id, tag, self._part, payload)
        else:
            self._owner._deliver(conn.peer_id, tag, payload)

    def _mid_frame(self) -> bool:
        return self._h is not None or bool(self._pending)

    def _arm(self) -> None:
        if self._mid_frame():
            if self._timer is None:
                self._timer = self._loop.call_at(self._last + self._io_timeout, self._check_stall)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_stall(self) -> None:
        self._timer = None
        if self._dead or not self._mid_frame():
            return
        due = self._last + self._io_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_stall)
            return
        if self._view is not None:
            self._fail(ProtocolError(f"peer stalled mid-frame: no payload bytes within {self._io_timeout} s "
                                     f"({self._got} of {len(self._view)} received)"))
        elif self._h is not None:
            self._fail(ProtocolError(f"peer stalled mid-frame: no MAC bytes within {self._io_timeout} s "
                                     f"({len(self._pending)} of {MAC_BYTES} received)"))
        else:
            self._fail(ProtocolError(f"peer stalled mid-frame: no frame header bytes within {self._io_timeout} s "
                                     f"({len(self._pending)} bytes of it received)"))

    def eof_received(self) -> bool:
        if self._dead:
            return False
        if self._view is not None:
            self._fail(ProtocolError(f"truncated frame: connection closed after {self._got} of {len(self._view)} "
                                     "payload bytes"))
        elif self._h is not None:
            self._fail(ProtocolError(f"truncated frame: connection closed after the payload and {len(self._pending)} "
                                     f"of {MAC_BYTES} MAC bytes"))
        elif self._pending:
            self._fail(ProtocolError(f"truncated frame: stream ended after {len(self._pending)} bytes of an "
                                     "incomplete frame"))
        else:
            self._stop("it closed the connection", abort=False)
        return False

    def _fail(self, exc: ProtocolError) -> None:
        conn = self._conn
        logger.warning("ProtocolError from peer %s at %s: %s; disconnecting", conn.peer_id, conn.where, exc)
        self._stop(f"protocol error: {exc}", abort=True)

    def _stop(self, reason: str, *, abort: bool) -> None:
        """Stop reading and drop the connection (once)."""
        if self._dead:
            return
        self._dead = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._view is not None:
            self._view.release()
        if self._reserved:
            self._owner._release(self._conn.peer_id, self._reserved)
            self._reserved = 0
        if self._sink_key is not None:
            self._owner._sink_done(self._sink_key, self)
            self._sink_key = None
        self._payload, self._view, self._h, self._pending = None, None, None, bytearray()
        self._owner._drop(self._conn, reason, abort=abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = f"connection lost: {exc or type(exc).__name__}" if exc is not None else "connection closed"
        self._stop(self._lost if exc is not None else "it closed the connection", abort=exc is not None)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError(self._lost))
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------- writing

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until asyncio's write buffer is empty; ``ConnectionResetError`` if the connection is lost."""
        if self._lost is not None:
            raise ConnectionResetError(self._lost)
        if not self._paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None


def _copy_into(data: Buffer, out: memoryview) -> int:
    """Copy ``data`` to the front of ``out`` if it fits; its length either way."""
    n = len(data)
    if n <= out.nbytes:
        out[:n] = data
    return n


def _where(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class TcpTransport(Transport):
    """One peer's endpoint on a real TCP network; see the module docstring.
    Create it with ``await TcpTransport.start(...)``."""

    posted_receives = True

    def __init__(self, identity: Identity, swarm_id: str, *, allowed: Iterable[str] | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, io_timeout: float = DEFAULT_IO_TIMEOUT,
                 max_buffered: int | None = None) -> None:
        if not isinstance(swarm_id, str) or not 0 < len(swarm_id.encode()) <= MAX_SWARM_ID:
            raise ConfigError(f"swarm id must be a non-empty string of at most {MAX_SWARM_ID} UTF-8 bytes, got {swarm_id!r}")
        if not MIN_BODY <= max_frame <= MAX_BODY:
            raise ConfigError(f"max_frame must be in [{MIN_BODY}, {MAX_BODY}] bytes, got {max_frame}")
        if not io_timeout > 0:
            raise ConfigError(f"io_timeout must be > 0 s, got {io_timeout}")
        self.identity = identity
        self.swarm_id = swarm_id
        self.allowed: frozenset[str] | None = None if allowed is None else frozenset(allowed)
        self.max_frame = max_frame
        self.io_timeout = io_timeout
        self.max_buffered = max(4 * max_frame, 64 << 20) if max_buffered is None else max_buffered
        self.counters = ByteCounters()
        self.handshake_counters = ByteCounters()
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] = ("", 0)
        self._conns: dict[str, list[_Connection]] = {}
        self._book: dict[str, tuple[str, int]] = {}
        self._dialing: dict[str, asyncio.Task[_Connection]] = {}
        self._mailbox: dict[tuple[str, Tag], bytearray] = {}
        self._buffered: dict[str, int] = {}
        self._consumed: dict[str, set[Tag]] = {}
        self._waiters: dict[tuple[str, Tag], asyncio.Future[bytearray]] = {}
        #: Buffers posted by waiting ``recv_into`` calls, and the connection reading a frame into each.
        self._sinks: dict[tuple[str, Tag], memoryview] = {}
        self._sink_readers: dict[tuple[str, Tag], _FrameProtocol] = {}
        self._gone: dict[str, str] = {}
        self._trusted: set[str] | None = None
        self.stranger_limit = 1 << 20
        #: Total payload bytes of frames being read, over all peers.
        self.max_in_flight = 2 * self.max_buffered
        self._in_flight: dict[str, int] = {}
        self._in_flight_total = 0
        self._stranger_bytes = 0
        #: Parts received so far of split messages, by (src, tag): (count, parts).
        self._partial: dict[tuple[str, Tag], tuple[int, list[bytearray]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_handshakes = 0
        self._closed = False

    # ----------------------------------------------------------------- setup

    @classmethod
    async def start(cls, identity: Identity, swarm_id: str, host: str = "127.0.0.1", port: int = 0, *,
                    allowed: Iterable[str] | None = None, max_frame: int = DEFAULT_MAX_FRAME,
                    io_timeout: float = DEFAULT_IO_TIMEOUT, max_buffered: int | None = None) -> "TcpTransport":
        """Listen on ``host:port`` (port 0 picks a free one, see ``address``)."""
        t = cls(identity, swarm_id, allowed=allowed, max_frame=max_frame, io_timeout=io_timeout,
                max_buffered=max_buffered)
        try:
            t._server = await asyncio.start_server(t._on_inbound, host, port, limit=STREAM_LIMIT)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                              "(is the address on this host, and the port free?)") from None
        sock = t._server.sockets[0].getsockname()
        t._address = (str(sock[0]), int(sock[1]))
        logger.info("peer %s listening on %s:%d (swarm %r)", t.peer_id, *t._address, swarm_id)
        return t

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` this transport listens on."""
        return self._address

    def add_peer(self, peer_id: str, host: str, port: int) -> None:
        """Record where ``peer_id`` listens; the first ``send`` to it dials."""
        self._book[peer_id] = (host, int(port))

    def trust(self, peer_ids: Iterable[str] | None) -> None:
        """The peers this transport gives full buffers to (e.g. the swarm's
        current members, from the coordinator); ``None`` trusts every
        authenticated peer (the default). Any other peer (a *stranger*) may have
        at most ``stranger_limit`` bytes in flight or unread here, and all
        strangers together at most ``4 * stranger_limit``; a frame that would go
        over costs that connection before its payload is allocated, and a
        stranger's unread frames are dropped when its last connection closes."""
        self._trusted = None if peer_ids is None else set(peer_ids)

    def _is_trusted(self, pid: str) -> bool:
        return self._trusted is None or pid in self._trusted

    def _reserve(self, pid: str, nbytes: int) -> None:
        """Account a frame payload about to be read from ``pid``; ``ProtocolError``
        over the caps (per peer: ``max_buffered``, or ``stranger_limit`` for a
        stranger; all peers: ``max_in_flight``; all strangers: ``4 * stranger_limit``)."""
        mine = self._in_flight.get(pid, 0) + self._buffered.get(pid, 0) + nbytes
        total = self._in_flight_total + nbytes
        if not self._is_trusted(pid):
            strangers = self._stranger_bytes + nbytes + sum(b for p, b in self._buffered.items() if not self._is_trusted(p))
            if mine > self.stranger_limit or strangers > 4 * self.stranger_limit:
                raise ProtocolError(f"peer {pid!r} is not a member here and would hold {mine} bytes "
                                    f"(limit {self.stranger_limit}; all strangers {strangers} of {4 * self.stranger_limit})")
            self._stranger_bytes = strangers
        elif mine > self.max_buffered and not any(k[0] == pid for k in self._waiters):
            raise ProtocolError(f"peer {pid!r} would hold {mine} bytes here, over the limit of {self.max_buffered}")
        if total > self.max_in_flight:
            raise ProtocolError(f"{total} payload bytes would be in flight here, over the limit of {self.max_in_flight}")
        self._in_flight[pid] = self._in_flight.get(pid, 0) + nbytes
        self._in_flight_total = total

    def _release(self, pid: str, nbytes: int) -> None:
        left = self._in_flight.get(pid, 0) - nbytes
        if left > 0:
            self._in_flight[pid] = left
        else:
            self._in_flight.pop(pid, None)
        self._in_flight_total = max(0, self._in_flight_total - nbytes)
        if not self._is_trusted(pid):
            self._stranger_bytes = max(0, self._stranger_bytes - nbytes)

    def discard(self, match: Callable[[Tag], bool]) -> int:
        """Drop unread frames and forget consumed tags whose tag ``match``es (e.g.
        the leftovers of a state transfer that finished or failed); returns how
        many unread frames were dropped."""
        dropped = 0
        for key in [k for k in self._mailbox if match(k[1])]:
            self._buffered[key[0]] = self._buffered.get(key[0], 0) - len(self._mailbox.pop(key))
            dropped += 1
        for tags in self._consumed.values():
            for t in [t for t in tags if match(t)]:
                tags.discard(t)
        return dropped

    def forget(self, keep: Iterable[str]) -> int:
        """Drop the bookkeeping of every peer not in ``keep`` that has no live
        connection: its address, unread frames, consumed-tag sets, the reason
        it is gone and its per-peer counters (the totals stay). Per-peer state
        then grows with the peers a run talks to now, not with every peer id
        ever seen. Returns how many peers were forgotten."""
        keep = set(keep) | {p for p, conns in self._conns.items() if conns}
        known = set(self._book) | set(self._buffered) | set(self._consumed) | set(self._gone) | set(self._conns)
        known |= set(self.counters.sent_to) | set(self.counters.received_from)
        known |= set(self.handshake_counters.sent_to) | set(self.handshake_counters.received_from)
        gone = known - keep
        for pid in gone:
            for table in (self._book, self._buffered, self._consumed, self._gone, self._conns,
                          self.counters.sent_to, self.counters.received_from,
                          self.handshake_counters.sent_to, self.handshake_counters.received_from):
                table.pop(pid, None)
        for key in [k for k in self._mailbox if k[0] in gone]:
            del self._mailbox[key]
        for key in [k for k in self._partial if k[0] in gone]:
            del self._partial[key]
        return len(gone)

    def peer_tables(self) -> int:
        """Entries in the per-peer tables (for tests and leak checks)."""
        return sum(len(t) for t in (self._book, self._buffered, self._consumed, self._gone, self._conns,
                                    self.counters.sent_to, self.counters.received_from,
                                    self.handshake_counters.sent_to, self.handshake_counters.received_from))

    def connected_peers(self) -> set[str]:
        """Ids of the peers with at least one live connection."""
        return {p for p, conns in self._conns.items() if conns}

    async def connect(self, peer_id: str | None, host: str, port: int) -> str:
        """Dial ``host:port`` now, run the handshake and return the peer's id.
        With ``peer_id`` given, any other identity there is rejected."""
        conn = await self._dial(peer_id, host, port)
        self._book.setdefault(conn.peer_id, (host, int(port)))
        return conn.peer_id

    async def _dial(self, peer_id: str | None, host: str, port: int) -> _Connection:
        if self._closed:
            raise PeerError(f"transport {self.peer_id!r} is closed")
        where = f"{host}:{port}"
        name = peer_id or "peer"
        try:
            async with asyncio.timeout(self.io_timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise PeerError(f"cannot reach {name} at {where}: {exc or type(exc).__name__}") from None
        try:
            session = await handshake(reader, writer, self.identity, self.swarm_id, initiator=True,
                                      io_timeout=self.io_timeout, allowed=self.allowed, expected_peer=peer_id,
                                      where=where)
        except BaseException as exc:
            writer.transport.abort()
            if isinstance(exc, (ProtocolError, PeerError)):
                logger.warning("handshake with %s at %s failed: %s", name, where, exc)
            raise
        return self._register(session, reader, writer, where)

    async def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        where = _where(writer)
        task = asyncio.current_task()
        if self._closed:
            writer.transport.abort()
            return
        if self._pending_handshakes >= MAX_PENDING_HANDSHAKES:
            logger.warning("rejected inbound connection from %s: %d handshakes already pending",
                           where, self._pending_handshakes)
            writer.transport.abort()
            return
        self._pending_handshakes += 1
        if task is not None:
            self._tasks.add(task)

        def accept(session: Session) -> None:
            self._register(session, reader, writer, where)

        try:
            await handshake(reader, writer, self.identity, self.swarm_id, initiator=False,
                            io_timeout=self.io_timeout, allowed=self.allowed, where=where, accept=accept)
        except (ProtocolError, PeerError) as exc:
            logger.warning("rejected inbound connection from %s: %s", where, exc)
            writer.transport.abort()
            return
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:  # never let one connection take the server down
            logger.exception("unexpected error in handshake with %s", where)
            writer.transport.abort()
            return
        finally:
            self._pending_handshakes -= 1
            if task is not None:
                self._tasks.discard(task)

    def _register(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  where: str) -> _Connection:
        if self._closed:
            writer.transport.abort()
            raise PeerError(f"transport {self.peer_id!r} is closed")
        pid = session.peer_id
        conn = _Connection(pid, where, reader, writer, session.send_key, session.recv_key)
        conns = self._conns.setdefault(pid, [])
        conns.append(conn)
        while len(conns) > MAX_CONNS_PER_PEER:
            self._drop(conns[0], "replaced by a newer connection", abort=True)
        self._gone.pop(pid, None)
        for counters in (self.counters, self.handshake_counters):
            counters.sent_to.setdefault(pid, LinkCounter())
            counters.received_from.setdefault(pid, LinkCounter())
        self._add_framing(self.counters, pid, session.bytes_sent, session.bytes_received)
        self.handshake_counters.count_sent(pid, 0, session.bytes_sent)
        self.handshake_counters.count_received(pid, 0, session.bytes_received)
        logger.info("peer %s connected to %s at %s", self.peer_id, pid, where)
        self._take_over(conn)
        return conn

    def _take_over(self, conn: _Connection) -> None:
        """Swap the handshake's StreamReaderProtocol for a ``_FrameProtocol``.

        Whatever the StreamReader already buffered past the handshake (the
        listener may send frames right behind its FIN) and an EOF it already
        saw are handed over; this reads the StreamReader's private ``_buffer``
        and ``_eof`` (CPython's asyncio, stable since 3.4), as asyncio has no
        public way to take the rest of a StreamReader's buffer."""
        transport = conn.writer.transport
        proto = _FrameProtocol(self, conn)
        conn.proto = proto
        if transport.is_closing():
            self._drop(conn, "connection closed right after the handshake", abort=True)
            proto.closed.set_result(None)
            return
        reader = conn.reader
        leftover = bytes(reader._buffer)  # noqa: SLF001 - see the docstring
        reader._buffer.clear()  # noqa: SLF001
        eof = bool(reader._eof)  # noqa: SLF001
        transport.set_protocol(proto)
        transport.set_write_buffer_limits(high=0, low=0)  # drain() waits for an empty buffer
        if leftover:
            proto.feed(leftover)
        if eof:
            proto.eof_received()
            transport.close()
        elif not transport.is_reading() and not conn.closed:
            transport.resume_reading()

    @staticmethod
    def _add_framing(counters: ByteCounters, pid: str, sent: int, received: int) -> None:
        counters.sent.framing += sent
        counters.sent_to[pid].framing += sent
        counters.received.framing += received
        counters.received_from[pid].framing += received

    # ----------------------------------------------------------------- receiving

    def _take_sink(self, src: str, tag: Tag, size: int, proto: _FrameProtocol) -> memoryview | None:
        """The buffer a waiting ``recv_into`` posted for ``(src, tag)`` if it
        holds exactly ``size`` bytes and no other connection reads into it."""
        key = (src, tag)
        sink = self._sinks.get(key)
        if sink is None or sink.nbytes != size or key in self._sink_readers or key not in self._waiters:
            return None
        self._sink_readers[key] = proto
        return sink

    def _sink_done(self, key: tuple[str, Tag], proto: _FrameProtocol) -> None:
        if self._sink_readers.get(key) is proto:
            del self._sink_readers[key]

    def _deliver(self, src: str, tag: Tag, payload: bytearray | memoryview) -> None:
        key = (src, tag)
        consumed = self._consumed.setdefault(src, set())
        if tag in consumed:
            raise ProtocolError(f"duplicate frame {tag}: already received from {src!r}")
        if key in self._mailbox:
            raise ProtocolError(f"duplicate frame {tag}: one from {src!r} is still unread")
        fut = self._waiters.get(key)
        if fut is not None and not fut.done():
            consumed.add(tag)
            fut.set_result(payload)
            return
        if not isinstance(payload, bytearray):  # a posted buffer belongs to its caller: keep a copy
            payload = bytearray(payload)
        held = self._buffered.get(src, 0) + len(payload)
        if held > self.max_buffered:
            raise ProtocolError(f"peer holds {held} unread payload bytes here, over the limit of {self.max_buffered}")
        self._buffered[src] = held
        self._mailbox[key] = payload

    def _deliver_part(self, src: str, tag: Tag, part: tuple[int, int], payload: bytearray) -> None:
        """One part of a split message: parts arrive in order on one connection
        (frames are sequenced); the whole message is delivered with its last part."""
        key = (src, tag)
        index, count = part
        held = self._partial.get(key)
        if held is None:
            if index != 0:
                raise ProtocolError(f"part {index} of {count} of {tag} from {src!r} arrived before part 0")
            held = self._partial[key] = (count, [])
        if held[0] != count or len(held[1]) != index:
            raise ProtocolError(f"part {index}/{count} of {tag} from {src!r} is out of order "
                                f"(expected {len(held[1])}/{held[0]})")
        pending = self._buffered.get(src, 0) + len(payload)
        if pending > self.max_buffered and key not in self._waiters:
            raise ProtocolError(f"peer holds {pending} unread payload bytes here, over the limit of {self.max_buffered}")
        self._buffered[src] = pending
        held[1].append(payload)
        if index + 1 == count:
            del self._partial[key]
            whole = bytearray(b"".join(held[1]))
            self._buffered[src] -= len(whole)
            self._deliver(src, tag, whole)

    async def recv(self, src: str, tag: Tag, *, timeout: float | None = None) -> bytearray:
        key = (src, tag)
        payload = self._mailbox.pop(key, None)
        if payload is not None:
            self._buffered[src] -= len(payload)
            self._consumed.setdefault(src, set()).add(tag)
            return self._count_recv(src, tag, payload)
        if tag in self._consumed.get(src, ()):
            raise RuntimeError(f"{self.peer_id!r}: message {tag} from {src!r} was already received")
        if key in self._waiters:
            raise RuntimeError(f"{self.peer_id!r}: another recv already waits for {tag} from {src!r}")
        if self._closed:
            raise PeerError(f"peer {src!r} is unreachable: transport {self.peer_id!r} is closed (waited for {tag})")
        if src in self._gone and not self._conns.get(src):
            raise PeerError(f"peer {src!r} is gone ({self._gone[src]}); waited for {tag} at {self.peer_id!r}")
        fut: asyncio.Future[bytearray] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        try:
            await asyncio.wait((fut,), timeout=timeout)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # the payload arrived as we were cancelled: keep it for a later recv
                # (a copy if it was read into a recv_into's buffer, which goes back to its caller)
                kept = fut.result()
                kept = kept if isinstance(kept, bytearray) else bytearray(kept)
                self._consumed[src].discard(tag)
                self._mailbox[key] = kept
                self._buffered[src] = self._buffered.get(src, 0) + len(kept)
            fut.cancel()
            raise
        finally:
            if self._waiters.get(key) is fut:
                del self._waiters[key]
        if not fut.done():
            fut.cancel()
            raise TimeoutError(f"{self.peer_id!r}: no message {tag} from {src!r} within {timeout} s")
        return self._count_recv(src, tag, fut.result())

    async def recv_into(self, src: str, tag: Tag, out: Buffer, *, timeout: float | None = None) -> int:
        """``recv``, with the payload landing in ``out`` (see ``Transport.recv_into``).

        While this waits, ``out`` is posted: a frame for exactly ``(src,
        tag)`` of exactly ``len(out)`` bytes is read by the kernel straight
        into it (no other copy) and authenticated there; ``out`` is handed
        back only once the frame's MAC checked out. A message that was
        already here, was split, or has another size is copied (if it fits).
        When the wait ends without a message (timeout, cancel, peer gone) the
        buffer is released at once: a frame still being read moves to a
        buffer of its own and nothing writes into ``out`` any more."""
        view = memoryview(out)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if view.readonly:
            raise ValueError("recv_into needs a writable buffer")
        key = (src, tag)
        if key in self._sinks or key in self._waiters or key in self._mailbox:
            return _copy_into(await self.recv(src, tag, timeout=timeout), view)
        self._sinks[key] = view
        try:
            data = await self.recv(src, tag, timeout=timeout)
        finally:
            if self._sinks.get(key) is view:
                del self._sinks[key]
            reader = self._sink_readers.pop(key, None)
            if reader is not None:
                reader.detach_sink()
        if data is view:
            return view.nbytes
        return _copy_into(data, view)

    def discard_before(self, epoch: int) -> int:
        """Drop unread frames of attempt namespaces older than ``epoch`` (tags whose
        round field is ``(e << 32) | round`` with ``0 < e < epoch``), which no
        later attempt will read, and forget the consumed tags of namespaces
        older than ``epoch - 1``; returns how many frames were dropped."""

        def old(tag: Tag, limit: int) -> bool:
            e = tag.round >> 32
            return 0 < e < limit

        dropped = 0
        for key in [k for k in self._mailbox if old(k[1], epoch)]:
            payload = self._mailbox.pop(key)
            self._buffered[key[0]] = self._buffered.get(key[0], 0) - len(payload)
            dropped += 1
        for tags in self._consumed.values():
            for t in [t for t in tags if old(t, epoch - 1)]:
                tags.discard(t)
        return dropped

    def _count_recv(self, src: str, tag: Tag, payload: Any) -> Any:
        self.counters.count_received(src, len(payload), message_overhead(tag, len(payload), self.max_frame))
        return payload

    def _fail_waiters(self, peer: str, reason: str) -> None:
        for (src, tag), fut in list(self._waiters.items()):
            if src == peer and not fut.done():
                fut.set_exception(PeerError(f"peer {peer!r} is gone ({reason}); waited for {tag} at {self.peer_id!r}"))

    def _drop(self, conn: _Connection, reason: str, *, abort: bool = False) -> None:
        if conn.closed:
            return
        conn.closed = True
        conns = self._conns.get(conn.peer_id, [])
        if conn in conns:
            conns.remove(conn)
        if abort:
            conn.writer.transport.abort()
        else:
            conn.writer.transport.close()
        logger.info("peer %s: connection to %s at %s closed (%s)", self.peer_id, conn.peer_id, conn.where, reason)
        if not conns:
            self._conns.pop(conn.peer_id, None)
            self._gone[conn.peer_id] = reason
            if not self._is_trusted(conn.peer_id):  # a stranger's unread frames go with it
                for key in [k for k in self._mailbox if k[0] == conn.peer_id]:
                    self._buffered[conn.peer_id] = self._buffered.get(conn.peer_id, 0) - len(self._mailbox.pop(key))
            for key in [k for k in self._partial if k[0] == conn.peer_id]:  # a split message cut off: never completes
                _, parts = self._partial.pop(key)
                self._buffered[conn.peer_id] = self._buffered.get(conn.peer_id, 0) - sum(len(x) for x in parts)
            self._fail_waiters(conn.peer_id, reason)

    # ----------------------------------------------------------------- sending

    def _live(self, dst: str) -> _Connection | None:
        for conn in self._conns.get(dst, ()):
            if not conn.closed:
                return conn
        return None

    async def _connection_to(self, dst: str) -> _Connection:
        conn = self._live(dst)
        if conn is not None:
            return conn
        task = self._dialing.get(dst)
        if task is None:
            addr = self._book.get(dst)
            if addr is None:
                reason = self._gone.get(dst)
                raise PeerError(f"no connection to peer {dst!r} and no address for it"
                                + (f" (it is gone: {reason})" if reason else "; call add_peer or connect first"))
            task = asyncio.get_running_loop().create_task(self._dial(dst, *addr), name=f"tcp-dial-{dst}")
            self._dialing[dst] = task
            self._tasks.add(task)

            def done(t: asyncio.Task[_Connection], dst: str = dst) -> None:
                self._tasks.discard(t)
                if self._dialing.get(dst) is t:
                    del self._dialing[dst]
                if not t.cancelled():
                    t.exception()  # retrieved here so an unawaited failure is not reported twice

            task.add_done_callback(done)
        try:
            await asyncio.shield(task)
        except ProtocolError as exc:
            raise PeerError(f"cannot connect to peer {dst!r}: {exc}") from exc
        conn = self._live(dst)
        if conn is None:
            raise PeerError(f"connection to peer {dst!r} closed right after the handshake ({self._gone.get(dst)})")
        return conn

    async def send(self, dst: str, tag: Tag, payload: Buffer) -> None:
        if self._closed:
            raise PeerError(f"cannot send {tag} to {dst!r}: transport {self.peer_id!r} is closed")
        check_tag(tag)
        view = memoryview(payload)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = view.nbytes
        sizes = split_sizes(tag, size, self.max_frame)  # a message over max_frame goes as several frames
        framing = message_overhead(tag, size, self.max_frame)
        try:
            conn = await self._connection_to(dst)
        except PeerError as exc:
            self._undeliverable(dst, tag, str(exc))
            return
        async with conn.send_lock:
            if conn.closed:
                self._undeliverable(dst, tag, f"connection closed ({self._gone.get(dst, 'closed')})")
                return
            try:
                at = 0
                for i, n in enumerate(sizes):
                    piece = view[at:at + n]
                    at += n
                    part = (i, len(sizes)) if len(sizes) > 1 else None
                    prefix = frame_prefix(tag, n, part=part)
                    seq = conn.send_seq
                    conn.send_seq += 1
                    await self._write(conn, seq, prefix, piece)
            except (ConnectionError, OSError, TimeoutError) as exc:
                what = "write stalled" if isinstance(exc, TimeoutError) else f"write failed: {exc or type(exc).__name__}"
                self._drop(conn, what, abort=True)
                self._undeliverable(dst, tag, f"{what} at {conn.where}")
                return
            except BaseException:
                # cancelled mid-frame: the stream is now unusable for both sides
                self._drop(conn, f"send of {tag} was interrupted", abort=True)
                raise
        self.counters.count_sent(dst, size, framing)

    def _undeliverable(self, dst: str, tag: Tag, reason: str) -> None:
        """Like a packet to a dead host (as in the simulator): the send returns,
        nothing is counted, and the peer is marked gone unless another
        connection to it is still alive, so that recvs from it fail fast."""
        logger.warning("peer %s: dropped %s for unreachable peer %s: %s", self.peer_id, tag, dst, reason)
        if not self._conns.get(dst):
            self._gone[dst] = reason
            self._fail_waiters(dst, reason)

    async def _write(self, conn: _Connection, seq: int, prefix: bytes, payload: memoryview) -> None:
        """Write one frame (``prefix``, ``payload``, then its MAC) and return
        once all of it is in the kernel.

        The MAC is computed slice by slice right before each slice is
        written, while the slice is in cache; the payload is never copied
        by us. The write buffer limits are ``high=0, low=0`` (see
        ``_take_over``): asyncio pauses the protocol whenever anything is
        left in its buffer and resumes it only when the buffer is empty, so
        each ``drain`` waits until the bytes written so far were handed to
        the kernel. Writing the next slice only then keeps what asyncio
        copies of unsent data below one slice. Returning earlier (at a
        low-water mark) would leave the tail of the frame in this process,
        and a sender whose event loop then blocks (a long synchronous
        training step) would stall the receiver mid-frame."""
        transport, proto = conn.writer.transport, conn.proto
        assert proto is not None
        h = FrameMac(conn.send_mac, seq, prefix)
        transport.write(prefix)
        n = payload.nbytes
        for off in range(0, n, WRITE_CHUNK):
            piece = payload[off:off + WRITE_CHUNK]
            h.update(piece)
            transport.write(piece)
            if transport.get_write_buffer_size():
                async with asyncio.timeout(self.io_timeout):
                    await proto.drain()
        transport.write(h.finalize())
        if transport.get_write_buffer_size():
            async with asyncio.timeout(self.io_timeout):
                await proto.drain()
        if conn.closed or transport.is_closing():
            raise ConnectionResetError("connection closed while writing")

    # ----------------------------------------------------------------- misc

    def compute(self, seconds: float) -> None:
        return None

    def now(self) -> float:
        return time.monotonic()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        pending = [t for t in self._tasks if not t.done()]
        conns = [c for cs in self._conns.values() for c in cs]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for conn in conns:
            self._drop(conn, f"transport {self.peer_id!r} closed")
        for conn in conns:
            try:
                async with asyncio.timeout(self.io_timeout):
                    if conn.proto is not None:
                        await asyncio.shield(conn.proto.closed)
            except (TimeoutError, ConnectionError, OSError):
                conn.writer.transport.abort()
        for (src, tag), fut in list(self._waiters.items()):
            if not fut.done():
                fut.set_exception(PeerError(f"peer {src!r} is unreachable: transport {self.peer_id!r} closed "
                                            f"(waited for {tag})"))
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("peer %s closed", self.peer_id)


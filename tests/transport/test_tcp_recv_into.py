"""Frame layout v3 (MAC after the payload) and ``recv_into`` over real sockets
on 127.0.0.1: a payload lands in the posted buffer and is handed back only
once its MAC checked out; tampering, truncation inside the MAC trailer and
oversize length fields cost the connection with a named ProtocolError; a
posted buffer is never written after its call ended."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gossamer.errors import PeerError
from gossamer.transport.base import Tag
from gossamer.transport.frame import MAC_BYTES, encode_frame, encode_header, frame_overhead
from gossamer.transport.identity import Identity
from gossamer.transport.sim import LinkSpec, SimNetwork
from gossamer.transport.tcp import TcpTransport, handshake

pytestmark = pytest.mark.timeout(60)

SWARM = "recv-into-swarm"
LOGGER = "gossamer.transport.tcp"
MiB = 1 << 20


def run(coro: Awaitable[object], timeout: float = 45) -> object:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def start(n: int = 2, **kw: Any) -> list[TcpTransport]:
    ts = [await TcpTransport.start(Identity.generate(), SWARM, **kw) for _ in range(n)]
    for t in ts:
        for u in ts:
            if u is not t:
                t.add_peer(u.peer_id, *u.address)
    return ts


async def close_all(ts: list[TcpTransport]) -> None:
    await asyncio.gather(*(t.close() for t in ts))


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def warnings_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


class RawClient:
    """A client that completes a genuine handshake, then writes arbitrary bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: Identity,
                 send_key: bytes) -> None:
        self.reader, self.writer, self.peer_id, self.send_key = reader, writer, identity.peer_id, send_key
        self.seq = 0

    @classmethod
    async def connect(cls, server: TcpTransport) -> "RawClient":
        identity = Identity.generate()
        reader, writer = await asyncio.open_connection(*server.address)
        session = await handshake(reader, writer, identity, SWARM, initiator=True, io_timeout=5)
        return cls(reader, writer, identity, session.send_key)

    def frame(self, tag: Tag, payload: bytes) -> bytes:
        data = b"".join(bytes(p) for p in encode_frame(tag, payload, self.send_key, self.seq))
        self.seq += 1
        return data

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def kill(self) -> None:
        self.writer.transport.abort()


def test_recv_into_lands_the_payload_in_the_posted_buffer_and_counts_like_recv():
    async def main() -> None:
        a, b = await start()
        try:
            payload = os.urandom(3 * MiB + 5)
            out = bytearray(len(payload))
            pending = asyncio.ensure_future(b.recv_into(a.peer_id, Tag(1, 2, 3), out, timeout=10))
            await asyncio.sleep(0)  # posted before the frame arrives
            await a.send(b.peer_id, Tag(1, 2, 3), payload)
            assert await pending == len(payload)
            assert out == payload
            assert b.counters.received.payload == len(payload)
            assert b.counters.received.messages == 1
            # a message already here is copied; one of another size says how long it is
            await a.send(b.peer_id, Tag(1, 2, 4), b"abcdef")
            await a.send(b.peer_id, Tag(1, 2, 5), b"0123456789")
            await eventually(lambda: b.counters.received.messages == 1 and len(b._mailbox) == 2)  # noqa: SLF001
            small = bytearray(b"." * 8)
            assert await b.recv_into(a.peer_id, Tag(1, 2, 4), small, timeout=5) == 6
            assert small == b"abcdef.."
            assert await b.recv_into(a.peer_id, Tag(1, 2, 5), small, timeout=5) == 10
            assert small == b"abcdef.."  # too long: not written
            with pytest.raises(ValueError, match="writable"):
                await b.recv_into(a.peer_id, Tag(1, 2, 6), b"read-only")
        finally:
            await close_all([a, b])

    run(main())


@pytest.mark.parametrize("where", ["first payload byte", "middle payload byte", "last payload byte", "MAC byte"])
def test_tampered_byte_under_a_posted_buffer_is_a_forged_frame(caplog, where):
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def main() -> None:
        server, good = await start()
        raw = await RawClient.connect(server)
        try:
            await eventually(lambda: raw.peer_id in server.connected_peers())
            payload = os.urandom(MiB)
            out = bytearray(len(payload))
            pending = asyncio.ensure_future(server.recv_into(raw.peer_id, Tag(7, 0, 0), out, timeout=10))
            await asyncio.sleep(0)
            data = bytearray(raw.frame(Tag(7, 0, 0), payload))
            start_at = len(data) - MAC_BYTES - len(payload)
            pos = {"first payload byte": start_at, "middle payload byte": start_at + len(payload) // 2,
                   "last payload byte": len(data) - MAC_BYTES - 1, "MAC byte": len(data) - 1}[where]
            data[pos] ^= 0x40
            await raw.write(bytes(data))
            with pytest.raises(PeerError, match=raw.peer_id):
                await asyncio.wait_for(pending, 5)
            await eventually(lambda: "replayed or forged frame: MAC mismatch at frame sequence number 0"
                             in warnings_text(caplog))
            assert f"ProtocolError from peer {raw.peer_id} at 127.0.0.1:" in warnings_text(caplog)
            assert server.counters.received.messages == 0
            # the server keeps serving others
            await good.send(server.peer_id, Tag(5, 5, 5), b"ok")
            assert await server.recv(good.peer_id, Tag(5, 5, 5), timeout=5) == b"ok"
        finally:
            raw.kill()
            await close_all([server, good])

    run(main())


def test_truncated_inside_the_mac_trailer(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def main() -> None:
        server, good = await start()
        raw = await RawClient.connect(server)
        try:
            await eventually(lambda: raw.peer_id in server.connected_peers())
            out = bytearray(100_000)
            pending = asyncio.ensure_future(server.recv_into(raw.peer_id, Tag(0, 0, 0), out))
            data = raw.frame(Tag(0, 0, 0), b"y" * 100_000)
            await raw.write(data[:-5])  # the whole payload and 11 of the 16 MAC bytes
            raw.writer.close()
            with pytest.raises(PeerError, match=raw.peer_id):
                await asyncio.wait_for(pending, 5)
            await eventually(lambda: "truncated frame: connection closed after the payload and 11 of 16 MAC bytes"
                             in warnings_text(caplog))
        finally:
            raw.kill()
            await close_all([server, good])

    run(main())


def test_oversize_length_field_is_refused_from_the_length_alone(caplog):
    """Nothing but the 4-byte length and the 2-byte header length arrive: the
    frame is refused from those, before any body is waited for or allocated."""
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def main() -> None:
        server, good = await start(max_frame=1 << 20)
        raw = await RawClient.connect(server)
        try:
            await eventually(lambda: raw.peer_id in server.connected_peers())
            out = bytearray(64)
            pending = asyncio.ensure_future(server.recv_into(raw.peer_id, Tag(0, 0, 0), out))
            await raw.write(struct.pack("<IH", (1 << 20) + 1, len(encode_header(Tag(0, 0, 0)))))
            with pytest.raises(PeerError, match=raw.peer_id):
                await asyncio.wait_for(pending, 5)
            assert "frame body length 1048577 exceeds max_frame 1048576" in warnings_text(caplog)
        finally:
            raw.kill()
            await close_all([server, good])

    run(main())


def test_a_posted_buffer_is_never_written_after_its_call_ended():
    """recv_into times out while its frame is half read into the buffer: the
    rest goes to a buffer of the transport's own, the caller's stays as the
    caller left it, and the whole message is still delivered to a later recv."""

    async def main() -> None:
        server, good = await start()
        raw = await RawClient.connect(server)
        try:
            await eventually(lambda: raw.peer_id in server.connected_peers())
            payload = os.urandom(2 * MiB)
            out = bytearray(len(payload))
            pending = asyncio.ensure_future(server.recv_into(raw.peer_id, Tag(3, 0, 0), out, timeout=0.5))
            await asyncio.sleep(0)
            data = raw.frame(Tag(3, 0, 0), payload)
            await raw.write(data[:MiB])
            with pytest.raises(TimeoutError):
                await pending
            out[:] = b"\xee" * len(out)
            await raw.write(data[MiB:])
            assert await server.recv(raw.peer_id, Tag(3, 0, 0), timeout=5) == payload
            assert out == b"\xee" * len(out)
            # cancelled likewise
            task = asyncio.ensure_future(server.recv_into(raw.peer_id, Tag(3, 0, 1), out))
            await asyncio.sleep(0)
            data = raw.frame(Tag(3, 0, 1), payload)
            await raw.write(data[:MiB])
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            out[:] = b"\xdd" * len(out)
            await raw.write(data[MiB:])
            assert await server.recv(raw.peer_id, Tag(3, 0, 1), timeout=5) == payload
            assert out == b"\xdd" * len(out)
        finally:
            raw.kill()
            await close_all([server, good])

    run(main())


def test_mac_follows_the_payload_on_the_wire():
    """What a raw reader of a TcpTransport's stream sees: length, header, payload, then 16 MAC bytes."""

    async def main() -> None:
        server, good = await start()
        raw = await RawClient.connect(server)
        try:
            await eventually(lambda: raw.peer_id in server.connected_peers())
            await server.send(raw.peer_id, Tag(4, 5, 6), b"P" * 1000)
            head = await raw.reader.readexactly(6)
            body, hlen = struct.unpack("<IH", head)
            header = await raw.reader.readexactly(hlen)
            assert header == encode_header(Tag(4, 5, 6))
            rest = await raw.reader.readexactly(body - 2 - hlen)
            assert rest[:1000] == b"P" * 1000 and len(rest) == 1000 + MAC_BYTES
            assert 4 + body == 1000 + frame_overhead(Tag(4, 5, 6))
        finally:
            raw.kill()
            await close_all([server, good])

    run(main())


def test_default_recv_into_copies_on_the_simulator():
    async def main() -> None:
        net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
        a, b = net.add_peer("a"), net.add_peer("b")
        assert not a.posted_receives
        await a.send("b", Tag(0, 0, 0), b"hello")
        out = bytearray(8)
        assert await b.recv_into("a", Tag(0, 0, 0), out) == 5
        assert out == b"hello\0\0\0"
        assert b.counters.received.payload == 5

    asyncio.run(main())

"""Frame codec and defensive parser: exact overhead, every fault named, and a
fuzz test that only ever yields ProtocolError (never another exception, never a hang)."""

from __future__ import annotations

import asyncio
import hashlib
import struct

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossamer.errors import ProtocolError
from gossamer.transport.base import Tag
from gossamer.transport.frame import (
    MAC_BYTES,
    FrameParser,
    decode_frame,
    encode_frame,
    frame_overhead,
    read_frame,
)

pytestmark = pytest.mark.timeout(60)

KEY = bytes(range(32))
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TAGS = st.builds(Tag, INT64, INT64, INT64)


def frame_bytes(tag: Tag, payload: bytes, key: bytes = KEY, seq: int = 0) -> bytes:
    return b"".join(bytes(b) for b in encode_frame(tag, payload, key, seq))


def raw_frame(header: bytes, payload: bytes = b"", mac: bytes = b"\0" * MAC_BYTES, body: int | None = None,
              hlen: int | None = None) -> bytes:
    """A frame with arbitrary (possibly invalid) header bytes and lengths."""
    h = len(header) if hlen is None else hlen
    b = 2 + len(header) + MAC_BYTES + len(payload) if body is None else body
    return struct.pack("<IH", b, h) + header + payload + mac


@given(TAGS, st.binary(max_size=300), st.integers(min_value=0, max_value=2**64 - 1))
def test_roundtrip_and_overhead_exact(tag, payload, seq):
    data = frame_bytes(tag, payload, seq=seq)
    assert len(data) - len(payload) == frame_overhead(tag)
    assert decode_frame(data, mac_key=KEY, seq=seq) == (tag, payload)


def test_mac_is_gmac_after_the_payload_with_the_sequence_number_as_nonce():
    # the documented construction (version 3), computed independently of frame.py
    tag, payload, seq = Tag(7, -1, 2), b"payload bytes" * 100, 2**64 - 3
    data = frame_bytes(tag, payload, seq=seq)
    header = msgpack.packb({"r": 7, "o": -1, "p": 2})
    prefix = struct.pack("<IH", 2 + len(header) + len(payload) + MAC_BYTES, len(header)) + header
    k = hashlib.blake2b(key=KEY, digest_size=32, person=b"gossamer-gmac-v3").digest()
    gmac = AESGCM(k).encrypt(struct.pack("<Q", seq) + bytes(4), b"", prefix + payload)
    assert data == prefix + payload + gmac
    # a fresh nonce for every frame: the same frame at another seq has another MAC
    assert frame_bytes(tag, payload, seq=seq - 1)[-MAC_BYTES:] != data[-MAC_BYTES:]
    # and a one-byte change anywhere in the authenticated bytes or the MAC is caught
    for pos in (0, 4, 6, len(prefix), len(prefix) + 700, len(data) - MAC_BYTES - 1, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 1
        with pytest.raises(ProtocolError):
            decode_frame(bytes(bad), mac_key=KEY, seq=seq)


def test_encode_does_not_copy_payload():
    payload = bytearray(b"x" * 1000)
    parts = encode_frame(Tag(1, 2, 3), payload, KEY)
    view = parts[1]
    assert isinstance(view, memoryview) and view.obj is payload
    assert len(parts[2]) == MAC_BYTES


def test_parser_yields_frames_across_arbitrary_chunks():
    frames = [(Tag(0, i, i % 3), bytes([i]) * i) for i in range(20)]
    stream = b"".join(frame_bytes(t, p, seq=i) for i, (t, p) in enumerate(frames))
    parser = FrameParser(1 << 20, KEY)
    out = []
    for i in range(0, len(stream), 7):
        out += parser.feed(stream[i:i + 7])
    parser.eof()
    assert out == frames
    assert parser.seq == 20


@pytest.mark.parametrize("data, fault", [
    (struct.pack("<I", 1 << 30), "exceeds max_frame"),
    (struct.pack("<I", 5) + b"\0" * 5, "below the minimum"),
    (struct.pack("<IH", 100, 3), "header length 3 outside"),
    (struct.pack("<IH", 40, 30), "overruns a frame body"),
    (raw_frame(b"\xc1" * 12), "not valid msgpack"),
    (raw_frame(msgpack.packb([1, 2, 3, 4, 5, 6, 7, 8, 9])), "not a msgpack map"),
    (raw_frame(msgpack.packb({"r": 1, "o": 2, "x": 3})), "exactly the keys"),
    (raw_frame(msgpack.packb({"r": 1, "o": 2, "p": 3, "q": 4})), "exactly the keys"),
    (raw_frame(msgpack.packb({"r": 1, "o": 2, "p": "3"})), "must be an int"),
    (raw_frame(msgpack.packb({"r": 1, "o": 2, "p": True})), "must be an int"),
    (raw_frame(msgpack.packb({"r": 1, "o": 2, "p": 2**64 - 1})), "outside the signed 64-bit range"),
    (raw_frame(msgpack.packb({"r": 1, "o": 2, "p": 3}) + b"\0"), "trailing junk after the header"),
    (raw_frame(msgpack.packb({"p": 3, "o": 2, "r": 1})), "non-canonical"),
    (raw_frame(b"\x83\xa1r\xcc\x01\xa1o\x02\xa1p\x03"), "non-canonical"),
    (raw_frame(msgpack.packb({"r": 1, "o": 2, "p": 3}), b"data"), "replayed or forged frame"),
])
def test_malformed_frames_are_named(data, fault):
    with pytest.raises(ProtocolError, match=fault):
        FrameParser(1024, KEY).feed(data)


def test_oversize_length_rejected_before_body_arrives():
    parser = FrameParser(1024, KEY)
    with pytest.raises(ProtocolError, match="exceeds max_frame"):
        parser.feed(struct.pack("<I", 1025))
    with pytest.raises(ProtocolError):  # poisoned
        parser.feed(frame_bytes(Tag(0, 0, 0), b""))


def test_replayed_reordered_and_wrong_key_frames_fail_mac():
    a = frame_bytes(Tag(0, 0, 0), b"first", seq=0)
    b = frame_bytes(Tag(0, 0, 1), b"second", seq=1)
    parser = FrameParser(1024, KEY)
    assert parser.feed(a) == [(Tag(0, 0, 0), b"first")]
    with pytest.raises(ProtocolError, match="replayed or forged frame"):
        parser.feed(a)  # replay
    with pytest.raises(ProtocolError, match="replayed or forged frame"):
        FrameParser(1024, KEY).feed(b)  # reordered: seq 1 arrives first
    with pytest.raises(ProtocolError, match="replayed or forged frame"):
        decode_frame(a, mac_key=bytes(32))


def test_truncated_and_trailing_junk():
    data = frame_bytes(Tag(1, 1, 1), b"payload")
    parser = FrameParser(1024, KEY)
    assert parser.feed(data[:-1]) == []
    with pytest.raises(ProtocolError, match="truncated frame"):
        parser.eof()
    with pytest.raises(ProtocolError, match="trailing junk: 3 bytes"):
        decode_frame(data + b"abc", mac_key=KEY)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_frame(data[:10], mac_key=KEY)


def test_encode_refuses_bad_tags_and_oversize():
    with pytest.raises(ProtocolError, match="signed 64-bit"):
        encode_frame(Tag(2**63, 0, 0), b"", KEY)
    with pytest.raises(ProtocolError, match="must be an int"):
        encode_frame(Tag(True, 0, 0), b"", KEY)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        encode_frame(Tag(0, 0, 0), b"x" * 100, KEY, max_frame=64)


def _stream_reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_read_frame_matches_parser():
    async def main() -> None:
        data = frame_bytes(Tag(3, 4, 5), b"z" * 5000, seq=7) + frame_bytes(Tag(3, 4, 6), b"", seq=8)
        reader = _stream_reader(data)
        tag, payload = await read_frame(reader, mac_key=KEY, seq=7, io_timeout=1)
        # one preallocated, writable buffer the caller owns (torch.frombuffer needs no copy)
        assert (tag, payload) == (Tag(3, 4, 5), b"z" * 5000) and type(payload) is bytearray
        assert await read_frame(reader, mac_key=KEY, seq=8, io_timeout=1) == (Tag(3, 4, 6), b"")
        assert await read_frame(reader, mac_key=KEY, seq=9, io_timeout=1) is None
        with pytest.raises(ProtocolError, match="truncated frame"):
            await read_frame(_stream_reader(data[:50]), mac_key=KEY, seq=7, io_timeout=1)
        stalled = asyncio.StreamReader()
        stalled.feed_data(data[:50])
        with pytest.raises(ProtocolError, match="stalled mid-frame"):
            await read_frame(stalled, mac_key=KEY, seq=7, io_timeout=0.05)
        with pytest.raises(ProtocolError, match="replayed or forged"):
            await read_frame(_stream_reader(data), mac_key=KEY, seq=8, io_timeout=1)

    asyncio.run(main())


# ---------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_all(data: bytes, chunk: int) -> list[tuple[Tag, bytes]]:
    parser = FrameParser(4096, KEY)
    out: list[tuple[Tag, bytes]] = []
    for i in range(0, len(data), chunk):
        out += parser.feed(data[i:i + chunk])
    parser.eof()
    return out


@FUZZ
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes_only_protocol_error(data, chunk):
    try:
        _parse_all(data, chunk)
    except ProtocolError:
        pass


@st.composite
def mutated_stream(draw):
    frames = draw(st.lists(st.tuples(TAGS, st.binary(max_size=200)), min_size=1, max_size=4))
    stream = bytearray(b"".join(frame_bytes(t, p, seq=i) for i, (t, p) in enumerate(frames)))
    ops = draw(st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]),
                                  st.integers(min_value=0, max_value=len(stream) - 1),
                                  st.integers(min_value=0, max_value=255)), min_size=1, max_size=4))
    for op, pos, val in ops:
        pos = min(pos, max(len(stream) - 1, 0))
        if op == "flip" and stream:
            stream[pos] ^= val or 1
        elif op == "insert":
            stream[pos:pos] = bytes([val])
        elif op == "delete" and stream:
            del stream[pos]
        elif op == "truncate":
            del stream[pos:]
        elif op == "set" and stream:
            stream[pos] = val
    return frames, bytes(stream)


@FUZZ
@given(mutated_stream(), st.integers(min_value=1, max_value=97))
def test_fuzz_mutated_frames_only_protocol_error(case, chunk):
    frames, data = case
    try:
        out = _parse_all(data, chunk)
    except ProtocolError:
        return
    # accepted only if the mutation left the stream equal to a valid one
    assert out == frames[:len(out)]
    assert data == b"".join(frame_bytes(t, p, seq=i) for i, (t, p) in enumerate(out))


@FUZZ
@given(mutated_stream())
def test_fuzz_read_frame_only_protocol_error(case):
    _, data = case

    async def main() -> None:
        reader = _stream_reader(data)
        seq = 0
        while True:
            try:
                frame = await read_frame(reader, max_frame=4096, mac_key=KEY, seq=seq, io_timeout=1)
            except ProtocolError:
                return
            if frame is None:
                return
            seq += 1

    asyncio.run(asyncio.wait_for(main(), 5))


def test_good_frames_before_a_bad_one_in_the_same_buffer_are_delivered():
    """Issue 10.7: feed() used to drop authentic frames that arrived in the same
    buffer as a later bad one."""
    good = [(Tag(1, 2, 3), b"first"), (Tag(1, 2, 4), b"second")]
    data = b"".join(frame_bytes(t, p, seq=i) for i, (t, p) in enumerate(good))
    bad = bytearray(frame_bytes(Tag(9, 9, 9), b"third", seq=2))
    bad[-1] ^= 1  # forged
    parser = FrameParser(4096, KEY)
    assert parser.feed(data + bytes(bad)) == good
    assert parser.failed
    with pytest.raises(ProtocolError, match="MAC mismatch"):
        parser.feed(b"")
    with pytest.raises(ProtocolError):
        parser.eof()
    # decode_frame still refuses one good frame followed by junk
    with pytest.raises(ProtocolError, match="trailing junk"):
        decode_frame(frame_bytes(*good[0]) + bytes(bad), mac_key=KEY)


@FUZZ
@given(mutated_stream(), st.integers(min_value=1, max_value=97))
def test_fuzz_every_authentic_prefix_frame_is_delivered(case, chunk):
    """Whatever follows, the frames of the longest unmodified prefix come out."""
    frames, data = case
    clean = b""
    intact = 0
    for i, (t, p) in enumerate(frames):
        fb = frame_bytes(t, p, seq=i)
        if data[len(clean):len(clean) + len(fb)] != fb:
            break
        clean += fb
        intact += 1
    parser = FrameParser(4096, KEY)
    out: list[tuple[Tag, bytes]] = []
    try:
        for i in range(0, len(data), chunk):
            out += parser.feed(data[i:i + chunk])
    except ProtocolError:
        pass
    assert out[:intact] == frames[:intact]

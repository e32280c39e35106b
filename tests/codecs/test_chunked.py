"""ctopk: chunked top-k with packed in-chunk indices, 1/2-bit values, optional DCT; +ef:BETA."""

from __future__ import annotations

import math

import pytest
import torch

from gossamer.codecs import ChunkTopKCodec, codec_for_mean, make_codec
from gossamer.codecs.base import HEADER_SIZE
from gossamer.errors import CodecError, ConfigError


def rand(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_size_is_indices_at_their_bit_width_plus_levels_plus_codes() -> None:
    c = make_codec("ctopk:64")
    assert c.spec == "ctopk:64:4096:2bit" and c.bits == 12
    # per full chunk: 64 * 12 bits of indices, 2 float32 levels, 64 * 2 bits of codes
    assert c.encoded_size((4096 * 10,)) == HEADER_SIZE + 10 * (96 + 8 + 16)
    assert 4 * 4096 * 10 / c.encoded_size((4096 * 10,)) > 135
    one = make_codec("ctopk:64:4096:1bit")
    assert one.encoded_size((4096,)) == HEADER_SIZE + 96 + 4 + 8
    # a short last chunk keeps min(K, len) entries
    assert make_codec("ctopk:4:16:fp32").encoded_size((18,)) == HEADER_SIZE + math.ceil(6 * 4 / 8) + 6 * 4
    assert len(c.encode(rand(4096 * 3 + 5))) == c.encoded_size((4096 * 3 + 5,))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 161])
def test_fp32_values_keep_each_chunks_top_k_exactly(n: int) -> None:
    c = make_codec("ctopk:3:16:fp32")
    x = rand(n, n)
    y = c.decode(c.encode(x), (n,))
    for lo in range(0, n, 16):
        piece, got = x[lo : lo + 16], y[lo : lo + 16]
        k = min(3, piece.numel())
        idx = piece.abs().topk(k).indices
        expect = torch.zeros_like(piece)
        expect[idx] = piece[idx]
        assert torch.equal(got, expect)


def test_two_bit_values_are_signed_levels_split_at_the_median() -> None:
    c = make_codec("ctopk:4:16")
    x = torch.zeros(16)
    x[[1, 5, 9, 12]] = torch.tensor([-8.0, 1.0, 6.0, -3.0])
    y = c.decode(c.encode(x), (16,))
    # the 2 largest magnitudes (8, 6) share hi = 7, the others (3, 1) lo = 2; signs kept
    expect = torch.zeros(16)
    expect[[1, 5, 9, 12]] = torch.tensor([-7.0, 2.0, 7.0, -2.0])
    assert torch.equal(y, expect)
    one = make_codec("ctopk:4:16:1bit")
    expect1 = torch.zeros(16)
    expect1[[1, 5, 9, 12]] = torch.tensor([-4.5, 4.5, 4.5, -4.5])
    assert torch.equal(one.decode(one.encode(x), (16,)), expect1)


@pytest.mark.parametrize("spec", ["ctopk:8:64", "ctopk:8:64:1bit", "ctopk:8:64:2bit:dct", "ctopk:64:4096"])
def test_error_never_exceeds_the_input_and_same_input_same_bytes(spec: str) -> None:
    c = make_codec(spec)
    for seed in range(5):
        x = rand(5000, seed) * 10 ** (seed - 2)
        data = c.encode(x, seed=seed)
        assert data == make_codec(spec).encode(x.clone(), seed=seed)
        y = c.decode(data, (5000,))
        assert float((x - y).norm()) <= float(x.norm()) * (1 + 1e-5)


def test_dct_recovers_a_smooth_chunk_from_few_coefficients() -> None:
    c = make_codec("ctopk:2:64:fp32:dct")
    i = torch.arange(8, dtype=torch.float64)
    wave = torch.cos(math.pi / 8 * (i + 0.5) * 1)  # the first non-constant DCT basis row
    x = (3.0 + 2.0 * wave[:, None] * torch.ones(8)[None, :]).reshape(-1).float()  # constant + one basis image
    y = c.decode(c.encode(x), (64,))
    assert torch.allclose(x, y, atol=1e-5)
    plain = make_codec("ctopk:2:64:fp32")
    assert float((plain.decode(plain.encode(x), (64,)) - x).norm()) > 10 * float((y - x).norm())


def _payload(spec: str, n: int) -> tuple[ChunkTopKCodec, bytearray]:
    c = make_codec(spec)
    return c, bytearray(c.encode(rand(n, 3)))


def test_decoder_names_each_fault() -> None:
    c, data = _payload("ctopk:3:16:fp32", 16)
    bad = bytearray(data)
    bad[HEADER_SIZE] = 0xFF  # first index field (4 bits) becomes 15 and the next one grows: order breaks
    with pytest.raises(CodecError, match="index"):
        c.decode(bytes(bad), (16,))
    # a repeated index: write fields 5, 5, 9
    fields = [5, 5, 9]
    packed = sum(v << (4 * i) for i, v in enumerate(fields)).to_bytes(2, "little")
    bad = bytearray(data)
    bad[HEADER_SIZE : HEADER_SIZE + 2] = packed
    with pytest.raises(CodecError, match="repeated index in chunk 0 at position 1"):
        c.decode(bytes(bad), (16,))
    # an index past a short last chunk (18 elements: tail of 2)
    c2, data2 = _payload("ctopk:3:16:fp32", 18)
    bits = int.from_bytes(data2[HEADER_SIZE : HEADER_SIZE + 3], "little")
    bits |= 0xF << (4 * 4)  # the tail's second index (field 4) becomes 15
    data2[HEADER_SIZE : HEADER_SIZE + 3] = bits.to_bytes(3, "little")
    with pytest.raises(CodecError, match="index out of range at entry 4: expected < 2, found 15"):
        c2.decode(bytes(data2), (18,))
    # set padding bits after the index fields (3 fields x 4 bits: byte 1's high nibble is padding)
    bad = bytearray(data)
    bad[HEADER_SIZE + 1] |= 0xF0
    with pytest.raises(CodecError, match="zero padding after the index fields"):
        c.decode(bytes(bad), (16,))
    # levels: negative, NaN, lo > hi
    c3, data3 = _payload("ctopk:3:16", 16)
    at = HEADER_SIZE + 2
    for lo, hi, msg in [(-1.0, 2.0, "levels >= 0"), (float("nan"), 2.0, "levels >= 0"), (3.0, 2.0, "lo <= hi in chunk 0")]:
        bad = bytearray(data3)
        bad[at : at + 8] = torch.tensor([lo, hi]).numpy().tobytes()
        with pytest.raises(CodecError, match=msg):
            c3.decode(bytes(bad), (16,))
    with pytest.raises(CodecError, match="truncated"):
        c3.decode(bytes(data3[:-1]), (16,))
    with pytest.raises(CodecError, match="spec tag"):
        make_codec("ctopk:3:16:1bit").decode(bytes(data3), (16,))


def test_non_finite_input_is_refused() -> None:
    x = rand(100)
    x[7] = float("nan")
    for spec in ("ctopk:3:16", "ctopk:3:16:dct", "ctopk:3:16:fp32"):
        with pytest.raises(CodecError, match="finite"):
            make_codec(spec).encode(x)


def test_grammar() -> None:
    assert make_codec("ctopk:32:1024:1bit:dct").spec == "ctopk:32:1024:1bit:dct"
    assert make_codec("ctopk:5:dct").spec == "ctopk:5:4096:2bit:dct"
    assert make_codec("ctopk:64+ef:0.95").spec == "ctopk:64:4096:2bit+ef:0.95"
    assert make_codec("ctopk:64+ef:1").spec == "ctopk:64:4096:2bit+ef"
    assert make_codec(make_codec("ctopk:7:100:fp32").spec).spec == "ctopk:7:100:fp32"
    for bad, msg in [("ctopk", "ctopk takes"), ("ctopk:0", "K must be"), ("ctopk:9:8", "K must be <= CHUNK"),
                     ("ctopk:4:120:dct", "must be a square"), ("ctopk:4:16:3bit", "ctopk takes"),
                     ("ctopk:4+ef:0", "BETA must be in"), ("ctopk:4+ef:1.5", "BETA must be in"),
                     ("ctopk:4:1", "CHUNK must be in")]:
        with pytest.raises(ConfigError, match=msg):
            make_codec(bad)


def test_ef_beta_decays_the_memory_before_adding() -> None:
    c = make_codec("ctopk:1:4:fp32+ef:0.5")
    x1 = torch.tensor([4.0, 1.0, 0.5, 0.0])
    y1 = c.decode(c.encode(x1, key="k"), (4,))
    assert torch.equal(y1, torch.tensor([4.0, 0, 0, 0]))
    assert torch.equal(c.sender_state("k")["e"], torch.tensor([0.0, 1.0, 0.5, 0.0]))
    x2 = torch.tensor([0.0, 1.0, 0.0, 0.0])
    y2 = c.decode(c.encode(x2, key="k"), (4,))
    assert torch.equal(y2, torch.tensor([0.0, 1.5, 0, 0]))  # 1 + 0.5 * 1
    assert torch.equal(c.sender_state("k")["e"], torch.tensor([0.0, 0.0, 0.25, 0.0]))  # 0.5 * 0.5
    # encode_segments may override the decay (the all-reduce's owner keeps its memory whole)
    c.encode_segments(torch.zeros(4), [(0, 4, (4,))], key="s", seeds=[0])
    c.encode_segments(torch.tensor([0.0, 0.0, 0.0, 0.0]), [(0, 4, (4,))], key="s", seeds=[0], decay=1.0)
    assert c.beta == 0.5 and c._decay is None


def test_codec_for_mean_resparsifies_under_error_feedback_and_is_exact_otherwise() -> None:
    run = make_codec("ctopk:64+ef:0.95")
    assert codec_for_mean(run, 8) is run  # the owner's memory lives in the run's codec (saved with it)
    assert codec_for_mean(make_codec("ctopk:64+ef"), 8, exact=True).spec == "ctopk:512:4096:fp32"
    assert codec_for_mean(make_codec("ctopk:64"), 100).spec == "ctopk:4096:4096:fp32"
    # the exact form really is exact on a mean of n K-sparse contributions
    c = make_codec("ctopk:2:16")
    xs = [c.decode(c.encode(rand(48, s)), (48,)) for s in range(3)]
    mean = torch.stack(xs).mean(0)
    m = codec_for_mean(c, 3)
    assert torch.equal(m.decode(m.encode(mean), (48,)), mean)


def test_crandk_sends_no_indices_and_every_sender_of_a_seed_shares_the_positions() -> None:
    c = make_codec("crandk:256")
    assert c.spec == "crandk:256:4096:2bit"
    assert c.encoded_size((4096 * 10,)) == HEADER_SIZE + 10 * (8 + 64)  # levels + 2-bit codes, no index
    a, b = rand(4096 * 2 + 50, 1), rand(4096 * 2 + 50, 2)
    ya, yb = (c.decode(c.encode(v, seed=9), v.shape, seed=9) for v in (a, b))
    assert torch.equal(ya != 0, yb != 0)  # same support
    assert int((ya != 0).sum()) == 2 * 256 + 50
    other = c.decode(c.encode(a, seed=10), a.shape, seed=10)
    assert not torch.equal(other != 0, ya != 0)  # a new seed (round) picks new positions
    # the mean of contributions on a shared support is re-sent without a selection loss
    f = make_codec("crandk:8:64:fp32")
    xs = [f.decode(f.encode(rand(200, s), seed=3), (200,), seed=3) for s in range(4)]
    mean = torch.stack(xs).mean(0)
    m = codec_for_mean(f, 4)
    assert m is f and torch.equal(m.decode(m.encode(mean, seed=3), (200,), seed=3), mean)
    assert codec_for_mean(make_codec("crandk:8:64+ef"), 4, exact=True).spec == "crandk:8:64:fp32"
    with pytest.raises(ConfigError, match="crandk takes"):
        make_codec("crandk:8:64:dct")


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 12, 13, 20])
@pytest.mark.parametrize("m", [1, 2, 3, 7, 8, 9, 100])
def test_bit_fields_round_trip_and_padding_is_checked(bits: int, m: int) -> None:
    import numpy as np

    from gossamer.codecs.chunked import _pack_bits, _unpack_bits

    rng = np.random.default_rng(bits * 1000 + m)
    values = rng.integers(0, 1 << bits, size=m)
    data = _pack_bits(values, bits)
    assert len(data) == (m * bits + 7) // 8
    weights = torch.tensor([1 << j for j in range(bits)], dtype=torch.int64)
    assert _unpack_bits(memoryview(data), m, bits, weights, "t", "x").tolist() == values.tolist()
    if (m * bits) % 8:
        bad = bytearray(data)
        bad[-1] |= 0x80
        with pytest.raises(CodecError, match="zero padding after the x fields"):
            _unpack_bits(memoryview(bytes(bad)), m, bits, weights, "t", "x")


def test_a_failed_first_encode_leaves_no_error_memory_behind() -> None:
    c = make_codec("ctopk:2:64+ef:0.9")
    bad = rand(10)
    bad[3] = float("nan")
    with pytest.raises(CodecError, match="finite"):
        c.encode(bad, key="b")
    assert c.sender_state("b") == {}
    c.encode(rand(50), key="b")  # another shape under the same key is a fresh stream, not a mismatch
    with pytest.raises(CodecError, match="finite"):
        c.encode_segments(bad, [(0, 10, (10,))], key="s", seeds=[0])
    assert c.sender_state("s") == {}

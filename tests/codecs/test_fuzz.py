"""Hostile bytes: only CodecError may escape any decoder, and state is never corrupted."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossamer.codecs import make_codec
from gossamer.errors import CodecError

SPECS = [
    "fp32", "fp16", "bf16", "int8:16", "int8:256:sr", "int4:8", "int4:5:sr", "topk:0.2", "randk:0.3",
    "randk:0.3:unbiased", "sign:8", "sign:3", "powersgd:2", "powersgd:1:warm", "topk:0.2+ef21",
    "int8:16+econtrol:0.1", "sign:8+ef",
    "ctopk:3:16", "ctopk:2:16:1bit", "ctopk:4:16:fp32", "ctopk:3:16:2bit:dct", "ctopk:2:9+ef:0.9", "crandk:3:16", "crandk:2:5:1bit",
]
SHAPES = [(0,), (1,), (13,), (64,), (9, 7), (2, 3, 4)]


def valid_payload(spec: str, shape: tuple[int, ...], seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return make_codec(spec).encode(torch.randn(shape, generator=g), key=0, seed=seed)


def decode_only_codec_error(spec: str, data: bytes, shape: tuple[int, ...]) -> None:
    c = make_codec(spec)
    try:
        y = c.decode(data, shape, key=0, seed=1)
    except CodecError:
        return
    # accepted: must be a well-formed finite tensor of the expected shape
    assert y.dtype == torch.float32 and tuple(y.shape) == shape
    assert bool(torch.isfinite(y).all())


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(SPECS), shape=st.sampled_from(SHAPES), data=st.binary(max_size=400))
def test_random_bytes(spec: str, shape: tuple[int, ...], data: bytes) -> None:
    decode_only_codec_error(spec, data, shape)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, tuple[int, ...], bytes]:
    spec = draw(st.sampled_from(SPECS))
    shape = draw(st.sampled_from(SHAPES))
    data = bytearray(valid_payload(spec, shape, draw(st.integers(0, 100))))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "header", "bytes"]))
    if kind == "flip" and data:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=16))
    elif kind == "header":
        i = draw(st.integers(0, 7))
        data[i] = draw(st.integers(0, 255))
    else:  # overwrite a run of body bytes (scales, indices, values)
        if len(data) > 8:
            i = draw(st.integers(8, len(data) - 1))
            run = draw(st.binary(min_size=1, max_size=8))
            data[i : i + len(run)] = run
            data = data[: len(data) - max(0, i + len(run) - len(data))]
    return spec, shape, bytes(data)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_payloads(case: tuple[str, tuple[int, ...], bytes]) -> None:
    spec, shape, data = case
    decode_only_codec_error(spec, data, shape)


@pytest.mark.parametrize("spec", SPECS)
def test_cross_codec_and_wrong_shape(spec: str) -> None:
    data = valid_payload(spec, (9, 7), 0)
    for other in SPECS:
        decode_only_codec_error(other, data, (9, 7))
    for shape in [(7, 9), (63,), (9, 8), (0,)]:
        decode_only_codec_error(spec, data, shape)
    for bad_type in [None, 3, "abc", [1, 2]]:
        with pytest.raises(CodecError):
            make_codec(spec).decode(bad_type, (9, 7))  # type: ignore[arg-type]
    for bad_shape in [(-1,), (2.5,), "ab", None]:
        with pytest.raises(CodecError):
            make_codec(spec).decode(data, bad_shape)  # type: ignore[arg-type]


def test_nan_values_in_lossless_payload_rejected() -> None:
    c = make_codec("fp32")
    data = bytearray(c.encode(torch.ones(4)))
    data[8:12] = bytes.fromhex("0000807f")  # +inf
    with pytest.raises(CodecError, match="finite"):
        c.decode(bytes(data), (4,))

"""ctopk / crandk: the numba kernels and the numpy path give the same bytes and decodes.

The ``path`` fixture forces the numpy path or the kernels (skipped when numba
is not installed) at every size, and splits the kernels' work into several
ranges of chunks, so small inputs run the same code as big ones. A slow
pure-Python reference pins the tie rule both paths follow: every entry above
the chunk's K-th largest magnitude, then the lowest-index entries equal to it.
Properties run with ``derandomize=True``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossamer.codecs import chunked, make_codec
from gossamer.codecs.base import HEADER_SIZE
from gossamer.errors import CodecError

PROPERTY = settings(derandomize=True, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
PATHS = ["numpy", "kernel"]
SPECS = [
    "ctopk:3:16", "ctopk:3:16:1bit", "ctopk:3:16:fp32", "ctopk:4:16:2bit:dct", "ctopk:2:9:1bit:dct",
    "ctopk:1:5", "ctopk:5:5:fp32", "ctopk:7:33", "ctopk:64:4096", "ctopk:64:4096:1bit", "ctopk:2:4:fp32:dct",
    "crandk:3:16", "crandk:2:5:1bit", "crandk:4:16:fp32", "crandk:7:33", "crandk:256:4096",
]
MAGNITUDES = [1.0, 1e-3, 1e30, 1e37, 3e38, 1e-37, 1e-39, 1e-44]


def use(mp: pytest.MonkeyPatch, path: str) -> None:
    if path == "kernel":
        mp.setattr(chunked, "_ACCEL_MIN", 0)
        mp.setattr(chunked, "_PART_MIN", 1)  # as many ranges as threads, even for a few chunks
        mp.setattr(torch, "get_num_threads", lambda: 3)
    else:
        mp.setattr(chunked, "_ACCEL_MIN", 1 << 62)


def paths() -> list[str]:
    return PATHS if chunked.accelerated() else PATHS[:1]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "kernel" and not chunked.accelerated():
        pytest.skip("numba is not installed (pip install gossamer[fast])")
    use(monkeypatch, request.param)
    yield request.param


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@st.composite
def inputs(draw: st.DrawFn) -> tuple[str, torch.Tensor, int]:
    """(spec, x, seed): chunks of plain, scaled (huge, tiny, subnormal), all-zero (+0, -0, both),
    tied (few distinct magnitudes) or constant values; n often not a multiple of CHUNK and
    sometimes shorter than K."""
    spec = draw(st.sampled_from(SPECS))
    chunk = make_codec(spec).chunk
    n = draw(st.one_of(st.integers(1, 4 * chunk + 7), st.integers(1, 3 * chunk).map(lambda v: v - v % chunk + 1)))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    for start in range(0, n, chunk):
        kind = draw(st.sampled_from(["plain", "scaled", "zero", "-zero", "mixed-zero", "ties", "constant", "one-big"]))
        xb = x[start : start + chunk]
        if kind == "scaled":
            xb.mul_(draw(st.sampled_from(MAGNITUDES))).clamp_(-3.4e38, 3.4e38)
        elif kind == "zero":
            xb.zero_()
        elif kind == "-zero":
            xb.fill_(-0.0)
        elif kind == "mixed-zero":
            xb.copy_(torch.where(xb > 0, torch.tensor(0.0), torch.tensor(-0.0)))
        elif kind == "ties":
            levels = torch.tensor([0.0, 1.0, -1.0, 2.0, -2.0, 0.5])
            xb.copy_(levels[torch.randint(0, 6, (xb.numel(),), generator=g)])
        elif kind == "constant":
            xb.fill_(draw(st.sampled_from([1.0, -3.0, 1e-40])))
        elif kind == "one-big":
            xb.mul_(1e-30)[0] = 3.0e38
    return spec, x, seed


def run(path: str, spec: str, x: torch.Tensor, seed: int) -> tuple[bytes, torch.Tensor, torch.Tensor]:
    with pytest.MonkeyPatch.context() as mp:
        use(mp, path)
        c = make_codec(spec)
        data = c.encode(x, seed=seed)
        y = c.decode(data, tuple(x.shape), seed=seed)
        out = torch.full(x.shape, float("nan"))
        assert c.decode(data, tuple(x.shape), seed=seed, out=out) is out
        return data, y, out


def reference_keep(x: torch.Tensor, k: int, chunk: int) -> list[list[int]]:
    """The kept in-chunk indices of each chunk, by the documented rule, in plain Python."""
    keep = []
    for lo in range(0, x.numel(), chunk):
        mags = [abs(float(v)) for v in x[lo : lo + chunk]]
        kc = min(k, len(mags))
        thr = sorted(mags, reverse=True)[kc - 1]
        need = kc - sum(m > thr for m in mags)
        row = []
        for i, m in enumerate(mags):
            if m > thr or (m == thr and need > 0):
                need -= m == thr
                row.append(i)
        keep.append(row)
    return keep


# ---------------------------------------------------------------- tests


@PROPERTY
@given(case=inputs())
def test_both_paths_give_the_same_bytes_and_decodes(case: tuple[str, torch.Tensor, int]) -> None:
    spec, x, seed = case
    results = [run(p, spec, x, seed) for p in paths()]
    data, y, out = results[0]
    assert len(data) == make_codec(spec).encoded_size(tuple(x.shape))
    assert same_bits(y, out) and bool(torch.isfinite(y).all())
    for p, (d, yy, oo) in zip(paths()[1:], results[1:]):
        assert d == data, p
        assert same_bits(yy, y) and same_bits(oo, y), p
    assert run(paths()[-1], spec, x.clone(), seed)[0] == data  # the same input always gives the same bytes


@PROPERTY
@given(case=inputs())
def test_fp32_keeps_the_documented_top_k_set(case: tuple[str, torch.Tensor, int]) -> None:
    spec, x, seed = case
    c = make_codec(spec)
    if c.select != "top" or c.dct:
        return
    fspec = f"ctopk:{c.k}:{c.chunk}:fp32"
    want = torch.zeros_like(x)
    for c0, row in enumerate(reference_keep(x, c.k, c.chunk)):
        pos = torch.tensor(row, dtype=torch.int64) + c0 * c.chunk
        want[pos] = x[pos]
    for p in paths():
        _, y, _ = run(p, fspec, x, seed)
        assert same_bits(y, want), p


def test_ties_break_to_the_lowest_indices(path: str) -> None:
    x = torch.ones(4096 * 2 + 40)
    x[100] = 5.0
    x[4096 + 7] = -0.0
    c = make_codec("ctopk:64:4096:fp32")
    y = c.decode(c.encode(x), tuple(x.shape))
    kept = torch.nonzero(y).reshape(-1).tolist()
    # chunk 0: 5.0, then the 63 lowest-index ones; chunk 1: the 64 lowest-index ones (not the
    # zero at 7); the 40-element tail keeps everything
    assert kept == [*range(63), 100, *[4096 + i for i in range(65) if i != 7], *range(8192, 8192 + 40)]


@pytest.mark.parametrize("spec", ["ctopk:64", "ctopk:64:4096:1bit", "ctopk:64:4096:fp32", "ctopk:16:1024:2bit:dct",
                                  "crandk:256", "crandk:128:4096:1bit", "crandk:100:3000:fp32"])
def test_large_inputs_split_across_threads(spec: str) -> None:
    n = (1 << 20) * 2 + 12345
    x = torch.randn(n, generator=torch.Generator().manual_seed(7))
    x[(1 << 20) - 5000 : (1 << 20) + 5000] = 0.0
    x[300_000:310_000] = torch.round(x[300_000:310_000])  # ties
    x[-40:] *= 1e-40
    want = run("numpy", spec, x, 11)
    if not chunked.accelerated():
        return
    with pytest.MonkeyPatch.context() as mp:  # the kernels at their real size threshold and range size
        mp.setattr(torch, "get_num_threads", lambda: 4)
        assert n >= chunked._ACCEL_MIN
        c = make_codec(spec)
        data = c.encode(x, seed=11)
        out = torch.full(x.shape, float("nan"))
        c.decode(data, tuple(x.shape), seed=11, out=out)
    assert data == want[0] and same_bits(out, want[1])


@pytest.mark.parametrize("spec", ["ctopk:3:16", "ctopk:3:16:fp32", "ctopk:3:16:dct", "crandk:3:16", "crandk:2:16:fp32"])
def test_non_finite_input_rejected_on_both_paths(path: str, spec: str) -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(1000)
        x[997] = bad  # crandk: wherever it is, kept or not
        c = make_codec(spec)
        with pytest.raises(CodecError, match=rf"^{c.spec}: expected finite input, found NaN or inf$"):
            c.encode(x)


@pytest.mark.parametrize("spec", ["ctopk:3:16", "ctopk:3:16:dct", "crandk:3:16:1bit"])
def test_shaped_tensors_decode_into_out(path: str, spec: str) -> None:
    c = make_codec(spec)
    x = torch.randn(10, 21)
    data = c.encode(x, seed=5)
    out = torch.full((10, 21), float("nan"))
    assert c.decode(data, (10, 21), seed=5, out=out) is out
    assert same_bits(out, c.decode(data, (10, 21), seed=5)) and bool(torch.isfinite(out).all())


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[str, int, int, bytes]:
    """A valid payload with bytes overwritten: indices, levels, codes or padding."""
    spec = draw(st.sampled_from(["ctopk:3:16", "ctopk:3:16:1bit", "ctopk:3:16:fp32", "ctopk:5:9:2bit:dct",
                                 "ctopk:7:33", "crandk:3:16", "crandk:2:5:1bit", "crandk:4:16:fp32"]))
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 1000))
    data = bytearray(make_codec(spec).encode(torch.randn(n, generator=torch.Generator().manual_seed(n)), seed=seed))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["byte", "byte", "last", "float"]))
        if kind == "byte" and len(data) > HEADER_SIZE:
            i = draw(st.integers(HEADER_SIZE, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif kind == "last":
            data[-1] |= 1 << draw(st.integers(0, 7))
        elif kind == "float" and len(data) >= HEADER_SIZE + 4:
            i = draw(st.integers(HEADER_SIZE, len(data) - 4))
            pattern = draw(st.sampled_from(["0000c07f", "0000807f", "000080ff", "000080bf", "ffff7f7f", "00000080"]))
            data[i : i + 4] = bytes.fromhex(pattern)
    return spec, n, seed, bytes(data)


@PROPERTY
@given(case=corrupted())
def test_both_paths_reject_the_same_payloads_with_the_same_message(case: tuple[str, int, int, bytes]) -> None:
    spec, n, seed, data = case
    outcomes = []
    for p in paths():
        with pytest.MonkeyPatch.context() as mp:
            use(mp, p)
            try:
                y = make_codec(spec).decode(data, (n,), seed=seed)
                assert bool(torch.isfinite(y).all())
                outcomes.append(("ok", y.numpy().tobytes()))
            except CodecError as exc:
                outcomes.append(("error", str(exc)))
    assert all(o == outcomes[0] for o in outcomes), outcomes


def test_levels_are_index_order_float64_sums() -> None:
    """1bit's level is sum_i |v_i| / k in float64, summed in index order, then float32."""
    x = torch.zeros(64)
    vals = np.array([3e-8, 1.0, 1e8, -1.0, 3e-8, 7.0, -1e8, 5.5], dtype=np.float32)
    x[torch.arange(0, 64, 8)] = torch.from_numpy(vals)
    total = 0.0
    for v in vals:
        total += float(abs(v))
    for p in paths():
        with pytest.MonkeyPatch.context() as mp:
            use(mp, p)
            c = make_codec("ctopk:8:64:1bit")
            level = np.frombuffer(c.encode(x), "<f4", 1, HEADER_SIZE + 6)[0]
            assert level == np.float32(total / 8), p

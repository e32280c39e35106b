"""Issue 13.6: collectives give results back on the device and in the dtype of their inputs.

No GPU is available where these tests run, so what is checked is what can be
checked honestly on a CPU: dtypes are preserved through every all-reduce
path (plain mean, codec, robust aggregator, audited); the result of the same
contribution does not depend on its dtype beyond the dtype's own rounding;
and the code that moves results back does move them to a non-CPU device
(torch's ``meta`` device, which every build has) where one is asked for. A
real CUDA run is not claimed (docs/concepts.md, Devices).
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.comm import Communicator
from gossamer.comm.audit import KeyBook
from gossamer.comm.collectives import like_inputs
from gossamer.aggregate import make_aggregator
from gossamer.codecs import make_codec
from gossamer.transport.sim import LinkSpec, SimNetwork

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _group(n: int, **kw) -> list[Communicator]:
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    return [Communicator(net.add_peer(p), ids, seed=3, **kw) for p in ids]


def _gather(*coros):
    async def main():
        return await asyncio.gather(*coros)

    return asyncio.run(main())


def _inputs(n: int) -> list[list[torch.Tensor]]:
    """Per member: the same values in every dtype (rounded to it)."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        base = torch.randn(5, 3, generator=gen)
        out.append([base.to(dt) for dt in DTYPES])
    return out


@pytest.mark.parametrize("setup", ["plain", "codec", "aggregator", "audited"])
def test_all_reduce_returns_each_result_in_its_inputs_dtype_and_device(setup: str) -> None:
    n = 3
    kw = {}
    if setup == "codec":
        kw["codec"] = make_codec("int8")
    if setup == "aggregator":
        kw["aggregator"] = make_aggregator("median", 1)
    comms = _group(n, **kw)
    if setup == "audited":
        ids = list(comms[0].group)
        for c in comms:
            c.keybook = KeyBook.simulated(c.peer_id, ids, 0)
    inputs = _inputs(n)
    outs = _gather(*(c.all_reduce(x) for c, x in zip(comms, inputs)))
    for out in outs:
        assert [t.dtype for t in out] == list(DTYPES)
        assert all(t.device.type == "cpu" and t.shape == (5, 3) for t in out)
        for got, want in zip(out, outs[0]):
            assert torch.equal(got, want)  # bit-identical on every member, whatever the dtype
    f32, f64 = outs[0][0], outs[0][1]
    if setup == "plain":  # float32 on the CPU: a float64 input's result is the float32 one, widened
        assert torch.equal(f64, f32.double())
    for got in outs[0][1:]:
        assert torch.allclose(got.float(), f32, atol=0.05, rtol=0.05)


def test_start_all_reduce_handle_keeps_dtypes() -> None:
    comms = _group(2)
    inputs = _inputs(2)

    async def run(c: Communicator, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return await c.start_all_reduce(x, name="frag").wait()

    for out in _gather(*(run(c, x) for c, x in zip(comms, inputs))):
        assert [t.dtype for t in out] == list(DTYPES)


def test_like_inputs_moves_results_to_a_non_cpu_device_and_leaves_cpu_ones_alone() -> None:
    result = torch.arange(6, dtype=torch.float32)
    on_meta = torch.empty(6, dtype=torch.bfloat16, device="meta")
    moved, same = like_inputs([result, result], [on_meta, torch.zeros(6)])
    assert moved.device.type == "meta" and moved.dtype == torch.bfloat16 and moved.shape == (6,)
    assert same is result  # already where its input is: no copy


@pytest.mark.parametrize("codec", [None, "int8", "topk:0.5"])
def test_decoded_vectors_go_to_the_communicators_device(codec: str | None) -> None:
    c_cpu, = _group(1, codec=make_codec(codec) if codec else None)
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    c_meta = Communicator(net.add_peer("p0"), ["p0"], seed=3, codec=make_codec(codec) if codec else None,
                          device="meta")
    flat = torch.randn(40, generator=torch.Generator().manual_seed(1))
    data = c_cpu.encode_tensor(flat)
    assert isinstance(data, bytes)  # the wire is CPU bytes
    assert c_meta.encode_tensor(flat) == data  # the same bytes whatever device the communicator serves
    back = c_cpu.decode_tensor(data, 40, "p0")
    assert back.device.type == "cpu" and back.dtype == torch.float32
    if codec is None:
        assert torch.equal(back, flat)
    there = c_meta.decode_tensor(data, 40, "p0")
    assert there.device.type == "meta" and there.shape == (40,) and there.dtype == torch.float32
    if codec is not None:  # what the others decode of a lossy vector: on this member's device too
        assert c_meta.as_sent(flat, data).device.type == "meta"

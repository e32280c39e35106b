"""Issue 13.6: every codec takes a floating tensor of any dtype (and any device:
it is copied to the CPU as float32 first), writes CPU bytes, and decodes to a
float32 CPU tensor; the caller (``gossamer.comm``) moves results back to the
device and dtype of its input. No GPU here: dtypes are what can be checked."""

from __future__ import annotations

import pytest
import torch

from gossamer.codecs import make_codec
from gossamer.errors import CodecError

SPECS = ["fp32", "fp16", "bf16", "int8:64", "int4:32:sr", "topk:0.1", "randk:0.25", "sign:32", "powersgd:2",
         "topk:0.1+ef", "int4:64+ef21", "sign:32+econtrol:0.3", "ctopk:3:16", "crandk:3:16+ef"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_any_floating_dtype_encodes_as_its_float32_copy(spec: str, dtype: torch.dtype) -> None:
    x = torch.randn(24, 10, generator=torch.Generator().manual_seed(5)).to(dtype)
    data = make_codec(spec).encode(x, key="k", seed=9)
    assert isinstance(data, bytes)
    assert data == make_codec(spec).encode(x.to(torch.float32), key="k", seed=9)
    y = make_codec(spec).decode(data, (24, 10), key="k", seed=9)
    assert y.dtype == torch.float32 and y.device.type == "cpu" and tuple(y.shape) == (24, 10)


@pytest.mark.parametrize("spec", ["int8", "topk:0.1+ef"])
def test_non_floating_input_is_a_codec_error(spec: str) -> None:
    with pytest.raises(CodecError, match="expected a floating tensor, found dtype torch.int64"):
        make_codec(spec).encode(torch.arange(10))

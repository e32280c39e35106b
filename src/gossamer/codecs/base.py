"""The codec contract and the shared wire header.

A codec turns a float32 tensor into bytes and back. It is a pure function of
its inputs (plus explicit per-key state for the stateful wrappers): no
sockets, no clocks, no global RNG.

Contract (every codec in this package):

* ``encode(x, key=, seed=) -> bytes``: ``x`` is any floating tensor (any
  shape, contiguous or not, any device); it is converted to float32 on the
  CPU. Non-finite input (NaN/inf) raises :class:`CodecError`: only finite
  values ever cross the wire.
* ``len(encode(x)) == encoded_size(x.shape)`` always, and the size is known
  before encoding (so transports can budget frames).
* ``decode(data, shape, key=, seed=) -> Tensor``: returns a new float32 CPU
  tensor of exactly ``shape``. ``shape`` is what the receiver *expects*; the
  wire is never trusted. Any fault (truncated or oversized payload, wrong
  magic, version, codec id or parameter tag, element count that disagrees
  with ``shape``, non-finite scales or values, bad indices, codes the
  encoder never emits) raises ``CodecError`` naming the fault with expected
  vs found. Nothing but ``CodecError`` escapes ``decode`` for any input
  bytes, and what it returns is always finite: a payload that would decode
  to NaN or inf (say a finite scale times a code that overflows) is a fault.
* ``seed`` is a seed both ends share (rand-k indices, stochastic rounding,
  PowerSGD initialisation): the same ``(x, seed)`` gives the same bytes.
* ``key`` names a stream (e.g. ``(sender, slot)``) for stateful codecs;
  ``None`` is an ordinary key (the default stream).
* State as data: ``state_dict(match=None)`` returns a stateful codec's
  per-key state (plain values and tensor copies; ``{}`` for a stateless
  codec) and ``load_state_dict(sd, match=None)`` restores it; ``match``
  limits both to the keys it accepts. ``reset(key)`` / ``reset(all_keys=True)``
  forget state. Keys are restored with lists turned back into tuples
  (``plain_key``), so a JSON round trip of the state is harmless.

Wire header (8 bytes, little-endian, ``struct`` format ``<BBBBI``)::

    magic 0x47 ('G') | codec id | version (1) | spec tag | element count (uint32)

The spec tag is ``crc32(spec) & 0xFF`` of the codec that wrote the payload,
so a receiver configured with different parameters (say ``int8:128`` against
``int8:256``) is told so instead of decoding garbage (caught with probability
255/256). The body that follows is raw little-endian buffers, never pickle.
"""

from __future__ import annotations

import math
import struct
import sys
import warnings
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import Any, Final

import numpy as np
import torch

from gossamer.errors import CodecError

__all__ = [
    "Codec",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "MAX_ELEMENTS",
    "spec_tag",
    "pack_header",
    "check_payload",
    "as_float32_flat",
    "numel",
    "check_shape",
    "make_generator",
    "all_finite",
    "finite_or_raise",
    "frombuffer",
    "tensor_bytes",
    "alloc_out",
    "plain_key",
]

MAGIC: Final[int] = 0x47
VERSION: Final[int] = 1
HEADER: Final[struct.Struct] = struct.Struct("<BBBBI")
HEADER_SIZE: Final[int] = HEADER.size  # 8
MAX_ELEMENTS: Final[int] = 0xFFFFFFFF


def spec_tag(spec: str) -> int:
    """One byte fingerprint of a canonical spec string."""
    return zlib.crc32(spec.encode("ascii")) & 0xFF


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of ``shape`` (1 for ``()``)."""
    return math.prod(shape)


def check_shape(shape: object) -> tuple[int, ...]:
    """Validate an expected shape given by the receiver; return it as a tuple."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)):
        raise CodecError(f"expected shape as a tuple of ints, found {type(shape).__name__}")
    out: list[int] = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or int(d) < 0:
            raise CodecError(f"expected non-negative int dimensions, found {shape!r}")
        out.append(int(d))
    t = tuple(out)
    if numel(t) > MAX_ELEMENTS:
        raise CodecError(f"expected at most {MAX_ELEMENTS} elements, found shape {t} ({numel(t)})")
    return t


def pack_header(codec_id: int, tag: int, n: int) -> bytes:
    if n > MAX_ELEMENTS:
        raise CodecError(f"tensor too large: at most {MAX_ELEMENTS} elements, found {n}")
    return HEADER.pack(MAGIC, codec_id, VERSION, tag, n)


def check_payload(
    data: object, *, codec_id: int, tag: int, n: int, size: int, name: str
) -> memoryview:
    """Validate header and total length of ``data``; return a byte memoryview of it.

    ``size`` is the exact expected payload length, computed from the expected
    shape. Raises CodecError naming the first fault found.
    """
    if isinstance(data, (bytes, bytearray)):
        mv = memoryview(data)
    elif isinstance(data, memoryview):
        mv = data
    else:
        raise CodecError(f"{name}: expected bytes or memoryview, found {type(data).__name__}")
    if mv.ndim != 1 or mv.itemsize != 1 or not mv.c_contiguous:
        try:
            mv = mv.cast("B")
        except (TypeError, ValueError) as exc:
            raise CodecError(f"{name}: payload buffer is not a contiguous byte buffer") from exc
    found = mv.nbytes
    if found < HEADER_SIZE:
        raise CodecError(
            f"{name}: truncated payload: expected {size} bytes, found {found} (shorter than the "
            f"{HEADER_SIZE}-byte header)"
        )
    magic, cid, ver, ftag, count = HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise CodecError(f"{name}: bad magic byte: expected 0x{MAGIC:02x}, found 0x{magic:02x}")
    if ver != VERSION:
        raise CodecError(f"{name}: unsupported version: expected {VERSION}, found {ver}")
    if cid != codec_id:
        raise CodecError(f"{name}: wrong codec id: expected {codec_id}, found {cid}")
    if ftag != tag:
        raise CodecError(
            f"{name}: codec parameters differ from the receiver's: expected spec tag "
            f"0x{tag:02x}, found 0x{ftag:02x}"
        )
    if count != n:
        raise CodecError(f"{name}: wrong element count: expected {n} (from shape), found {count}")
    if found < size:
        raise CodecError(f"{name}: truncated payload: expected {size} bytes, found {found}")
    if found > size:
        raise CodecError(
            f"{name}: oversized payload: expected {size} bytes, found {found} "
            f"({found - size} trailing bytes)"
        )
    return mv


def as_float32_flat(x: object, name: str) -> torch.Tensor:
    """Return ``x`` as a flat, contiguous float32 CPU tensor (a view when possible).

    Raises CodecError for non-tensors and non-floating dtypes. Finiteness is
    checked by each codec where it is cheap (usually on block scales).
    """
    if not isinstance(x, torch.Tensor):
        raise CodecError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if not x.is_floating_point():
        raise CodecError(f"{name}: expected a floating tensor, found dtype {x.dtype}")
    x = x.detach()
    if x.device.type != "cpu" or x.dtype != torch.float32:
        x = x.to(device="cpu", dtype=torch.float32)
    x = x.reshape(-1)
    if not x.is_contiguous():  # reshape of a 1-D strided view
        x = x.contiguous()
    if x.numel() > MAX_ELEMENTS:
        raise CodecError(f"{name}: tensor too large: at most {MAX_ELEMENTS} elements, found {x.numel()}")
    return x


_EXP_BITS: Final[dict[torch.dtype, int]] = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def all_finite(t: torch.Tensor) -> bool:
    """True if ``t`` holds no NaN or inf (vacuously true when empty).

    ``torch.isfinite(t).all()`` runs at ~5 ns per element on CPU. For float32
    this sums instead (a finite sum proves every element finite) and, only
    when the sum is not finite, decides with numpy's min/max (NaN propagates,
    so both are finite iff every element is); fp16/bf16 test the exponent
    bits. Several times faster, which matters on decode paths that check a
    whole tensor.
    """
    if t.numel() == 0:
        return True
    if t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad:
        if t.dtype == torch.float32:
            if math.isfinite(float(t.sum())):  # a NaN or inf element makes the sum NaN or inf
                return True
            a = t.numpy()  # the sum may also overflow with finite elements: decide exactly
            return bool(np.isfinite(a.min()) and np.isfinite(a.max()))
        exp = _EXP_BITS.get(t.dtype)
        if exp is not None:  # non-finite iff all exponent bits are set
            return int(np.max(t.view(torch.int16).numpy() & exp)) != exp
    return bool(torch.isfinite(t).all())


def finite_or_raise(t: torch.Tensor, what: str, name: str) -> None:
    """Raise CodecError if ``t`` holds NaN or inf."""
    if not all_finite(t):
        raise CodecError(f"{name}: expected finite {what}, found NaN or inf")


def alloc_out(shape: tuple[int, ...], out: torch.Tensor | None) -> torch.Tensor:
    """``out`` if given, else a new float32 tensor of ``shape``.

    New tensors are numpy-backed: numpy asks the kernel for huge pages on big
    buffers, which makes first touch several times cheaper than torch.empty.
    """
    if out is not None:
        return out
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


def plain_key(key: object) -> object:
    """``key`` with every list turned into a tuple (a state key after a JSON round trip)."""
    if isinstance(key, (list, tuple)):
        return tuple(plain_key(k) for k in key)
    return key


def make_generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from the shared ``seed`` (and a per-use stream id)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise CodecError(f"expected an int seed, found {type(seed).__name__}")
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 0x9E3779B1 + stream) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def frombuffer(mv: memoryview, dtype: str, offset: int, count: int) -> torch.Tensor:
    """Zero-copy read-only view of ``count`` little-endian items at ``offset``.

    ``dtype`` is a numpy little-endian type string ('<f4', '<u4', '<i2', 'u1', 'i1').
    The result aliases ``mv``: callers must not write to it and must copy (or
    compute into a new tensor) before returning anything to the user.
    """
    arr = np.frombuffer(mv, dtype=np.dtype(dtype), count=count, offset=offset)
    if not arr.dtype.isnative:  # big-endian host: byte-swap into a native copy
        arr = arr.astype(arr.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write
        return torch.from_numpy(arr)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Little-endian bytes of a contiguous CPU tensor, without a copy."""
    arr = t.numpy()
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)  # no-op on little-endian hosts
    return memoryview(arr).cast("B")


class Codec(ABC):
    """A tensor <-> bytes codec. See the module docstring for the contract.

    Subclasses implement ``encoded_size``, ``encode`` and ``_decode``; the
    public ``decode`` validates ``shape`` and guarantees that nothing but
    CodecError escapes.
    """

    spec: str
    lossless: bool
    whole_tensors: bool = False

    @abstractmethod
    def encoded_size(self, shape: tuple[int, ...]) -> int:
        """Exact byte length ``encode`` produces for a tensor of ``shape``."""

    @abstractmethod
    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        """Encode ``x`` (float32, any shape) to bytes."""

    @abstractmethod
    def _decode(
        self,
        data: bytes | memoryview,
        shape: tuple[int, ...],
        *,
        key: Hashable,
        seed: int,
        out: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decode after ``shape`` (and ``out``) have been validated; may raise anything.

        Writes into ``out`` and returns it when given, else returns a new tensor.
        ``out`` must not be touched before the payload has been validated.
        """

    def decode(
        self,
        data: bytes | memoryview,
        shape: tuple[int, ...],
        *,
        key: Hashable = None,
        seed: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode ``data`` into a float32 tensor of the expected ``shape``.

        ``out`` (optional extension): a contiguous float32 CPU tensor of
        ``shape`` to decode into (saves an allocation per message); it is
        returned. On CodecError its content is unspecified.
        Raises CodecError (and nothing else) on any malformed input.
        """
        shape = check_shape(shape)
        if out is not None:
            if (not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or out.device.type != "cpu"
                    or tuple(out.shape) != shape or not out.is_contiguous()):
                raise CodecError(f"{self.spec}: out must be a contiguous float32 CPU tensor of shape {shape}")
        try:
            out = self._decode(data, shape, key=key, seed=seed, out=out)
        except CodecError:
            raise
        except (ValueError, TypeError, RuntimeError, IndexError, OverflowError, struct.error,
                MemoryError, BufferError) as exc:
            raise CodecError(f"{self.spec}: malformed payload ({type(exc).__name__}: {exc})") from exc
        return out

    def reset(self, key: Hashable = None, *, all_keys: bool = False) -> None:
        """Forget the state of ``key`` (or of every key); stateless codecs have none."""

    def state_dict(self, match: Callable[[Hashable], bool] | None = None) -> dict[str, Any]:
        """Per-key state as data (see the module docstring); ``{}`` when stateless."""
        return {}

    def load_state_dict(self, sd: dict[str, Any], match: Callable[[Hashable], bool] | None = None) -> None:
        """Restore ``state_dict()`` output; stateless codecs have nothing to restore."""

    def __repr__(self) -> str:
        return f"<codec {self.spec}>"

"""Codecs: tensor <-> bytes, and error-feedback wrappers. See docs/codecs.md.

``make_codec(spec)`` builds a codec from a spec string::

    spec     := base [ "+" wrapper ]
    base     := "fp32" | "none" | "fp16" | "bf16"
              | ("int8" | "int4") [":" BLOCK] [":sr"]
              | "topk:" FRACTION
              | "randk:" FRACTION [":unbiased"]
              | "sign" [":" BLOCK]
              | "powersgd:" RANK [":warm"]
              | "ctopk:" K [":" CHUNK] [":" ("2bit" | "1bit" | "fp32")] [":dct"]
              | "crandk:" K [":" CHUNK] [":" ("2bit" | "1bit" | "fp32")]
    wrapper  := "ef" [":" BETA] | "ef21" | "econtrol" [":" ETA]

BLOCK and RANK are positive integers, FRACTION is in (0, 1], ETA >= 0.
K and CHUNK are integers with 1 <= K <= CHUNK <= 2**20, CHUNK >= 2 (default 4096, a square
with ``:dct``); BETA in (0, 1] is the error-feedback decay (SparseLoCo's
accumulator; default 1, classic error feedback).
The returned codec's ``.spec`` is canonical (defaults filled in, ``none``
spelled ``fp32``, numbers normalised) and ``make_codec(c.spec)`` rebuilds an
equivalent codec. Bad specs raise ConfigError listing the accepted forms.

This package imports nothing of gossamer except ``gossamer.errors``.
"""

from __future__ import annotations

import math

from gossamer.errors import CodecError, ConfigError

from .base import Codec
from .chunked import DEFAULT_CHUNK, VALUE_FORMATS, ChunkTopKCodec
from .feedback import DEFAULT_ETA, EF21, EControl, ErrorFeedback, FeedbackCodec
from .floats import FloatCodec
from .lowrank import PowerSGDCodec
from .quant import BlockQuantCodec
from .sign import SignCodec
from .sparse import RandKCodec, TopKCodec

__all__ = [
    "CODEC_NAMES",
    "WRAPPER_NAMES",
    "Codec",
    "CodecError",
    "make_codec",
    "codec_for_mean",
    "FloatCodec",
    "BlockQuantCodec",
    "TopKCodec",
    "RandKCodec",
    "SignCodec",
    "PowerSGDCodec",
    "ChunkTopKCodec",
    "FeedbackCodec",
    "ErrorFeedback",
    "EF21",
    "EControl",
]

CODEC_NAMES: tuple[str, ...] = ("fp32", "none", "fp16", "bf16", "int8", "int4", "topk", "randk", "sign", "powersgd", "ctopk", "crandk")
WRAPPER_NAMES: tuple[str, ...] = ("ef", "ef21", "econtrol")

_FORMS = (
    "fp32 | none | fp16 | bf16 | int8[:BLOCK][:sr] | int4[:BLOCK][:sr] | topk:FRACTION | "
    "randk:FRACTION[:unbiased] | sign[:BLOCK] | powersgd:RANK[:warm] | ctopk:K[:CHUNK][:2bit|1bit|fp32][:dct] | "
    "crandk:K[:CHUNK][:2bit|1bit|fp32], "
    "optionally followed by +ef[:BETA] | +ef21 | +econtrol[:ETA]  (BLOCK, RANK, K: integers >= 1; "
    "CHUNK: integer in [2, 1048576], K <= CHUNK; FRACTION, BETA in (0, 1]; ETA >= 0)"
)


def _fail(spec: str, why: str) -> ConfigError:
    return ConfigError(f"bad codec spec {spec!r}: {why}; accepted: {_FORMS}")


def _int(spec: str, what: str, s: str) -> int:
    if not (s.isascii() and s.isdigit()) or int(s) < 1:
        raise _fail(spec, f"{what} must be an integer >= 1, found {s!r}")
    return int(s)


def _float(spec: str, what: str, s: str, lo: float, hi: float, lo_open: bool) -> float:
    try:
        v = float(s)
    except ValueError:
        raise _fail(spec, f"{what} must be a number, found {s!r}") from None
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise _fail(spec, f"{what} must be in {bound}, found {s!r}")
    return v


def _base(spec: str, text: str) -> Codec:
    name, *args = text.split(":")
    name = name.strip().lower()
    args = [a.strip() for a in args]
    if name not in CODEC_NAMES:
        raise _fail(spec, f"unknown codec {name!r} (names: {', '.join(CODEC_NAMES)})")
    if name in ("fp32", "none", "fp16", "bf16"):
        if args:
            raise _fail(spec, f"{name} takes no arguments, found {args}")
        return FloatCodec("fp32" if name == "none" else name)
    if name in ("int8", "int4"):
        sr = False
        block = None
        if args and args[-1] == "sr":
            sr = True
            args = args[:-1]
        if len(args) > 1:
            raise _fail(spec, f"{name} takes [:BLOCK][:sr], found {args}")
        if args:
            block = _int(spec, "BLOCK", args[0])
        return BlockQuantCodec(8 if name == "int8" else 4, block, sr)
    if name == "topk":
        if len(args) != 1:
            raise _fail(spec, "topk takes exactly :FRACTION")
        return TopKCodec(_float(spec, "FRACTION", args[0], 0.0, 1.0, True))
    if name == "randk":
        if len(args) not in (1, 2) or (len(args) == 2 and args[1] != "unbiased"):
            raise _fail(spec, "randk takes :FRACTION[:unbiased]")
        return RandKCodec(_float(spec, "FRACTION", args[0], 0.0, 1.0, True), unbiased=len(args) == 2)
    if name == "sign":
        if len(args) > 1:
            raise _fail(spec, "sign takes [:BLOCK]")
        return SignCodec(_int(spec, "BLOCK", args[0])) if args else SignCodec()
    if name in ("ctopk", "crandk"):
        return _ctopk(spec, args, name)
    # powersgd
    if len(args) not in (1, 2) or (len(args) == 2 and args[1] != "warm"):
        raise _fail(spec, "powersgd takes :RANK[:warm]")
    return PowerSGDCodec(_int(spec, "RANK", args[0]), warm=len(args) == 2)


def _ctopk(spec: str, args: list[str], name: str) -> Codec:
    form = f"{name} takes :K[:CHUNK][:2bit|1bit|fp32]" + ("[:dct]" if name == "ctopk" else "")
    if not args:
        raise _fail(spec, form)
    k = _int(spec, "K", args[0])
    rest = args[1:]
    dct = name == "ctopk" and bool(rest) and rest[-1] == "dct"
    if dct:
        rest = rest[:-1]
    values = "2bit"
    if rest and rest[-1] in VALUE_FORMATS:
        values = rest.pop()
    if len(rest) > 1:
        raise _fail(spec, f"{form}, found {args}")
    chunk = _int(spec, "CHUNK", rest[0]) if rest else DEFAULT_CHUNK
    try:
        return ChunkTopKCodec(k, chunk, values, dct, "top" if name == "ctopk" else "rand")
    except ValueError as exc:
        raise _fail(spec, str(exc)) from None


def make_codec(spec: str) -> Codec:
    """Build a codec from ``spec`` (grammar in the module docstring).

    Raises ConfigError for unknown names or bad arguments, listing the forms.
    Each call returns a fresh codec (fresh feedback/warm-start state).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(str(spec), "expected a non-empty string")
    parts = spec.strip().split("+")
    if len(parts) > 2:
        raise _fail(spec, "at most one feedback wrapper")
    inner = _base(spec, parts[0])
    if len(parts) == 1:
        return inner
    wname, *wargs = [a.strip() for a in parts[1].split(":")]
    wname = wname.lower()
    if wname == "ef" and len(wargs) <= 1:
        beta = _float(spec, "BETA", wargs[0], 0.0, 1.0, True) if wargs else 1.0
        return ErrorFeedback(inner, beta)
    if wname == "ef21" and not wargs:
        return EF21(inner)
    if wname == "econtrol" and len(wargs) <= 1:
        eta = _float(spec, "ETA", wargs[0], 0.0, 1e6, False) if wargs else DEFAULT_ETA
        return EControl(inner, eta)
    raise _fail(spec, f"unknown wrapper {parts[1]!r} (wrappers: {', '.join(WRAPPER_NAMES)})")


def codec_for_mean(codec: Codec, n: int, *, exact: bool = False) -> Codec:
    """The codec for re-encoding the mean of ``n`` contributions that each went
    through ``codec`` (the all-gather phase of a butterfly all-reduce).

    * ``ctopk`` under error feedback (``+ef``, ``+ef:BETA``): ``codec``
      itself, i.e. the chunk owner re-sparsifies the mean to K per chunk and
      keeps what it did not send in its own memory (its key is the
      all-gather's; the all-reduce asks for no decay there) for the next
      round. The gather phase then costs what the scatter phase did,
      whatever ``n`` (no ``n K`` blow-up), and the memory is part of the
      codec's state, so it is saved and restored with it.
    * ``crandk``: ``codec`` itself (``exact=True``: the same positions with
      fp32 values). Every contribution to a chunk has the positions that the
      round's shared seed picks, so the mean has them too: no blow-up and no
      selection loss, only the level quantization (under error feedback,
      carried by the owner's memory).
    * top-k (bare ``topk``, or ``topk`` under ``+ef``) and bare ``ctopk``, or
      any of them with ``exact=True``: the mean has at most ``n k`` non-zeros,
      so it is re-sent with ``n`` times the entries (``topk:min(1, n
      FRACTION)``, ``ctopk:min(CHUNK, n K)`` with fp32 values): exact, no
      second loss, no memory at the owner, but ``n`` times the bytes. The
      audited all-reduce asks for this, because an auditor must be able to
      recompute the owner's bytes.
    * Every other codec is returned unchanged (for EF21 and EControl the
      decoded contributions are dense estimates).
    """
    inner = codec.inner if isinstance(codec, ErrorFeedback) else codec
    if isinstance(inner, ChunkTopKCodec) and inner.select == "rand":
        # the contributions share their positions (the seed), and so does the mean
        return ChunkTopKCodec(inner.k, inner.chunk, "fp32", select="rand") if exact else codec
    if isinstance(inner, ChunkTopKCodec):
        if isinstance(codec, ErrorFeedback) and not exact:
            return codec
        return ChunkTopKCodec(min(inner.chunk, inner.k * max(1, n)), inner.chunk, "fp32", inner.dct)
    if isinstance(inner, TopKCodec):
        return TopKCodec(min(1.0, inner.fraction * max(1, n)))
    return codec

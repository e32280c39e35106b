"""Error-feedback wrappers around any codec: ``+ef``, ``+ef21``, ``+econtrol[:ETA]``.

Each wrapper sends exactly the inner codec's payload (``encoded_size`` is the
inner one's); only the per-``key`` state differs. Notation: ``C`` = inner
encode, ``D`` = inner decode (same ``seed``), ``x`` the tensor handed to
``encode`` (e.g. a worker's gradient), state starts at zero per key.

* ``ErrorFeedback`` (``+ef``; Seide et al. 2014, Karimireddy et al. 2019).
  Sender memory ``e``::

      c = C(x + e);   e <- x + e - D(c)

  ``+ef:BETA`` decays the memory first (SparseLoCo's accumulator, Sarfi et
  al. 2025; DeMo's momentum, Peng et al. 2024)::

      c = C(x + beta e);   e <- x + beta e - D(c)

  The receiver decodes statelessly: ``decode`` returns ``D(c)``.

* ``EF21`` (``+ef21``; Richtarik, Sokolov, Fatkhullin 2021). Sender keeps the
  estimate ``g``, the receiver its own copy of ``g`` for the same key::

      sender:   c = C(x - g);   g <- g + D(c)
      receiver: g <- g + D(c);  decode returns g

  Both copies of ``g`` stay bit-identical because both add the same ``D(c)``.

* ``EControl`` (``+econtrol:ETA``; Gao, Islamov, Stich 2023, "EControl: Fast
  Distributed Optimization with Compression and Error Control"). Sender keeps
  the error ``e`` and the estimate ``h``; feedback strength ``eta``::

      Delta = C(eta * e + x - h)
      e <- e + x - h - D(Delta)
      h <- h + D(Delta)
      receiver: h <- h + D(Delta);  decode returns h

  The server steps with the mean of the returned ``h`` (``h_t + Delta_t`` in
  the paper). With ``eta = 0`` this is EF21. Default ``eta = 0.05``: eta must stay
  small against the inner codec's contraction delta (``||C(v)-v||^2 <= (1-delta)||v||^2``;
  theory takes ``eta ~ delta``/400). On the test problem with top-k at delta = 0.1,
  eta = 0.05 converges and eta = 0.2 diverges.

State is per key on each side; a key's state must keep its shape (a
mismatch raises CodecError). A payload that fails validation leaves the
receiver's state untouched; so does one whose sum with the receiver's
estimate would overflow float32 (CodecError): ``decode`` never returns NaN
or inf. Likewise ``encode`` raises CodecError, leaving the sender's state as
it was, when a state update would overflow. ``reset`` forgets state (e.g.
when a peer leaves). Wrappers are not thread-safe per key.

Segments of one vector (what a butterfly all-reduce sends):
``encode_segments(x, segments, key=, seeds=)`` encodes the pieces
``segments = [(lo, hi, shape), ...]`` (disjoint element ranges of one flat
vector; ``x`` holds their values, concatenated in that order) as one payload
each, with the sender state of ``key`` kept over those elements. The
update is the same formula, element-wise, as ``encode`` on each piece (so
the bytes equal per-piece ``encode`` calls with per-piece state), and it is
all or nothing. When a later call names other ranges (the group changed, so
the chunk bounds moved) the state is re-keyed by element: an element keeps
its state if the previous ranges held it, elements new to the key start at
zero, and the state of elements no longer named is dropped. The sender's
error memory therefore survives any re-chunking. Receivers decode piece by
piece with ``decode`` (per-piece keys).

``reset_estimates(match)`` forgets the *estimates* (EF21's ``g``,
EControl's ``h``; sender and receiver copies) of the keys ``match`` accepts
and keeps the error memory (``+ef``'s and EControl's ``e``): the estimates
must agree between the two ends, so both ends call it at the same point.

State is data: ``state_dict()`` returns plain values and tensor copies
(keys as given, e.g. tuples of str and int; ranges as lists), and
``load_state_dict(sd)`` restores it exactly (lists in keys come back as
tuples, so a JSON round trip is harmless); the inner codec's state (a
``powersgd:R:warm`` Q) is included.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from gossamer.errors import CodecError

from .base import Codec, all_finite, as_float32_flat, check_shape, plain_key

__all__ = ["FeedbackCodec", "ErrorFeedback", "EF21", "EControl", "DEFAULT_ETA"]

DEFAULT_ETA = 0.05


class FeedbackCodec(Codec):
    """Common plumbing: delegates the wire format to ``inner``, keeps per-key state."""

    suffix: str = ""
    #: Names of the sender state tensors, and which of them are estimates
    #: mirrored by the receiver (forgotten by ``reset_estimates``).
    state_names: tuple[str, ...] = ()
    estimate_names: tuple[str, ...] = ()

    def __init__(self, inner: Codec) -> None:
        if isinstance(inner, FeedbackCodec):
            raise ValueError("feedback wrappers do not nest")
        self.inner = inner
        self.lossless = inner.lossless
        self.whole_tensors = inner.whole_tensors
        self.spec = inner.spec + self.suffix
        self._enc: dict[Hashable, dict[str, torch.Tensor]] = {}
        self._dec: dict[Hashable, torch.Tensor] = {}
        #: Element ranges of the keys used by ``encode_segments``.
        self._ranges: dict[Hashable, tuple[tuple[int, int], ...]] = {}
        #: A decay that overrides the wrapper's own for one ``encode_segments`` call.
        self._decay: float | None = None

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        return self.inner.encoded_size(shape)

    def reset(self, key: Hashable = None, *, all_keys: bool = False) -> None:
        """Forget sender and receiver state of ``key`` (or of every key), the
        inner codec's included."""
        if all_keys:
            self._enc.clear()
            self._dec.clear()
            self._ranges.clear()
        else:
            self._enc.pop(key, None)
            self._dec.pop(key, None)
            self._ranges.pop(key, None)
        self.inner.reset(key, all_keys=all_keys)

    def reset_estimates(self, match: Callable[[Hashable], bool] | None = None) -> None:
        """Forget the estimates (sender and receiver copies) of every key that
        ``match`` accepts (every key when None); error memory stays."""
        for key in [k for k in self._enc if match is None or match(k)]:
            st = self._enc[key]
            if set(st) <= set(self.estimate_names):
                del self._enc[key]
                self._ranges.pop(key, None)
            else:
                for name in self.estimate_names:
                    st[name] = torch.zeros_like(st[name])
        for key in [k for k in self._dec if match is None or match(k)]:
            del self._dec[key]

    def state_dict(self, match: Callable[[Hashable], bool] | None = None) -> dict[str, Any]:
        """The state of every key ``match`` accepts (all when None), as plain data
        and tensor copies (see the module docstring)."""
        keep = (lambda k: True) if match is None else match
        return {
            "spec": self.spec,
            "sender": [[key, {n: t.clone() for n, t in st.items()},
                        None if key not in self._ranges else [list(r) for r in self._ranges[key]]]
                       for key, st in self._enc.items() if keep(key)],
            "receiver": [[key, g.clone()] for key, g in self._dec.items() if keep(key)],
            "inner": self.inner.state_dict(match),
        }

    def load_state_dict(self, sd: dict[str, Any], match: Callable[[Hashable], bool] | None = None) -> None:
        """Restore ``state_dict()`` output. With ``match``, only the keys it
        accepts are replaced (by those of ``sd``); the others stay."""
        if sd.get("spec", self.spec) != self.spec:
            raise CodecError(f"{self.spec}: cannot load the state of codec {sd.get('spec')!r}")
        if match is None:
            self._enc.clear()
            self._dec.clear()
            self._ranges.clear()
        else:
            for table in (self._enc, self._dec, self._ranges):
                for k in [k for k in table if match(k)]:
                    del table[k]
        for key, st, ranges in sd.get("sender", []):
            key = plain_key(key)
            self._enc[key] = {str(n): t.detach().to(torch.float32).clone() for n, t in st.items()}
            if ranges is not None:
                self._ranges[key] = tuple((int(lo), int(hi)) for lo, hi in ranges)
        for key, g in sd.get("receiver", []):
            self._dec[plain_key(key)] = g.detach().to(torch.float32).clone()
        self.inner.load_state_dict(sd.get("inner", {}), match)

    def sender_state(self, key: Hashable = None) -> dict[str, torch.Tensor]:
        """Copies of the sender's state tensors for ``key`` (empty before the first encode)."""
        return {k: v.clone() for k, v in self._enc.get(key, {}).items()}

    def receiver_state(self, key: Hashable = None) -> torch.Tensor | None:
        """Copy of the receiver's estimate for ``key`` (EF21/EControl), None if none."""
        g = self._dec.get(key)
        return None if g is None else g.clone()

    def _state(self, key: Hashable, shape: tuple[int, ...], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        st = self._enc.get(key)
        if st is None:
            st = {name: torch.zeros(shape, dtype=torch.float32) for name in names}
            self._enc[key] = st
        else:
            found = tuple(next(iter(st.values())).shape)
            if found != shape:
                raise CodecError(
                    f"{self.spec}: sender state for key {key!r} has shape {found}, found tensor of shape {shape}"
                )
        return st

    def _segment_state(self, key: Hashable, ranges: tuple[tuple[int, int], ...], total: int) -> dict[str, torch.Tensor]:
        """The sender state of ``key`` over the element ``ranges`` (re-keyed by
        element when the ranges changed; see the module docstring)."""
        st = self._enc.get(key)
        old = self._ranges.get(key)
        if st is not None and old is None:
            raise CodecError(f"{self.spec}: sender state for key {key!r} was made by encode, not encode_segments")
        if st is not None and old == ranges:
            return st
        new = {name: torch.zeros(total, dtype=torch.float32) for name in self.state_names}
        if st is not None and old is not None:
            offsets, at = [], 0
            for lo, hi in old:
                offsets.append(at)
                at += hi - lo
            order = sorted(range(len(old)), key=lambda i: old[i][0])
            starts = [old[i][0] for i in order]
            at = 0
            for lo, hi in ranges:
                i = max(bisect.bisect_right(starts, lo) - 1, 0)
                while i < len(order):
                    olo, ohi = old[order[i]]
                    if olo >= hi:
                        break
                    a, b = max(lo, olo), min(hi, ohi)
                    if a < b:
                        src = offsets[order[i]] + (a - olo)
                        for name in self.state_names:
                            new[name][at + a - lo : at + b - lo] = st[name][src : src + b - a]
                    i += 1
                at += hi - lo
        self._enc[key] = new
        self._ranges[key] = ranges
        return new

    def _step(self, x: torch.Tensor, st: dict[str, torch.Tensor],
              send: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update of the wrapper: ``send(v)`` compresses ``v`` and returns
        ``D(C(v))`` (a new tensor, ours to modify); returns the new state."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        x = self._as_input(x, self.spec)
        shape = check_shape(tuple(x.shape))
        created = key not in self._enc
        st = self._state(key, shape, self.state_names)
        out: list[bytes] = []

        def send(v: torch.Tensor) -> torch.Tensor:
            data, d = self._round_trip(v, key, seed)
            out.append(data)
            return d

        try:
            self._commit(st, **self._step(x, st, send))
        except BaseException:
            if created:  # a first encode that fails leaves no state behind
                self._enc.pop(key, None)
            raise
        return out[0]

    def encode_segments(self, x: torch.Tensor, segments: Sequence[tuple[int, int, tuple[int, ...]]], *,
                        key: Hashable, seeds: Sequence[int],
                        inner_keys: Sequence[Hashable] | None = None, decay: float | None = None) -> list[bytes]:
        """One payload per segment (``b""`` for an empty one); see the module docstring.

        ``x``: the segments' values, concatenated in order (any floating
        tensor of that many elements); ``seeds[i]`` / ``inner_keys[i]``: the
        seed and the inner codec's key of segment ``i`` (its decoder uses the
        same). ``decay`` overrides ``+ef:BETA``'s decay for this call (the
        all-reduce's chunk owner keeps its memory of the mean undecayed)."""
        x = as_float32_flat(x, self.spec)
        ranges = tuple((int(lo), int(hi)) for lo, hi, _ in segments)
        if len(seeds) != len(ranges) or (inner_keys is not None and len(inner_keys) != len(ranges)):
            raise CodecError(f"{self.spec}: expected one seed (and inner key) per segment, "
                             f"found {len(seeds)} for {len(ranges)} segments")
        total = 0
        for (lo, hi), (_, _, shape) in zip(ranges, segments):
            if not 0 <= lo <= hi or hi - lo != math.prod(check_shape(tuple(shape))):
                raise CodecError(f"{self.spec}: segment [{lo}, {hi}) does not hold shape {tuple(shape)}")
            total += hi - lo
        spans = sorted(r for r in ranges if r[1] > r[0])
        for (_, hi), (lo, _) in zip(spans, spans[1:]):
            if lo < hi:
                raise CodecError(f"{self.spec}: segments overlap at element {lo}")
        if x.numel() != total:
            raise CodecError(f"{self.spec}: expected {total} values for the segments, found {x.numel()}")
        before = (self._enc.get(key), self._ranges.get(key))
        st = self._segment_state(key, ranges, total)
        out: list[bytes] = []

        def send(v: torch.Tensor) -> torch.Tensor:
            d = torch.empty_like(v)
            at = 0
            for i, ((lo, hi), (_, _, shape)) in enumerate(zip(ranges, segments)):
                n = hi - lo
                if n == 0:
                    out.append(b"")
                    continue
                ik = inner_keys[i] if inner_keys is not None else (key, i)
                data, piece = self._round_trip(v[at : at + n].view(tuple(shape)), ik, int(seeds[i]))
                d[at : at + n] = piece.reshape(-1)
                out.append(data)
                at += n
            return d

        self._decay = decay
        try:
            self._commit(st, **self._step(x, st, send))
        except BaseException:
            # all or nothing: the state (and its element ranges) as before the call
            for table, old in zip((self._enc, self._ranges), before):
                if old is None:
                    table.pop(key, None)
                else:
                    table[key] = old
            raise
        finally:
            self._decay = None
        return out

    def _commit(self, st: dict[str, torch.Tensor], **new: torch.Tensor) -> None:
        """Store the ``new`` sender state tensors; if any overflowed, raise CodecError and keep the old."""
        for name, t in new.items():
            if not all_finite(t):
                raise CodecError(
                    f"{self.spec}: sender state {name!r} would overflow float32 (input too large); "
                    f"state left unchanged"
                )
        st.update(new)

    def _round_trip(self, v: torch.Tensor, key: Hashable, seed: int) -> tuple[bytes, torch.Tensor]:
        data = self.inner.encode(v, key=key, seed=seed)
        return data, self.inner.decode(data, tuple(v.shape), key=key, seed=seed)

    def _decode_estimate(self, data: bytes | memoryview, shape: tuple[int, ...], key: Hashable, seed: int,
                         out: torch.Tensor | None) -> torch.Tensor:
        g = self._dec.get(key)
        if g is not None and tuple(g.shape) != shape:
            raise CodecError(
                f"{self.spec}: receiver state for key {key!r} has shape {tuple(g.shape)}, expected shape {shape}"
            )
        d = self.inner.decode(data, shape, key=key, seed=seed)  # validates before any state change
        if g is None:
            self._dec[key] = d.clone()
            return d if out is None else out.copy_(d)
        new = torch.add(g, d, out=d)  # d is ours: it becomes the new estimate
        if not all_finite(new):
            raise CodecError(
                f"{self.spec}: the decoded difference added to the receiver's estimate for key {key!r} "
                f"overflows float32; expected a finite estimate (state left unchanged)"
            )
        self._dec[key] = new
        return new.clone() if out is None else out.copy_(new)

    @staticmethod
    def _as_input(x: torch.Tensor, spec: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise CodecError(f"{spec}: expected a torch.Tensor, found {type(x).__name__}")
        return as_float32_flat(x, spec).view(tuple(x.shape))


class ErrorFeedback(FeedbackCodec):
    """Error feedback with decay ``beta``: ``c = C(x + beta e); e <- x + beta e - D(c)``.

    ``beta = 1`` (``+ef``) is classic error feedback. ``beta < 1``
    (``+ef:BETA``) is SparseLoCo's accumulator (Sarfi et al. 2025), which
    also stands in for DiLoCo's outer momentum: run it with
    ``outer_momentum = 0``. Raises ValueError for beta outside (0, 1].
    """

    state_names = ("e",)

    def __init__(self, inner: Codec, beta: float = 1.0) -> None:
        beta = float(beta)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], found {beta}")
        self.beta = beta
        self.suffix = "+ef" if beta == 1.0 else f"+ef:{beta!r}"
        super().__init__(inner)

    def _step(self, x: torch.Tensor, st: dict[str, torch.Tensor],
              send: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        beta = self.beta if self._decay is None else self._decay
        p = x + st["e"] if beta == 1.0 else torch.add(x, st["e"], alpha=beta)
        d = send(p)
        return {"e": p.sub_(d)}

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        return self.inner.decode(data, shape, key=key, seed=seed, out=out)


class EF21(FeedbackCodec):
    """EF21: ``c = C(x - g); g <- g + D(c)`` on both ends; decode returns ``g``."""

    suffix = "+ef21"
    state_names = ("g",)
    estimate_names = ("g",)

    def _step(self, x: torch.Tensor, st: dict[str, torch.Tensor],
              send: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        d = send(x - st["g"])
        return {"g": d.add_(st["g"])}

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        return self._decode_estimate(data, shape, key, seed, out)


class EControl(FeedbackCodec):
    """EControl: ``D = C(eta e + x - h); e <- e + x - h - D; h <- h + D``; decode returns ``h``."""

    state_names = ("e", "h")
    estimate_names = ("h",)

    def __init__(self, inner: Codec, eta: float = DEFAULT_ETA) -> None:
        eta = float(eta)
        if not (eta >= 0.0 and eta < float("inf")):
            raise ValueError(f"eta must be a finite number >= 0, found {eta}")
        self.eta = eta
        self.suffix = f"+econtrol:{eta!r}"
        super().__init__(inner)

    def _step(self, x: torch.Tensor, st: dict[str, torch.Tensor],
              send: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        diff = x - st["h"]
        d = send(diff + self.eta * st["e"])
        return {"e": diff.add_(st["e"]).sub_(d), "h": d.add_(st["h"])}

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        return self._decode_estimate(data, shape, key, seed, out)

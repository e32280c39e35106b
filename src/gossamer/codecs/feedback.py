"""Error-feedback wrappers around any codec: ``+ef``, ``+ef21``, ``+econtrol[:ETA]``.

Each wrapper sends exactly the inner codec's payload (``encoded_size`` is the
inner one's); only the per-``key`` state differs. Notation: ``C`` = inner
encode, ``D`` = inner decode (same ``seed``), ``x`` the tensor handed to
``encode`` (e.g. a worker's gradient), state starts at zero per key.

* ``ErrorFeedback`` (``+ef``; Seide et al. 2014, Karimireddy et al. 2019).
  Sender memory ``e``::

      c = C(x + e);   e <- x + e - D(c)

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
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from gossamer.errors import CodecError

from .base import Codec, all_finite, as_float32_flat, check_shape

__all__ = ["FeedbackCodec", "ErrorFeedback", "EF21", "EControl", "DEFAULT_ETA"]

DEFAULT_ETA = 0.05


class FeedbackCodec(Codec):
    """Common plumbing: delegates the wire format to ``inner``, keeps per-key state."""

    suffix: str = ""

    def __init__(self, inner: Codec) -> None:
        if isinstance(inner, FeedbackCodec):
            raise ValueError("feedback wrappers do not nest")
        self.inner = inner
        self.lossless = inner.lossless
        self.whole_tensors = inner.whole_tensors
        self.spec = inner.spec + self.suffix
        self._enc: dict[Hashable, dict[str, torch.Tensor]] = {}
        self._dec: dict[Hashable, torch.Tensor] = {}

    def encoded_size(self, shape: tuple[int, ...]) -> int:
        return self.inner.encoded_size(shape)

    def reset(self, key: Hashable = None, *, all_keys: bool = False) -> None:
        """Forget sender and receiver state of ``key`` (or of every key)."""
        if all_keys:
            self._enc.clear()
            self._dec.clear()
        else:
            self._enc.pop(key, None)
            self._dec.pop(key, None)

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
    """Classic error feedback: ``c = C(x + e); e <- x + e - D(c)``."""

    suffix = "+ef"

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        x = self._as_input(x, self.spec)
        shape = check_shape(tuple(x.shape))
        st = self._state(key, shape, ("e",))
        p = x + st["e"]
        data, d = self._round_trip(p, key, seed)
        self._commit(st, e=p.sub_(d))
        return data

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        return self.inner.decode(data, shape, key=key, seed=seed, out=out)


class EF21(FeedbackCodec):
    """EF21: ``c = C(x - g); g <- g + D(c)`` on both ends; decode returns ``g``."""

    suffix = "+ef21"

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        x = self._as_input(x, self.spec)
        shape = check_shape(tuple(x.shape))
        st = self._state(key, shape, ("g",))
        data, d = self._round_trip(x - st["g"], key, seed)
        self._commit(st, g=d.add_(st["g"]))
        return data

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        return self._decode_estimate(data, shape, key, seed, out)


class EControl(FeedbackCodec):
    """EControl: ``D = C(eta e + x - h); e <- e + x - h - D; h <- h + D``; decode returns ``h``."""

    def __init__(self, inner: Codec, eta: float = DEFAULT_ETA) -> None:
        eta = float(eta)
        if not (eta >= 0.0 and eta < float("inf")):
            raise ValueError(f"eta must be a finite number >= 0, found {eta}")
        self.eta = eta
        self.suffix = f"+econtrol:{eta!r}"
        super().__init__(inner)

    def encode(self, x: torch.Tensor, *, key: Hashable = None, seed: int = 0) -> bytes:
        x = self._as_input(x, self.spec)
        shape = check_shape(tuple(x.shape))
        st = self._state(key, shape, ("e", "h"))
        diff = x - st["h"]
        data, d = self._round_trip(diff + self.eta * st["e"], key, seed)
        self._commit(st, e=diff.add_(st["e"]).sub_(d), h=d.add_(st["h"]))
        return data

    def _decode(self, data: bytes | memoryview, shape: tuple[int, ...], *, key: Hashable, seed: int,
                out: torch.Tensor | None) -> torch.Tensor:
        return self._decode_estimate(data, shape, key, seed, out)

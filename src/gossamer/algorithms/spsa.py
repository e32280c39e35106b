"""Shared-seed SPSA, "one byte" per peer per step (Zelikman et al. 2023,
"Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language
Model Finetuning Using Shared Randomness"; zeroth-order estimator from MeZO,
Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes").

Step ``t`` on peer ``i`` (rank order ``i = 0..n-1``, peer ids ``p_i``):

    z_{t,i} ~ N(0, I)  drawn from generator(comm.seed, "spsa", t, p_i)  (one draw per parameter, in order)
    g_{t,i} = (L_i(w + eps z_{t,i}) - L_i(w - eps z_{t,i})) / (2 eps)  (two forward passes, same batch)
    b_{t,i} = clamp(round(g_{t,i} / s), -127, 127)                     (the byte, int8; s = byte_scale)
    all peers, after all-gathering the bytes, for i = 0..n-1 in rank order:
    w <- w - (lr s b_{t,i} / n) z_{t,i}

The quantizer is a clipped, round-to-nearest int8 with a FIXED scale ``s``
(config ``byte_scale``): it represents ``|g| <= 127 s`` to within ``s / 2``
and clips larger values (the update is then a smaller step in the same
direction). A fixed scale keeps every peer's decoding identical with no
side information; choose ``s`` so that typical ``|g|`` is a few tens of ``s``.

Wire. Each peer's payload is exactly one byte per step per destination:
``comm.all_gather`` of a 1-byte payload, ``n - 1`` payload bytes sent per peer
per step (plus framing, counted separately by the transport). No weights
ever travel: every peer regenerates every ``z_{t,i}`` from its seed.

Bit parity. Every peer applies the identical sequence of float32 operations
(same ``z``, same bytes, same order), so all peers stay bit-identical. The
perturbation is local only; to restore ``w`` exactly (``w + eps z - 2 eps z +
eps z`` is not ``w`` in floating point) we keep a copy of ``w`` during the two
forward passes (one extra model-sized buffer; MeZO's regenerate-and-undo
trick saves it at the price of exactness). No backward pass runs: the
forward passes are under ``torch.no_grad()`` (inference memory only).

Joiners. ``self.log`` records every applied ``(step, peer_id, byte)`` in
order; ``replay(log)`` applies such a log to a model holding the initial
weights, reproducing a peer's state bit for bit, so a new peer catches up
from ``steps x n`` bytes instead of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AggregationError, ConfigError
from ..seeding import generator
from .base import Algorithm, positive


@dataclass(frozen=True)
class SPSAConfig:
    lr: float = 1e-4
    eps: float = 1e-3
    byte_scale: float = 1.0

    def __post_init__(self) -> None:
        positive("lr", self.lr, what="spsa")
        positive("eps", self.eps, what="spsa")
        positive("byte_scale", self.byte_scale, what="spsa")


def quantize(g: float, scale: float) -> int:
    """The byte (as int8 value) for the projected gradient ``g``."""
    if g != g:  # NaN: send no information
        return 0
    return int(max(-127, min(127, round(g / scale))))


class SPSA(Algorithm):
    name = "spsa"
    #: the bytes are applied as they come (no aggregator sees them), so robust
    #: aggregation and the simulator's attacks do not apply
    individual_contributions = False
    #: the byte is its own quantizer: no codec applies
    uses_codec = False
    own_optimizer_refusal = ("it takes no gradients: each step evaluates the loss twice along a shared random "
                             "direction, so it needs loss_fn and a batch (use Peer(...).train)")

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Any, config: SPSAConfig) -> None:
        super().__init__(model, loss_fn, comm, config)
        self.t = 0
        self.byte = 0
        self.log: list[tuple[int, str, int]] = []

    def direction(self, t: int, peer: str) -> list[torch.Tensor]:
        gen = generator(self.comm.seed, "spsa", t, peer)
        # drawn on the CPU from a CPU generator (the same numbers on every device), then moved
        return [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in self.params]

    @torch.no_grad()
    def local_step(self, batch: Any) -> float:
        eps = self.config.eps
        z = self.direction(self.t, self.comm.peer_id)
        saved = [p.detach().clone() for p in self.params]
        for p, zi in zip(self.params, z):
            p.add_(zi, alpha=eps)
        plus = float(self.loss_fn(self.model, batch))
        for p, w, zi in zip(self.params, saved, z):
            torch.add(w, zi, alpha=-eps, out=p.data)
        minus = float(self.loss_fn(self.model, batch))
        for p, w in zip(self.params, saved):
            p.copy_(w)
        self.byte = quantize((plus - minus) / (2 * eps), self.config.byte_scale)
        return 0.5 * (plus + minus)

    def wants_sync(self, step: int) -> bool:
        return True

    async def sync(self, step: int) -> None:
        self.comm.round = self.t
        mine = int(self.byte).to_bytes(1, "little", signed=True)
        got = await self.comm.all_gather(mine, name="spsa.byte")
        entries = []
        for peer, data in zip(self.comm.group, got):
            if len(data) != 1:
                raise AggregationError(f"spsa: peer {peer!r} sent {len(data)} bytes at step {self.t}, expected exactly 1")
            entries.append((self.t, peer, int.from_bytes(data, "little", signed=True)))
        self.apply(entries, n=self.comm.size)
        self.t += 1
        self.rounds += 1

    @torch.no_grad()
    def apply(self, entries: list[tuple[int, str, int]], *, n: int) -> None:
        """Apply ``(step, peer, byte)`` updates in order (each scaled by 1/n)."""
        for t, peer, b in entries:
            self.log.append((t, peer, b))
            if b == 0:
                continue
            coef = -self.config.lr * self.config.byte_scale * b / n
            for p, zi in zip(self.params, self.direction(t, peer)):
                p.add_(zi, alpha=coef)

    def counters(self) -> dict[str, Any]:
        return super().counters() | {"t": self.t}

    def load_counters(self, counters: dict[str, Any]) -> None:
        super().load_counters(counters)
        self.t = int(counters.get("t", self.t))

    def local_state(self) -> dict[str, Any]:
        return super().local_state() | {"byte": self.byte}

    def load_local_state(self, local: dict[str, Any] | None) -> None:
        super().load_local_state(local)
        self.byte = int(local.get("byte", 0)) if local is not None else 0

    def replay(self, log: list[tuple[int, str, int]], *, n: int | None = None) -> None:
        """Catch up from a log of ``(step, peer, byte)``: ``n`` is the number of peers
        contributing per step (default: the number of entries of the log's first step)."""
        if not log:
            return
        if n is None:
            n = sum(1 for t, _, _ in log if t == log[0][0])
        if n < 1:
            raise ConfigError("spsa: replay needs n >= 1")
        self.apply(list(log), n=n)
        self.t = max(self.t, log[-1][0] + 1)

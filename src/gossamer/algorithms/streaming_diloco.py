"""Streaming DiLoCo (Douillard et al. 2025, "Streaming DiLoCo with overlapping
communication: Towards a Distributed Free Lunch", arXiv:2501.18512).

DiLoCo (see ``diloco.py``), but the parameters are cut into ``P`` fragments
that synchronise on a staggered schedule, each fragment's all-reduce overlaps
``tau`` inner steps, and the exchanged outer gradients are quantized.

Fragments. ``fragmenting="range"`` (default): the flattened parameter vector is
cut into ``P`` contiguous ranges of equal size (+-1 element); in parameter
order, so each fragment is a run of consecutive layers and at most ``P - 1``
tensors are split. This balances bytes exactly for any model (the quadratic
task has one tensor). ``fragmenting="layers"``: whole tensors, dealt
largest-first to the lightest fragment (LPT); as in the paper, but the balance
is only as good as the tensor sizes allow (a big embedding dominates).

Schedule. Fragment ``p`` has offset ``o_p = floor(p H / P)`` and starts a sync
after local step ``t`` (0-based) when ``(t + 1) mod H == o_p``; its result is
merged ``tau`` steps later (``0 <= tau < H``). For fragment ``p`` started at
step ``t`` (``theta_p`` are its shared outer parameters, ``theta_{i,p}`` peer
``i``'s local ones, ``n`` peers):

    Delta_p   = (1/n) sum_i Q(theta_p - theta_{i,p}^{(t)})          (codec Q, int4 by default)
    m_p      <- mu m_p + Delta_p
    theta_p  <- theta_p - eta (Delta_p + mu m_p)                     (Nesterov; eta=0.7, mu=0.9)
    at step t + tau:
    theta_{i,p}^{(t+tau)} <- alpha theta_{i,p}^{(t+tau)} + (1 - alpha) theta_p

``alpha = 0`` replaces the local fragment by the shared one (with ``tau = 0``
and ``P = 1`` that is exactly DiLoCo, tested bit for bit); the paper mixes
with ``alpha = 0.5`` when it overlaps (``tau > 0``).

Bytes. At any sync only one fragment travels, so the peak bytes of one round
are about ``1/P`` of DiLoCo's (measured from the transport counters in the
tests), and the codec divides them again (int4: ~7.5x).

Overlap. A fragment's all-reduce is started with
``comm.start_all_reduce`` (non-blocking) and awaited at the merge, ``tau``
inner steps later: over TCP the exchange really runs while the peer trains,
and the simulator models the same overlap through the same handle (the
collective runs on a transport lane with its own virtual clock; the peer's
clock waits for it at the merge if it is not done). No clock is touched here.

Codec. The run's codec (``comm``'s; int4 by default, ``default_codec``)
compresses the outer gradients, like every other algorithm's payload.

State. The shared counters include the fragments in flight ``[fragment,
merge_at]``; each peer's own pseudo-gradient of a fragment in flight is local
state, so a retried sync (after ``load_state_dict``) starts that collective
again from the same input. A joiner that arrives while a fragment is in flight
contributes a zero pseudo-gradient if that collective must be restarted.

Bit parity. The shared outer parameters and momenta of every fragment are
bit-identical on every peer after every sync (butterfly all-reduce, the same
update in the same order). ``eval_model()`` is the shared outer parameters
(each fragment as of its last merge); the final sync of a run only merges
results still in flight (no extra full-model round).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .base import Algorithm, make_optimizer, positive


@dataclass(frozen=True)
class StreamingDiLoCoConfig:
    inner_steps: int = 100
    fragments: int = 4
    tau: int = 1
    alpha: float = 0.5
    fragmenting: str = "range"
    inner_optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True

    def __post_init__(self) -> None:
        w = "streaming_diloco"
        positive("inner_steps", self.inner_steps, what=w)
        positive("fragments", self.fragments, what=w)
        positive("tau", self.tau, what=w, allow_zero=True)
        positive("lr", self.lr, what=w)
        positive("outer_lr", self.outer_lr, what=w)
        positive("outer_momentum", self.outer_momentum, what=w, allow_zero=True)
        positive("weight_decay", self.weight_decay, what=w, allow_zero=True)
        positive("grad_clip", self.grad_clip, what=w, allow_zero=True)
        if self.fragments > self.inner_steps:
            raise ConfigError(f"{w}: fragments ({self.fragments}) must be <= inner_steps ({self.inner_steps}) so offsets differ")
        if self.tau >= self.inner_steps:
            raise ConfigError(f"{w}: tau must be < inner_steps ({self.inner_steps}), got {self.tau}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{w}: alpha must be in [0, 1], got {self.alpha}")
        if self.fragmenting not in ("range", "layers"):
            raise ConfigError(f"{w}: fragmenting must be 'range' or 'layers', got {self.fragmenting!r}")


def range_fragments(sizes: list[int], parts: int) -> list[list[tuple[int, int, int]]]:
    """Cut the concatenation of tensors of ``sizes`` into ``parts`` contiguous equal
    ranges; each fragment is a list of ``(tensor index, start, stop)`` pieces."""
    total = sum(sizes)
    base, extra = divmod(total, parts)
    bounds, lo = [], 0
    for p in range(parts):
        hi = lo + base + (1 if p < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    out: list[list[tuple[int, int, int]]] = []
    for lo, hi in bounds:
        pieces, offset = [], 0
        for i, n in enumerate(sizes):
            a, b = max(lo, offset), min(hi, offset + n)
            if a < b:
                pieces.append((i, a - offset, b - offset))
            offset += n
        out.append(pieces)
    return out


def layer_fragments(sizes: list[int], parts: int) -> list[list[tuple[int, int, int]]]:
    """Whole tensors dealt largest-first to the lightest fragment (ties: lowest index)."""
    loads = [0] * parts
    members: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        p = min(range(parts), key=lambda q: (loads[q], q))
        loads[p] += sizes[i]
        members[p].append(i)
    return [[(i, 0, sizes[i]) for i in sorted(m)] for m in members]


@dataclass
class _Pending:
    fragment: int
    merge_at: int
    delta: list[torch.Tensor]
    handle: Any = None  # a CollectiveHandle while the all-reduce runs; None after a restore


class StreamingDiLoCo(Algorithm):
    name = "streaming_diloco"
    #: outer gradients travel as block-wise int4 (the paper quantizes them to 4 bits)
    default_codec = "int4"

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Any, config: StreamingDiLoCoConfig) -> None:
        super().__init__(model, loss_fn, comm, config)
        self.inner = make_optimizer(config.inner_optimizer, self.params, config.lr, config.weight_decay, what=self.name)
        sizes = [p.numel() for p in self.params]
        split = range_fragments if config.fragmenting == "range" else layer_fragments
        self.fragments = split(sizes, config.fragments)
        H, P = config.inner_steps, config.fragments
        self.offsets = [(p * H) // P for p in range(P)]
        # shared outer parameters and momentum, one flat copy per piece of each fragment
        self.outer = [[self._piece(i, a, b).clone() for i, a, b in frag] for frag in self.fragments]
        self.momentum = [[torch.zeros_like(t) for t in frag] for frag in self.outer] if config.outer_momentum > 0 else []
        self.pending: list[_Pending] = []
        self._eval_model: torch.nn.Module | None = None

    # ------------------------------------------------------------------ helpers
    def _piece(self, i: int, a: int, b: int) -> torch.Tensor:
        return self.params[i].detach().view(-1)[a:b]

    def starts_at(self, step: int) -> list[int]:
        """Fragments whose sync starts after local step ``step``."""
        r = (step + 1) % self.config.inner_steps
        return [p for p, o in enumerate(self.offsets) if o == r]

    # ------------------------------------------------------------------ contract
    def local_step(self, batch: Any) -> float:
        return self._inner_step(batch)

    def wants_sync(self, step: int) -> bool:
        return bool(self.starts_at(step)) or any(p.merge_at == step for p in self.pending)

    async def sync(self, step: int) -> None:
        # the run's last sync merges everything in flight, including fragments it starts
        final = self.is_last_step(step) or not self.wants_sync(step)
        for p in self.starts_at(step):
            await self._start(p, step)
        due = [x for x in self.pending if final or x.merge_at <= step]
        self.pending = [x for x in self.pending if not (final or x.merge_at <= step)]
        for x in sorted(due, key=lambda x: (x.merge_at, x.fragment)):
            await self._merge(x)
        self.rounds += 1

    async def _start(self, p: int, step: int) -> None:
        frag = self.fragments[p]
        with torch.no_grad():
            delta = [o - self._piece(i, a, b) for o, (i, a, b) in zip(self.outer[p], frag)]
        self.comm.round = self.rounds
        handle = self.comm.start_all_reduce(delta, name=f"{self.name}.fragment{p}")
        self.pending.append(_Pending(p, step + self.config.tau, delta, handle))

    async def _merge(self, x: _Pending) -> None:
        if x.handle is not None:
            avg = await x.handle.wait()
        else:  # restored from a state_dict: run the collective again from the same input
            self.comm.round = self.rounds
            avg = await self.comm.all_reduce(x.delta, name=f"{self.name}.fragment{x.fragment}")
        mu, eta, alpha = self.config.outer_momentum, self.config.outer_lr, self.config.alpha
        frag = self.fragments[x.fragment]
        with torch.no_grad():
            for k, ((i, a, b), d) in enumerate(zip(frag, avg)):
                s = self.outer[x.fragment][k]
                if mu == 0:
                    s.sub_(d, alpha=eta) if eta != 1.0 else s.sub_(d)
                else:
                    m = self.momentum[x.fragment][k]
                    m.mul_(mu).add_(d)
                    upd = d.add(m, alpha=mu) if self.config.nesterov else m
                    s.sub_(upd, alpha=eta)
                local = self._piece(i, a, b)
                if alpha == 0.0:
                    local.copy_(s)
                else:
                    local.mul_(alpha).add_(s, alpha=1.0 - alpha)

    def shared_state(self) -> list[torch.Tensor]:
        return [t for frag in self.outer for t in frag] + [t for frag in self.momentum for t in frag]

    def eval_model(self) -> torch.nn.Module:
        if self._eval_model is None:
            self._eval_model = copy.deepcopy(self.model)
        params = [q for q in self._eval_model.parameters() if q.requires_grad]
        with torch.no_grad():
            for frag, outs in zip(self.fragments, self.outer):
                for (i, a, b), s in zip(frag, outs):
                    params[i].detach().view(-1)[a:b].copy_(s)
        return self._eval_model

    # The runner ends local-update algorithms with a sync; this marks us as one.
    ends_with_sync = True

    # ------------------------------------------------------------------ state
    def counters(self) -> dict[str, Any]:
        out = super().counters()
        out["pending"] = [[x.fragment, x.merge_at] for x in self.pending]
        return out

    def load_counters(self, counters: dict[str, Any]) -> None:
        super().load_counters(counters)
        for x in self.pending:
            if x.handle is not None:
                x.handle.cancel()
        self.pending = []
        for p, merge_at in counters.get("pending", []):
            frag = self.fragments[int(p)]
            zeros = [torch.zeros(b - a, dtype=self.params[i].dtype, device=self.params[i].device) for i, a, b in frag]
            self.pending.append(_Pending(int(p), int(merge_at), zeros))

    def local_state(self) -> dict[str, Any]:
        out = super().local_state()
        out["pending"] = [[t.clone() for t in x.delta] for x in self.pending]
        return out

    def load_local_state(self, local: dict[str, Any] | None) -> None:
        super().load_local_state(local)
        if local is not None:
            for x, delta in zip(self.pending, local.get("pending", [])):
                x.delta = [t.clone() for t in delta]

    def reset_local(self) -> None:
        super().reset_local()
        with torch.no_grad():
            for frag, outs in zip(self.fragments, self.outer):
                for (i, a, b), s in zip(frag, outs):
                    self._piece(i, a, b).copy_(s)

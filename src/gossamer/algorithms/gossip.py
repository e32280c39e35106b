"""Gossip learning: decentralized SGD over a topology (D-PSGD, Lian et al. 2017,
"Can Decentralized Algorithms Outperform Centralized Algorithms?"), with
optional MoDeST-style sampling (de Vos et al. 2023), variance-corrected
averaging ("Vanishing Variance", 2024) and a single global merge at the end
("A Single Merging Suffices", 2025).

Round. Every peer takes ``H`` local optimizer steps, then averages with its
neighbours ``N(i)`` in the topology's gossip matrix ``W``:

    x_i <- W_ii x_i + sum_{j in N(i)} W_ij x_j                      (self first, then ranks ascending)
    Metropolis-Hastings:  W_ij = 1 / (1 + max(d_i, d_j)),  W_ii = 1 - sum_j W_ij
    uniform:              W_ij = 1 / (d_i + 1) for j in N(i) + {i}

With ``H = 1`` and plain SGD this is D-PSGD (which mixes and steps in the
same iteration); ``H > 1`` is local-update decentralized SGD.

Topologies (undirected, a pure function of ``n``, ``degree`` and the seed):
``ring`` (i ~ i+-1), ``torus`` (r x c grid with wrap-around, r the largest
divisor of n <= sqrt(n)), ``exponential`` (i ~ i +- 2^k mod n, 2^k < n) and
``random_regular`` (a uniformly drawn simple ``degree``-regular graph, by the
pairing model with rejection, seeded by ``generator(comm.seed, ...)``).

Op-id alignment. Collectives must be issued in the same order on every peer.
The edges are greedily coloured into matchings (colour = slot, at most
``2 max_degree - 1`` slots); every round each peer walks the slots in order
and either exchanges with its partner of that slot or spends the slot's
operation id without sending (``skip_op``). Both ends of an edge therefore
use the same op id, and no peer waits on a peer that is not talking to it.
Exchanges within a round are sequential (one partner at a time).

Sampling (``sample_size = s``, MoDeST). Round ``r`` has a seeded random
sample ``S_r`` of ``s`` peers (``generator(comm.seed, "gossip-sample", r)``);
only they train; at the round's end they average all-to-all
(``x <- (1/s) sum_{j in S_r} x_j``, summed in rank order, so the sample agrees
bit for bit), then hand the model to the newcomers ``S_{r+1} \\ S_r``
(newcomer ``m`` gets it from sample member ``m mod s``). Peers outside the
sample do no work and keep the model they last held.

Variance correction (``variance_correction=True``; Vanishing Variance). Per
tensor, after mixing, restore the element variance that averaging of
uncorrelated models removes:

    sigma2 = sum_j W_ij Var(w_j) ;  mu = mean(w_bar)
    w_bar <- mu + (w_bar - mu) sqrt(sigma2 / Var(w_bar))            (tensors with > 1 element, Var > 0)

Final merge (``final_merge_at = T``; A Single Merging Suffices). After local
step ``T - 1`` (1-based step ``T``, normally the run's last), one all-reduce of
the parameters replaces every model by the global mean: from then on all
peers are bit-identical. ``bit_parity`` is False (replicas differ until then).

State. ``shared_state()`` and ``eval_model()`` are the peer's own model (the
runner evaluates peer 0's; with sampling it is the model peer 0 last held).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..comm import flatten, unflatten
from ..errors import AggregationError, CodecError, ConfigError, PeerError
from ..seeding import generator
from .base import Algorithm, make_optimizer, positive

log = logging.getLogger(__name__)

TOPOLOGIES = ("ring", "torus", "exponential", "random_regular")


# ---------------------------------------------------------------------- helpers shared with noloco
def skip_op(comm: Any) -> None:
    """Spend one operation id without communicating, keeping op ids aligned with
    peers that do communicate in this slot."""
    comm.skip()


# ---------------------------------------------------------------------- topologies
def topology_edges(name: str, n: int, *, degree: int = 4, seed: int = 0) -> list[tuple[int, int]]:
    """Sorted undirected edges ``(a, b)``, ``a < b``, of topology ``name`` on ``n`` ranks."""
    edges: set[tuple[int, int]] = set()

    def add(a: int, b: int) -> None:
        if a != b:
            edges.add((min(a, b), max(a, b)))

    if name == "ring":
        for i in range(n):
            add(i, (i + 1) % n)
    elif name == "torus":
        r = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
        c = n // r
        for i in range(n):
            row, col = divmod(i, c)
            add(i, row * c + (col + 1) % c)
            add(i, ((row + 1) % r) * c + col)
    elif name == "exponential":
        k = 1
        while k < n:
            for i in range(n):
                add(i, (i + k) % n)
            k *= 2
    elif name == "random_regular":
        if not 1 <= degree < n or (n * degree) % 2:
            raise ConfigError(f"gossip: random_regular needs 1 <= degree < peers and peers*degree even; got degree={degree}, peers={n}")
        for attempt in range(10_000):
            stubs = [i for i in range(n) for _ in range(degree)]
            perm = torch.randperm(len(stubs), generator=generator(seed, "gossip-random-regular", n, degree, attempt)).tolist()
            pairs = [(stubs[perm[k]], stubs[perm[k + 1]]) for k in range(0, len(perm), 2)]
            cand = {(min(a, b), max(a, b)) for a, b in pairs}
            if all(a != b for a, b in pairs) and len(cand) == len(pairs):
                edges = cand
                break
        else:  # pragma: no cover - astronomically unlikely for sane sizes
            raise ConfigError(f"gossip: no simple {degree}-regular graph on {n} peers found")
    else:
        raise ConfigError(f"gossip: unknown topology {name!r}; accepted: {', '.join(TOPOLOGIES)}")
    return sorted(edges)


def edge_colouring(edges: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Greedy proper edge colouring: a list of matchings (slots) covering ``edges``."""
    slots: list[list[tuple[int, int]]] = []
    busy: list[set[int]] = []
    for a, b in edges:
        for k, used in enumerate(busy):
            if a not in used and b not in used:
                slots[k].append((a, b))
                used.update((a, b))
                break
        else:
            slots.append([(a, b)])
            busy.append({a, b})
    return slots


def gossip_weights(edges: list[tuple[int, int]], n: int, rule: str) -> list[dict[int, float]]:
    """Row ``i`` of the mixing matrix as ``{j: W_ij}`` (self included)."""
    nbrs: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        nbrs[a].add(b)
        nbrs[b].add(a)
    rows = []
    for i in range(n):
        if rule == "uniform":
            w = {j: 1.0 / (len(nbrs[i]) + 1) for j in nbrs[i]}
        else:
            w = {j: 1.0 / (1 + max(len(nbrs[i]), len(nbrs[j]))) for j in nbrs[i]}
        w[i] = 1.0 - sum(w.values())
        rows.append(w)
    return rows


def variance_correct(mixed: list[torch.Tensor], contributions: list[tuple[float, list[torch.Tensor]]]) -> None:
    """In place: rescale each tensor of ``mixed`` around its mean to the weighted mean
    element variance of the contributions (see module docstring)."""
    for k, t in enumerate(mixed):
        if t.numel() < 2:
            continue
        target = sum(w * float(c[k].var(unbiased=False)) for w, c in contributions)
        var = float(t.var(unbiased=False))
        if var > 0 and target > 0:
            mu = t.mean()
            t.sub_(mu).mul_(math.sqrt(target / var)).add_(mu)


# ---------------------------------------------------------------------- algorithm
@dataclass(frozen=True)
class GossipConfig:
    inner_steps: int = 10
    topology: str = "ring"
    degree: int = 4
    weights: str = "metropolis"
    sample_size: int = 0
    variance_correction: bool = False
    final_merge_at: int = 0
    inner_optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        w = "gossip"
        positive("inner_steps", self.inner_steps, what=w)
        positive("lr", self.lr, what=w)
        positive("degree", self.degree, what=w)
        positive("sample_size", self.sample_size, what=w, allow_zero=True)
        positive("final_merge_at", self.final_merge_at, what=w, allow_zero=True)
        positive("weight_decay", self.weight_decay, what=w, allow_zero=True)
        positive("grad_clip", self.grad_clip, what=w, allow_zero=True)
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"gossip: unknown topology {self.topology!r}; accepted: {', '.join(TOPOLOGIES)}")
        if self.weights not in ("metropolis", "uniform"):
            raise ConfigError(f"gossip: weights must be 'metropolis' or 'uniform', got {self.weights!r}")


class Gossip(Algorithm):
    name = "gossip"
    bit_parity = False
    individual_contributions = False

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Any, config: GossipConfig) -> None:
        super().__init__(model, loss_fn, comm, config)
        n = comm.size
        if config.sample_size > n:
            raise ConfigError(f"gossip: sample_size ({config.sample_size}) exceeds the number of peers ({n})")
        self.inner = make_optimizer(config.inner_optimizer, self.params, config.lr, config.weight_decay, what=self.name)
        self._graphs: dict[int, tuple[list[tuple[int, int]], list[list[tuple[int, int]]], list[dict[int, float]]]] = {}
        self.merged = False
        self.last_loss = float("nan")

    def _graph(self) -> tuple[list[tuple[int, int]], list[list[tuple[int, int]]], list[dict[int, float]]]:
        """Edges, slots and mixing rows for the current group size (the swarm's group may change)."""
        n = self.comm.size
        if n not in self._graphs:
            edges = topology_edges(self.config.topology, n, degree=min(self.config.degree, max(n - 1, 1)), seed=self.comm.seed) if n > 1 else []
            self._graphs[n] = (edges, edge_colouring(edges), gossip_weights(edges, n, self.config.weights))
        return self._graphs[n]

    @property
    def edges(self) -> list[tuple[int, int]]:
        return self._graph()[0]

    @property
    def slots(self) -> list[list[tuple[int, int]]]:
        return self._graph()[1]

    @property
    def mixing(self) -> list[dict[int, float]]:
        return self._graph()[2]

    @property
    def sampling(self) -> bool:
        return 0 < self.config.sample_size < self.comm.size

    def in_agreement(self) -> bool:
        return self.merged

    def counters(self) -> dict[str, Any]:
        out = super().counters()
        out["merged"] = int(self.merged)
        return out

    def load_counters(self, counters: dict[str, Any]) -> None:
        super().load_counters(counters)
        self.merged = bool(counters.get("merged", 0))

    def sample(self, round_: int) -> list[int]:
        """Ranks that train in round ``round_`` (all ranks without sampling)."""
        if not self.sampling:
            return list(range(self.comm.size))
        perm = torch.randperm(self.comm.size, generator=generator(self.comm.seed, "gossip-sample", round_)).tolist()
        return sorted(perm[: self.config.sample_size])

    def active(self) -> bool:
        return self.comm.rank in self.sample(self.rounds)

    # ------------------------------------------------------------------ contract
    def local_step(self, batch: Any) -> float:
        if self.sampling and not self.active():
            return float("nan")  # outside this round's sample: no work
        loss = self._inner_step(batch)
        self.last_loss = loss
        return loss

    def _round_due(self, step: int) -> bool:
        return (step + 1) % self.config.inner_steps == 0

    def wants_sync(self, step: int) -> bool:
        return self._round_due(step) or step + 1 == self.config.final_merge_at

    async def sync(self, step: int) -> None:
        if self._round_due(step):
            self.comm.round = self.rounds
            if self.sampling:
                await self._sampled_round()
            else:
                await self._gossip_round()
            self.rounds += 1
        if step + 1 == self.config.final_merge_at:
            avg = await self.comm.all_reduce([p.detach() for p in self.params], name="gossip.final_merge")
            with torch.no_grad():
                for p, a in zip(self.params, avg):
                    p.copy_(a)
            self.merged = True

    async def _exchange_slots(self, slots: list[dict[int, int]], payload: dict[int, bytes], numel: int) -> dict[int, torch.Tensor]:
        """Walk ``slots`` (rank -> partner rank for this slot); exchange ``payload[partner]``
        where matched, skip elsewhere; return the decoded vectors received, by rank."""
        got: dict[int, torch.Tensor] = {}
        me = self.comm.rank
        for slot in slots:
            partner = slot.get(me)
            if partner is None:
                skip_op(self.comm)
                continue
            pid = self.comm.group[partner]
            try:
                vec = await self.comm.exchange_encoded(pid, payload[partner], numel, name=f"{self.name}.exchange")
            except PeerError as exc:  # a dead or unresponsive partner costs its contribution, not the round
                log.info("gossip round %d: no answer from %s (%s); averaging without it", self.rounds, pid, exc)
                continue
            except (CodecError, AggregationError) as exc:  # a malformed vector costs that contribution
                log.warning("gossip round %d: rejected the vector of %s: %s", self.rounds, pid, exc)
                continue
            if vec is not None:
                got[partner] = vec
        return got

    def _mine(self) -> tuple[torch.Tensor, bytes]:
        """Our flat parameters as the others will decode them (we mix what they
        see of us), and their encoding through the run's codec."""
        flat = flatten([p.detach() for p in self.params])
        data = self.comm.encode_tensor(flat)
        return self.comm.as_sent(flat, data), data

    def _mix(self, weights: dict[int, float], vectors: dict[int, torch.Tensor]) -> None:
        """Replace the parameters by sum_j w_j x_j over the peers that answered,
        with the weights renormalised to sum to 1 when some did not."""
        like = [p.detach() for p in self.params]
        if any(j not in vectors for j in weights):
            present = {j: w for j, w in weights.items() if j in vectors}
            total = sum(present.values())
            weights = {j: w / total for j, w in present.items()}
        order = sorted(weights)
        acc = vectors[order[0]] * weights[order[0]]
        for j in order[1:]:
            acc.add_(vectors[j], alpha=weights[j])
        mixed = unflatten(acc, like)
        if self.config.variance_correction:
            variance_correct(mixed, [(weights[j], unflatten(vectors[j], like)) for j in order])
        with torch.no_grad():
            for p, m in zip(self.params, mixed):
                p.copy_(m)

    async def _gossip_round(self) -> None:
        me = self.comm.rank
        slots = [{a: b for a, b in s} | {b: a for a, b in s} for s in self.slots]
        flat, data = self._mine()
        got = await self._exchange_slots(slots, {j: data for j in range(self.comm.size)}, flat.numel())
        got[me] = flat
        self._mix(self.mixing[me], got)

    async def _sampled_round(self) -> None:
        me, s = self.comm.rank, self.config.sample_size
        members = self.sample(self.rounds)
        nxt = self.sample(self.rounds + 1)
        complete = [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
        slots = [{a: b for a, b in m} | {b: a for a, b in m} for m in edge_colouring(complete)]
        numel = sum(p.numel() for p in self.params)
        if me in members:
            flat, data = self._mine()
            got = await self._exchange_slots(slots, {j: data for j in members}, numel)
            got[me] = flat
            self._mix({j: 1.0 / s for j in members}, got)
        else:
            for _ in slots:
                skip_op(self.comm)
        # hand the sample's model to the newcomers of the next round
        newcomers = [j for j in nxt if j not in members]
        handoff: list[dict[int, int]] = []
        for k in range(0, len(newcomers), s):
            pairs = {newcomers[m]: members[m - k] for m in range(k, min(k + s, len(newcomers)))}
            handoff.append(pairs | {v: u for u, v in pairs.items()})
        payload: dict[int, bytes] = {}
        if me in members:
            _, data = self._mine()
            payload = {j: data for j in newcomers}
        else:
            payload = {j: b"" for j in members}
        got = await self._exchange_slots(handoff, payload, numel)
        if me in newcomers and got:
            (vec,) = got.values()
            with torch.no_grad():
                for p, v in zip(self.params, unflatten(vec, [p.detach() for p in self.params])):
                    p.copy_(v)

    def shared_state(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.params]


__all__ = [
    "Gossip",
    "GossipConfig",
    "TOPOLOGIES",
    "edge_colouring",
    "gossip_weights",
    "skip_op",
    "topology_edges",
    "variance_correct",
]

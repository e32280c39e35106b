"""NoLoCo (Kolehmainen et al. 2025, "NoLoCo: No-all-reduce Low Communication
Training Method for Large Models", arXiv:2506.10911).

DiLoCo-style local steps, but no collective over all peers: at each outer step
a peer meets ONE other peer and the two update their outer (slow) weights
with a Nesterov step that also pulls them towards each other. For peer ``i``
with outer weights ``phi_i``, local weights ``theta_i`` after ``H`` inner
steps, and group ``G = {i, j}`` (``|G| = 2``):

    Delta_k  = phi_k - theta_k                                      (local outer gradient, k in G)
    delta_i <- alpha delta_i - (beta/|G|) sum_{k in G} Delta_k
                             - gamma (phi_i - (1/|G|) sum_{k in G} phi_k)
    phi_i   <- phi_i + delta_i ;   theta_i <- phi_i

(``alpha``: outer momentum, ``beta``: outer learning rate, ``gamma``: the
pull between the pair's weights that keeps replicas from drifting apart.)
With ``alpha = 0, beta = gamma = 1`` the rule is plain pairwise averaging of
the local weights, ``phi_i <- (theta_i + theta_j) / 2`` (tested).

Wire. The partner's terms enter only through
``u_j = (beta - gamma) phi_j - beta theta_j``:

    delta_i <- alpha delta_i - (beta/2) (phi_i - theta_i) - (gamma/2) phi_i - (1/2) u_j

so each peer sends ONE model-sized vector per outer step (through the run's codec,
raw fp32 by default) through ``comm.exchange``: ``|theta|`` bytes per peer per round,
against ``2 (n-1)/n |theta|`` for DiLoCo's all-reduce, and no step involves
more than two peers. The run's record holds no all-reduce.

Pairing. Round ``r`` pairs the peers by a random permutation drawn from
``generator(comm.seed, "noloco-pairs", r)`` (the same on every peer): ranks
``perm[0]-perm[1]``, ``perm[2]-perm[3]``, ... With an odd number of peers
the last one in the permutation sits the round out: it applies the rule with
``G = {i}`` (its own outer step, no pull) and spends its operation id without
sending (so every peer issues exactly one exchange-or-skip per round and op
ids stay aligned).

Defaults: ``alpha = 0.5, beta = 0.7, gamma = 0.5``; these are ours (tuned on
the quadratic and charlm tasks), not a copy of the paper's table. The paper
also re-routes pipeline activations between replicas; gossamer trains whole
models per peer, so that part does not apply.

State. Replicas differ by design (``bit_parity = False``); ``shared_state()``
is the peer's own outer weights ``phi_i`` and outer momentum ``delta_i``,
``eval_model()`` the outer weights; the runner
evaluates peer 0's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..comm import flatten, unflatten
from ..errors import AggregationError
from ..seeding import generator
from .base import Algorithm, make_optimizer, positive
from .gossip import skip_op


@dataclass(frozen=True)
class NoLoCoConfig:
    inner_steps: int = 100
    inner_optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    outer_lr: float = 0.7
    outer_momentum: float = 0.5
    gamma: float = 0.5

    def __post_init__(self) -> None:
        w = "noloco"
        positive("inner_steps", self.inner_steps, what=w)
        positive("lr", self.lr, what=w)
        positive("outer_lr", self.outer_lr, what=w)
        positive("outer_momentum", self.outer_momentum, what=w, allow_zero=True)
        positive("gamma", self.gamma, what=w, allow_zero=True)
        positive("weight_decay", self.weight_decay, what=w, allow_zero=True)
        positive("grad_clip", self.grad_clip, what=w, allow_zero=True)


def random_pairs(n: int, seed: int, round_: int, tag: str = "noloco-pairs") -> list[tuple[int, int]]:
    """The round's seeded random matching of ranks ``0..n-1`` (odd one out left unmatched)."""
    perm = torch.randperm(n, generator=generator(seed, tag, round_)).tolist()
    return [(perm[k], perm[k + 1]) for k in range(0, n - 1, 2)]


class NoLoCo(Algorithm):
    name = "noloco"
    bit_parity = False
    individual_contributions = False

    def __init__(self, model: torch.nn.Module, loss_fn: Any, comm: Any, config: NoLoCoConfig) -> None:
        super().__init__(model, loss_fn, comm, config)
        self.phi = [p.detach().clone() for p in self.params]
        self.delta = [torch.zeros_like(p) for p in self.phi]
        self.inner = make_optimizer(config.inner_optimizer, self.params, config.lr, config.weight_decay, what=self.name)
        self.partners: list[str | None] = []

    def local_step(self, batch: Any) -> float:
        return self._inner_step(batch)

    def wants_sync(self, step: int) -> bool:
        return (step + 1) % self.config.inner_steps == 0

    def partner_of(self, round_: int) -> str | None:
        for a, b in random_pairs(self.comm.size, self.comm.seed, round_):
            if self.comm.rank in (a, b):
                return self.comm.group[b if a == self.comm.rank else a]
        return None

    async def sync(self, step: int) -> None:
        a, b, g = self.config.outer_momentum, self.config.outer_lr, self.config.gamma
        theta = [p.detach() for p in self.params]
        self.comm.round = self.rounds
        partner = self.partner_of(self.rounds)
        self.partners.append(partner)
        # Never hold torch.no_grad() across an await: grad mode is global to the
        # thread, and the other simulated peers run while this one waits.
        u_j: list[torch.Tensor] | None = None
        if partner is None:
            skip_op(self.comm)
        else:
            with torch.no_grad():
                u = flatten([(b - g) * f - b * t for f, t in zip(self.phi, theta)])
            vec = await self.comm.exchange_encoded(partner, self.comm.encode_tensor(u), u.numel(), name="noloco.pair")
            if vec is None:
                raise AggregationError(f"noloco: partner {partner!r} sent an empty vector in round {self.rounds}")
            u_j = unflatten(vec, self.phi)
        with torch.no_grad():
            if u_j is None:
                # G = {i}: the pull term vanishes
                for d, f, t in zip(self.delta, self.phi, theta):
                    d.mul_(a).sub_(f - t, alpha=b)
            else:
                for d, f, t, uj in zip(self.delta, self.phi, theta, u_j):
                    d.mul_(a).sub_(f - t, alpha=b / 2).sub_(f, alpha=g / 2).sub_(uj, alpha=0.5)
            for f, d, p in zip(self.phi, self.delta, self.params):
                f.add_(d)
                p.copy_(f)
        self.rounds += 1

    def shared_state(self) -> list[torch.Tensor]:
        return list(self.phi) + list(self.delta)

    def reset_local(self) -> None:
        super().reset_local()
        with torch.no_grad():
            for p, f in zip(self.params, self.phi):
                p.copy_(f)

    def eval_model(self) -> torch.nn.Module:
        return self._model_with(self.phi)

    ends_with_sync = True


__all__ = ["NoLoCo", "NoLoCoConfig", "random_pairs"]

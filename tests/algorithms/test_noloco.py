"""NoLoCo: converges without any all-reduce, pairs are a seeded matching, the rule's special case."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.algorithms import make_algorithm
from gossamer.algorithms.noloco import random_pairs
from gossamer.comm import Communicator
from gossamer.tasks import make_task
from gossamer.transport.sim import LinkSpec, SimNetwork
from swarm_driver import drive


def run_swarm(task, n=4, steps=40, **options):
    """``n`` simulated noloco peers driven like the runner; returns the algorithms."""
    return drive(task, "noloco", n, steps, **options)[0]


@pytest.fixture(scope="module")
def quadratic():
    return make_task("quadratic")


@pytest.mark.parametrize("n", [4, 5])
def test_converges_on_quadratic_without_any_all_reduce(quadratic, n):
    algos = run_swarm(quadratic, n=n, steps=300, inner_steps=5, lr=0.02, grad_clip=0.0)
    start = quadratic.evaluate(quadratic.make_model(0))[1]
    finals = [quadratic.evaluate(a.eval_model())[1] for a in algos]
    assert max(finals) < 0.02 < start, (start, finals)
    rounds = 300 // 5
    for a in algos:
        names = {h.name for h in a.comm.history}
        assert names == {"noloco.pair"}  # no all_reduce, no all_gather: pairwise only
        c = a.comm.transport.counters.sent
        # one message (one model-sized vector) per round in which the peer was paired
        paired = sum(p is not None for p in a.partners)
        assert c.messages == paired and c.payload == paired * 4 * 32
        assert len(a.partners) == rounds
        if n % 2 == 0:
            assert paired == rounds
    # with an odd number of peers exactly one sits out each round
    assert sum(a.partners.count(None) for a in algos) == (rounds if n % 2 else 0)
    # replicas differ (no all-reduce), but stay close to each other
    assert not torch.equal(algos[0].phi[0], algos[1].phi[0])


def test_pairs_are_a_seeded_matching_that_changes_per_round():
    for n in (2, 7, 8):
        seen = set()
        for r in range(20):
            pairs = random_pairs(n, seed=3, round_=r)
            ranks = [x for p in pairs for x in p]
            assert len(ranks) == len(set(ranks)) == 2 * (n // 2)
            assert pairs == random_pairs(n, seed=3, round_=r)
            seen.add(tuple(sorted(map(tuple, map(sorted, pairs)))))
        assert n == 2 or len(seen) > 5


def test_beta_gamma_one_momentum_zero_is_pairwise_averaging(quadratic):
    """alpha=0, beta=gamma=1: phi_i <- (theta_i + theta_j) / 2 on both peers."""
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = ["a", "b"]
    algos = [
        make_algorithm("noloco", quadratic.make_model(0), quadratic.loss, Communicator(net.add_peer(p), ids),
                       inner_steps=3, outer_momentum=0.0, outer_lr=1.0, gamma=1.0, lr=0.05, grad_clip=0.0)
        for p in ids
    ]
    shards = [quadratic.shard(i, 2, seed=0) for i in range(2)]
    thetas = {}

    async def loop(algo, shard):
        for step in range(3):
            algo.local_step(shard.next_batch())
        thetas[algo.comm.peer_id] = algo.params[0].detach().clone()
        await algo.sync(2)

    async def main():
        await asyncio.gather(*(loop(a, s) for a, s in zip(algos, shards)))

    asyncio.run(main())
    expected = (thetas["a"] + thetas["b"]) / 2
    assert not torch.equal(thetas["a"], thetas["b"])
    for a in algos:
        torch.testing.assert_close(a.phi[0], expected, rtol=0, atol=1e-6)
        assert torch.equal(a.params[0].detach(), a.phi[0])


def test_noloco_declares_no_bit_parity():
    from gossamer.algorithms.noloco import NoLoCo

    assert NoLoCo.bit_parity is False

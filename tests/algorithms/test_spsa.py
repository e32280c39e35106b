"""Shared-seed SPSA: one byte per peer per step, bit-identical peers, replay for joiners."""

from __future__ import annotations

import pytest
import torch

from gossamer.algorithms import make_algorithm
from gossamer.algorithms.spsa import quantize
from gossamer.comm import Communicator
from gossamer.tasks import make_task
from gossamer.transport.sim import LinkSpec, SimNetwork
from gossamer.verify import state_hash
from swarm_driver import drive

OPTIONS = {"lr": 0.01, "eps": 1e-3, "byte_scale": 0.5}


def run_swarm(task, n=4, steps=40, **options):
    """``n`` simulated spsa peers driven like the runner; returns (algorithms, hashes per peer)."""
    algos, records = drive(task, "spsa", n, steps, **options)
    return algos, {pid: r["hashes"] for pid, r in records.items()}


@pytest.fixture(scope="module")
def quadratic():
    return make_task("quadratic")


@pytest.fixture(scope="module")
def swarm(quadratic):
    return run_swarm(quadratic, n=4, steps=300, **OPTIONS)


def test_converges_on_quadratic_and_every_peer_is_bit_identical(quadratic, swarm):
    algos, hashes = swarm
    start = quadratic.evaluate(quadratic.make_model(0))[1]
    final = quadratic.evaluate(algos[0].eval_model())[1]
    assert final < 0.1 * start, (start, final)
    assert len(hashes["p0"]) == 300 and all(h == hashes["p0"] for h in hashes.values())


def test_payload_is_exactly_one_byte_per_step_per_destination(swarm):
    algos, _ = swarm
    n, steps = 4, 300
    for a in algos:
        c = a.comm.transport.counters
        assert c.sent.payload == steps * (n - 1)
        assert c.sent.messages == steps * (n - 1)
        assert c.received.payload == steps * (n - 1)
        for dst in a.comm.group:
            if dst != a.comm.peer_id:
                assert c.sent_to[dst].payload == steps
        assert {h.name for h in a.comm.history} == {"spsa.byte"}


def test_fresh_model_plus_replay_equals_a_peer_bit_for_bit(quadratic, swarm):
    algos, _ = swarm
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    joiner = make_algorithm("spsa", quadratic.make_model(0), quadratic.loss,
                            Communicator(net.add_peer("p0"), [f"p{i}" for i in range(4)], seed=0), **OPTIONS)
    assert state_hash(joiner.shared_state()) != state_hash(algos[2].shared_state())
    joiner.replay(algos[2].log)
    assert state_hash(joiner.shared_state()) == state_hash(algos[2].shared_state())
    assert joiner.t == 300
    # the log is what crossed the wire: n one-byte entries per step
    assert len(algos[2].log) == 4 * 300 and all(-127 <= b <= 127 for _, _, b in algos[2].log)


def test_no_backward_pass_and_exact_restore_after_perturbation(quadratic):
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    algo = make_algorithm("spsa", quadratic.make_model(0), quadratic.loss, Communicator(net.add_peer("a"), ["a"]), **OPTIONS)
    before = algo.params[0].detach().clone()
    algo.local_step(quadratic.shard(0, 1, seed=0).next_batch())
    assert torch.equal(algo.params[0].detach(), before)  # w + eps z, w - eps z, then w exactly
    assert algo.params[0].grad is None


def test_quantizer_is_clipped_round_to_nearest_int8():
    assert quantize(0.26, 0.5) == 1 and quantize(-0.74, 0.5) == -1
    assert quantize(1e9, 0.5) == 127 and quantize(-1e9, 0.5) == -127
    assert quantize(float("nan"), 0.5) == 0

"""Algorithm state as data: ``state_dict()`` / ``load_state_dict()`` on every
algorithm hold everything a retried sync, a joiner or a restarted peer needs."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gossamer.algorithms import ALGORITHM_NAMES, make_algorithm
from gossamer.comm import Communicator, make_run_codec
from gossamer.errors import ConfigError
from gossamer.tasks import make_task
from gossamer.transport.sim import LinkSpec, SimNetwork

OPTIONS = {"ddp": {}, "fedavg": {"inner_steps": 2}, "diloco": {"inner_steps": 2, "schedule": "cosine", "total_steps": 40},
           "streaming_diloco": {"inner_steps": 4, "fragments": 2, "tau": 1}, "noloco": {"inner_steps": 2},
           "spsa": {}, "gossip": {"inner_steps": 2}}


def _peers(name, n=2, codec="none"):
    task = make_task("digits")
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    algos = [make_algorithm(name, task.make_model(0), task.loss,
                            Communicator(net.add_peer(pid), ids, seed=3, codec=make_run_codec(codec)), **OPTIONS[name])
             for pid in ids]
    shards = [task.shard(i, n, seed=0) for i in range(n)]
    return algos, shards


async def _advance(algos, shards, steps):
    """Every peer takes ``steps`` local steps, syncing where due (all peers together)."""
    for _ in range(steps):
        for a, s in zip(algos, shards):
            a.step(s.next_batch())
        due = [a.sync_due(10_000) for a in algos]
        assert len(set(due)) == 1
        if due[0]:
            await asyncio.gather(*(a.synchronize() for a in algos))


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_a_restored_sync_repeats_exactly(name):
    """Snapshot, sync, load the snapshot, sync again: the same shared state (what
    the swarm does when an attempt aborts)."""
    algos, shards = _peers(name)

    async def main():
        await _advance(algos, shards, 5)
        # step until a sync is due, then snapshot before it
        while True:
            for a, s in zip(algos, shards):
                a.step(s.next_batch())
            if algos[0].sync_due(10_000):
                break
        snaps = [a.state_dict() for a in algos]
        await asyncio.gather(*(a.synchronize() for a in algos))
        first = [a.shared_hash() for a in algos]
        for a, sd in zip(algos, snaps):
            a.load_state_dict(sd)
        assert [a.state_dict()["shared"]["counters"] for a in algos] == [sd["shared"]["counters"] for sd in snaps]
        await asyncio.gather(*(a.synchronize() for a in algos))
        return first, [a.shared_hash() for a in algos]

    first, again = asyncio.run(main())
    assert first == again


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_shared_state_loads_into_a_fresh_peer(name):
    """A fresh peer that loads another's shared part (a joiner) hashes the same,
    takes its counters, and starts its local model from the shared one."""
    algos, shards = _peers(name)
    asyncio.run(_advance(algos, shards, 6))
    fresh, _ = _peers(name)
    joiner = fresh[0]
    joiner.load_state_dict({"shared": algos[0].state_dict()["shared"]})
    assert joiner.shared_hash() == algos[0].shared_hash()
    assert joiner.steps == algos[0].steps == 6 and joiner.syncs == algos[0].syncs
    # the local model starts from the shared one: its evaluation model equals the source's
    a = [p.detach() for p in algos[0].eval_model().parameters()]
    b = [p.detach() for p in joiner.eval_model().parameters()]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_joiner_takes_the_schedule_position():
    algos, shards = _peers("diloco")
    asyncio.run(_advance(algos, shards, 10))
    joiner = _peers("diloco")[0][0]
    joiner.load_state_dict({"shared": algos[0].state_dict()["shared"]})
    assert joiner.inner.param_groups[0]["lr"] == algos[0].inner.param_groups[0]["lr"] < 1e-3


def test_a_state_of_another_model_is_refused():
    algos, _ = _peers("diloco")
    sd = algos[0].state_dict()
    sd["shared"]["tensors"][0] = torch.zeros(3)
    with pytest.raises(ConfigError, match="shared tensor 0"):
        algos[1].load_state_dict(sd)

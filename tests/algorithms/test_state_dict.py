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
           "spsa": {}, "gossip": {"inner_steps": 2}, "sparseloco": {"inner_steps": 2}}


def _peers(name, n=2, codec="none"):
    task = make_task("digits")
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    ids = [f"p{i}" for i in range(n)]
    if name == "sparseloco" and codec == "none":  # it refuses a codec without error feedback
        codec = "ctopk:16:256:2bit+ef:0.9"
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


async def _restored_sync_repeats(algos, shards, reload=lambda sd: sd):
    """Advance, snapshot right before a sync, sync, load the snapshot (passed
    through ``reload``), sync again; returns the shared hashes of both syncs."""
    await _advance(algos, shards, 5)
    # step until a sync is due, then snapshot before it
    while True:
        for a, s in zip(algos, shards):
            a.step(s.next_batch())
        if algos[0].sync_due(10_000):
            break
    snaps = [a.state_dict() for a in algos]
    for a in algos:  # an attempt, as the swarm runs it: a fresh namespace, op ids from 0
        a.comm.regroup(a.comm.group, epoch=1)
    await asyncio.gather(*(a.synchronize() for a in algos))
    first = [a.shared_hash() for a in algos]
    first_local = [a.state_dict()["local"] for a in algos]
    for a, sd in zip(algos, snaps):
        a.load_state_dict(reload(sd))
        a.comm.regroup(a.comm.group, epoch=2)  # the retry: the same op ids, so the same shared seeds
    assert [a.state_dict()["shared"]["counters"] for a in algos] == [sd["shared"]["counters"] for sd in snaps]
    await asyncio.gather(*(a.synchronize() for a in algos))
    # the local state (codec memory included) repeats too
    assert all(_same(x, a.state_dict()["local"]) for x, a in zip(first_local, algos))
    return first, [a.shared_hash() for a in algos]


def _same(a, b) -> bool:
    """Structural equality, tensors compared bit for bit (lists and tuples alike)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_a_restored_sync_repeats_exactly(name):
    """Snapshot, sync, load the snapshot, sync again: the same shared state (what
    the swarm does when an attempt aborts)."""
    algos, shards = _peers(name)
    first, again = asyncio.run(_restored_sync_repeats(algos, shards))
    assert first == again


FEEDBACK_CASES = [("diloco", "int8+ef"), ("diloco", "topk:0.1+ef21"), ("fedavg", "int8+econtrol"),
                  ("ddp", "int8+ef"), ("streaming_diloco", "int8+ef"), ("streaming_diloco", "topk:0.1+ef21"),
                  ("diloco", "powersgd:2:warm+ef"), ("sparseloco", "ctopk:16:256:1bit+ef:0.9"),
                  ("sparseloco", "crandk:64:256+ef")]


@pytest.mark.parametrize("name,codec", FEEDBACK_CASES)
def test_a_restored_sync_repeats_exactly_with_error_feedback(name, codec):
    """Issue 10.2: the codec's error-feedback memory is part of the local state,
    so loading the snapshot also rolls it back and the retried sync repeats."""
    algos, shards = _peers(name, n=3, codec=codec)
    first, again = asyncio.run(_restored_sync_repeats(algos, shards))
    assert len(set(first)) == 1  # bit parity
    assert first == again
    assert "comm" in algos[0].state_dict()["local"]


@pytest.mark.parametrize("name,codec", [("diloco", "int8+ef"), ("ddp", "topk:0.1+econtrol")])
def test_error_feedback_memory_survives_a_checkpoint(name, codec, tmp_path):
    """The memory is plain data: a peer checkpoint (safetensors + JSON) holds it
    and a resumed peer repeats the sync exactly."""
    from gossamer.swarm.checkpoint import load_checkpoint, save_checkpoint

    algos, shards = _peers(name, n=2, codec=codec)

    def through_disk(sd):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        save_checkpoint(folder, sd, {"round": 0})
        return load_checkpoint(folder)[0]

    first, again = asyncio.run(_restored_sync_repeats(algos, shards, reload=through_disk))
    assert first == again


def test_a_joiner_starts_with_fresh_codec_memory():
    """A peer that loads only the shared part (a joiner) forgets any codec
    memory it had: its communicator equals a fresh one."""
    algos, shards = _peers("diloco", n=2, codec="int8+ef21")
    asyncio.run(_advance(algos, shards, 6))
    fresh = _peers("diloco", n=2, codec="int8+ef21")[0][0]
    assert algos[1].comm.state_dict() != fresh.comm.state_dict()
    algos[1].load_state_dict({"shared": algos[0].state_dict()["shared"]})
    assert repr(algos[1].comm.state_dict()) == repr(fresh.comm.state_dict())


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


def test_sparseloco_refuses_a_codec_without_its_accumulator_even_alone():
    """A swarm peer starts in a group of one: the check must not depend on the group size."""
    from gossamer.cli import main

    task = make_task("digits")
    net = SimNetwork(LinkSpec.parse("1gbit,1ms"))
    for spec in ("int8", "ctopk:16:256", "ctopk:16:256+ef21", "none"):
        comm = Communicator(net.add_peer(f"alone-{spec}"), [f"alone-{spec}"], codec=make_run_codec(spec))
        with pytest.raises(ConfigError, match=r"\+ef or \+ef:BETA"):
            make_algorithm("sparseloco", task.make_model(0), task.loss, comm)
    # the simulator refuses before any run starts (ddp would otherwise train first)
    assert main(["simulate", "--task", "digits", "--algorithms", "ddp,sparseloco", "--codec", "int8",
                 "--peers", "2", "--steps", "100000"]) == 2
    # a swarm peer refuses it before it connects (nothing listens on port 9)
    assert main(["peer", "--coordinator", "127.0.0.1:9", "--task", "digits", "--algorithm", "sparseloco",
                 "--codec", "ctopk:32:1024", "--steps", "10"]) == 2

"""One driver for algorithm tests: ``n`` simulated peers run exactly like the
simulator's runner runs them (local steps, syncs when asked, a final sync for
algorithms that end with one), without its evaluation and reporting."""

from __future__ import annotations

import asyncio

from gossamer.algorithms import make_algorithm
from gossamer.comm import Communicator
from gossamer.transport.sim import LinkSpec, SimNetwork
from gossamer.verify import state_hash


def drive(task, algorithm, n=4, steps=40, *, seed=0, link="1gbit,1ms", compute=0.0, kill_at=None, **options):
    """Return the peers' algorithms and, per peer id, the state hash and bytes sent of every sync.

    ``kill_at`` maps a step to peer ids that die after it: their loops stop and
    the simulated network fails every message to or from them (a real crash)."""
    kill_at = kill_at or {}
    net = SimNetwork(LinkSpec.parse(link))
    ids = [f"p{i}" for i in range(n)]
    peers = []
    for i, pid in enumerate(ids):
        comm = Communicator(net.add_peer(pid), ids, seed=seed)
        peers.append((make_algorithm(algorithm, task.make_model(seed), task.loss, comm, **options), task.shard(i, n, seed=seed)))
    records = {pid: {"hashes": [], "round_bytes": []} for pid in ids}

    async def loop(pid, algo, shard):
        tr, before = algo.comm.transport, 0
        for step in range(steps):
            algo.local_step(shard.next_batch())
            if compute:
                tr.compute(compute)
            if algo.wants_sync(step) or (step == steps - 1 and algo.ends_with_sync):
                await algo.sync(step)
                records[pid]["hashes"].append(state_hash(algo.shared_state()))
                records[pid]["round_bytes"].append(tr.counters.sent.total - before)
                before = tr.counters.sent.total
            if pid in kill_at.get(step, ()):
                net.kill(pid)
                return
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(loop(pid, a, s) for pid, (a, s) in zip(ids, peers)))

    asyncio.run(main())
    return [a for a, _ in peers], records

"""One driver for algorithm tests: ``n`` simulated peers run through the one
round loop (``gossamer.algorithms.driver.RoundLoop``), exactly as the
simulator runs them, without its evaluation and reporting."""

from __future__ import annotations

import asyncio

from gossamer.algorithms import ALGORITHMS, make_algorithm
from gossamer.algorithms.driver import RoundLoop
from gossamer.comm import Communicator, make_run_codec
from gossamer.transport.sim import LinkSpec, SimNetwork


def drive(task, algorithm, n=4, steps=40, *, seed=0, link="1gbit,1ms", compute=0.0, kill_at=None, codec=None, **options):
    """Return the peers' algorithms and, per peer id, the state hash and bytes sent of every sync.

    ``codec``: the run's codec spec (default: raw fp32, except for algorithms
    whose payload is defined by a codec, e.g. streaming_diloco's int4).
    ``kill_at`` maps a step to peer ids that die after it: their loops stop and
    the simulated network fails every message to or from them (a real crash)."""
    kill_at = kill_at or {}
    if codec is None:
        codec = ALGORITHMS[algorithm][0].default_codec if algorithm == "streaming_diloco" else "none"
    net = SimNetwork(LinkSpec.parse(link))
    ids = [f"p{i}" for i in range(n)]
    records = {pid: {"hashes": [], "round_bytes": []} for pid in ids}

    class TestLoop(RoundLoop):
        def __init__(self, pid, algo, shard):
            super().__init__(algo, shard.next_batch, steps)
            self.pid, self.before, self.dead = pid, 0, False

        async def local_step(self, batch):
            loss = self.algo.step(batch)
            if compute:
                self.algo.comm.transport.compute(compute)
            return loss

        def after_sync(self):
            tr = self.algo.comm.transport
            records[self.pid]["hashes"].append(self.algo.shared_hash())
            records[self.pid]["round_bytes"].append(tr.counters.sent.total - self.before)
            self.before = tr.counters.sent.total

        def after_step(self, loss):
            if self.pid in kill_at.get(self.algo.steps - 1, ()):
                net.kill(self.pid)
                self.dead = True

        def stopping(self):
            return self.dead

    loops = []
    for i, pid in enumerate(ids):
        comm = Communicator(net.add_peer(pid), ids, seed=seed, codec=make_run_codec(codec))
        algo = make_algorithm(algorithm, task.make_model(seed), task.loss, comm, **options)
        loops.append(TestLoop(pid, algo, task.shard(i, n, seed=seed)))

    async def main():
        await asyncio.gather(*(loop.run() for loop in loops))

    asyncio.run(main())
    return [loop.algo for loop in loops], records

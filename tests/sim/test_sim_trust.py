"""The simulator's trust session reaches the same exclusions as a real swarm over TCP, for the same seed."""

from __future__ import annotations

import asyncio

import pytest

from gossamer.errors import ConfigError
from gossamer.sim.runner import run_algorithm
from gossamer.sim.scenario import Scenario
from gossamer.swarm import Coordinator, Peer
from gossamer.tasks import make_task
from gossamer.transport.identity import Identity

N, ROUNDS = 5, 6


def tcp_exclusions(attack, ids):
    task = make_task("digits")

    async def main():
        coord = await Coordinator.start(Identity.generate(), "simtrust", "127.0.0.1", 0, min_peers=N)
        addr = f"127.0.0.1:{coord.address[1]}"
        peers = [Peer(task.make_model(0), task.loss, coordinator=addr, swarm_id="simtrust", identity=ident,
                      algorithm="ddp", audit=1, deadline_floor=10.0, attack=attack if k == N - 1 else None)
                 for k, ident in enumerate(ids)]

        async def one(k, p):
            try:
                return await p.run(iter(task.shard(k, N, seed=0).next_batch, None), steps=ROUNDS)
            except Exception as exc:  # the excluded attacker
                return exc

        try:
            reports = await asyncio.gather(*(one(k, p) for k, p in enumerate(peers)))
            return {d["peer"]: d["round"] for d in coord.trust.decisions}, reports
        finally:
            await coord.close()

    return asyncio.run(main())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("attack", ["tamper", "ipm", "hashlie"])
def test_simulator_and_tcp_exclude_the_same_peer_in_the_same_round(attack):
    ids = sorted((Identity.generate() for _ in range(N)), key=lambda i: i.peer_id)
    tcp, reports = tcp_exclusions(attack, ids)
    scenario = Scenario(task="digits", algorithms=("ddp",), peers=N, steps=ROUNDS, byzantine=1, attack=attack,
                        audit=1, collude=True, tolerate=0, evals=1, peer_ids=tuple(i.peer_id for i in ids))
    sim = run_algorithm(scenario, "ddp")
    assert tcp == sim.extra["excluded"] == {ids[-1].peer_id: tcp[ids[-1].peer_id]}
    # and the honest peers end in the same state in both runtimes
    honest_tcp = {r.final_state_hash for r in reports[:-1]}
    assert honest_tcp == {sim.extra["final_state_hash"]}


def test_protocol_attacks_need_the_audit_and_withhold_needs_real_time():
    with pytest.raises(ConfigError, match="--audit"):
        Scenario(task="digits", algorithms=("ddp",), peers=4, byzantine=1, attack="tamper")
    with pytest.raises(ConfigError, match="deadlines"):
        Scenario(task="digits", algorithms=("ddp",), peers=4, byzantine=1, attack="withhold", audit=1)
    with pytest.raises(ConfigError, match="audit"):
        Scenario(task="digits", algorithms=("ddp",), peers=4, audit=-1)

"""Rehearse your own training loop on a simulated network before renting anything.

    python examples/own_loop_simulated.py

Four peers, each your own loop and torch optimizer (one thread per peer),
synced by DiLoCo and by SparseLoCo over modelled 20 Mbit/s links with 40 ms
latency. Prints the bytes each peer sent and the simulated wall-clock time,
with 50 ms of compute charged per step.
"""
import torch
from sklearn.datasets import load_digits

import gossamer

PEERS, STEPS = 4, 120
x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)


def rehearse(algorithm: str, **options) -> None:
    swarm = gossamer.SimulatedSwarm(PEERS, algorithm=algorithm, link="20mbit,40ms", total_steps=STEPS,
                                    compute_time=0.05, seed=0, **options)
    accuracy = {}

    def train(rank: int) -> None:  # runs in one thread per peer
        torch.manual_seed(0)  # safe: ranks build their models one at a time
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        opt = swarm.optimizer(rank, model, torch.optim.AdamW(model.parameters(), lr=3e-3))
        mine = torch.arange(len(y))[rank::PEERS]
        g = torch.Generator().manual_seed(rank)
        for _ in range(STEPS):
            idx = mine[torch.randint(0, len(mine), (32,), generator=g)]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad()
        with torch.no_grad():
            accuracy[rank] = (model(x).argmax(1) == y).float().mean().item()

    report = swarm.run(train)
    swarm.close()
    print(f"{algorithm:11s} codec {report.codec:28s} {max(report.bytes_sent) / 1e3:8.1f} kB sent per peer, "
          f"{max(report.sim_time_s):6.2f} s simulated, accuracy {accuracy[0]:.1%}, "
          f"peers agree: {report.in_agreement}")


rehearse("diloco", inner_steps=20)
rehearse("sparseloco", inner_steps=20, codec="ctopk:16:1024:2bit+ef:0.95")

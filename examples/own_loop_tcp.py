"""Your own model, data, loop and torch optimizer; two peer processes over real TCP.

    python examples/own_loop_tcp.py

starts a coordinator inside this process (gossamer.LocalCoordinator) and two
peer processes (this file with --peer), each training a small MLP on its own
half of scikit-learn's digits with plain torch.optim.Adam, synced by DiLoCo
every 20 steps. On separate machines, run `gossamer coordinator` on one and
`python examples/own_loop_tcp.py --peer RANK HOST:PORT` on each of the others.
"""
import subprocess
import sys

import torch
from sklearn.datasets import load_digits

import gossamer

STEPS, INNER = 200, 20


def peer(rank: int, coordinator: str) -> None:
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    mine = torch.arange(len(y)) % 2 == rank  # this peer's half of the data
    train_x, train_y = x[mine][:-100], y[mine][:-100]
    test_x, test_y = x[mine][-100:], y[mine][-100:]
    torch.manual_seed(0)  # the same initial model on every peer
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = gossamer.Optimizer(model, torch.optim.Adam(model.parameters(), lr=1e-2), coordinator=coordinator,
                             algorithm="diloco", inner_steps=INNER, total_steps=STEPS)
    g = torch.Generator().manual_seed(rank)
    while opt.steps < STEPS:
        idx = torch.randint(0, len(train_y), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    opt.close()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    r = opt.report
    print(f"peer {rank}: {r.rounds_completed} rounds, {r.bytes_sent / 1e3:.1f} kB sent, "
          f"held-out accuracy {accuracy:.1%}, shared state {r.final_state_hash[:12]}", flush=True)


def main() -> None:
    with gossamer.LocalCoordinator(min_peers=2) as coordinator:
        print(f"coordinator at {coordinator.address}", flush=True)
        peers = [subprocess.Popen([sys.executable, __file__, "--peer", str(r), coordinator.address]) for r in (0, 1)]
        codes = [p.wait(timeout=300) for p in peers]
    if any(codes):
        sys.exit(f"a peer failed (exit codes {codes})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peer"]:
        peer(int(sys.argv[2]), sys.argv[3])
    else:
        main()

"""Stop a whole swarm, then resume it from the peers' checkpoints: no committed round is redone.

    python examples/resume_from_checkpoint.py

Two peers (threads here; processes or machines work the same) train a small
regression model with their own loop, writing a checkpoint after every
committed round. Halfway through everything stops, the coordinator too.
A fresh coordinator and the same peers with resume= then go on from the
round they had committed, with their own optimizer state restored.
"""
import tempfile
import threading
from pathlib import Path

import torch

import gossamer

STEPS, INNER = 80, 10


def data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(256, 16, generator=g)
    return x, x @ torch.linspace(-1, 1, 16).unsqueeze(1)


def train(rank: int, model: torch.nn.Module, coordinator: str, folder: Path, stop_at: int, resume: bool) -> None:
    opt = gossamer.Optimizer(model, torch.optim.AdamW(model.parameters(), lr=3e-2), coordinator=coordinator,
                             algorithm="diloco", inner_steps=INNER, total_steps=STEPS, key=str(folder / "key.pem"),
                             checkpoint=folder, resume=folder if resume else None)
    print(f"peer {rank}: {'resumed' if resume else 'started'} at step {opt.steps}", flush=True)
    x, y = data(rank)
    while opt.steps < stop_at:
        i = opt.steps % 8
        loss = torch.nn.functional.mse_loss(model(x[32 * i: 32 * i + 32]), y[32 * i: 32 * i + 32])
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    opt.close()  # leaves the swarm; the checkpoint of the last committed round is on disk
    print(f"peer {rank}: stopped at step {opt.steps}, {opt.round} rounds committed, loss {loss.item():.4f}, "
          f"shared state {opt.report.final_state_hash[:12]}", flush=True)


def phase(models: list[torch.nn.Module], root: Path, stop_at: int, resume: bool) -> None:
    with gossamer.LocalCoordinator(min_peers=2) as coordinator:
        threads = [threading.Thread(target=train, args=(r, models[r], coordinator.address, root / f"peer{r}",
                                                        stop_at, resume)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main() -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="gossamer-resume-"))
    torch.manual_seed(0)
    models = [torch.nn.Linear(16, 1) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())  # the same initial model on both peers
    phase(models, root, STEPS // 2, resume=False)
    print("--- the whole swarm is down; starting it again from the checkpoints ---", flush=True)
    fresh = [torch.nn.Linear(16, 1) for _ in range(2)]  # new processes would build new models: state comes from disk
    phase(fresh, root, STEPS, resume=True)
    print(f"checkpoints in {root}")


if __name__ == "__main__":
    main()

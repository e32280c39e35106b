"""Your own model and data in the simulator: a task object instead of a built-in name.

    python examples/own_task_simulated.py

A small MLP classifying scikit-learn's digits, written as a task (model factory,
loss, shards, evaluation: docs/own-task.md), simulated with four peers over 20 Mbit/s links, with ddp, diloco and sparseloco. The
results carry the task's own name; diloco's trained model is saved as
safetensors and loaded back with plain torch.
"""
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn

import gossamer


class DigitsShard(gossamer.Shard):
    """Every n-th row for each peer, batches from a seeded generator."""

    def __init__(self, x, y, peer, n_peers, seed):
        self.x, self.y = x[peer::n_peers], y[peer::n_peers]
        self.gen = torch.Generator().manual_seed(seed * 1000 + peer)

    def next_batch(self):
        rows = torch.randint(len(self.x), (32,), generator=self.gen)
        return self.x[rows], self.y[rows]


class MyDigits(gossamer.Task):
    name = "my-digits"
    metric_name = "val_accuracy"
    samples_per_batch = 32
    loss_unit = "nats"

    def __init__(self):
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
        self.x, self.y, self.val_x, self.val_y = x[:1500], y[:1500], x[1500:], y[1500:]

    def make_model(self, seed):  # gossamer seeds torch's generator with `seed` first
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def shard(self, peer, n_peers, *, seed):
        return DigitsShard(self.x, self.y, peer, n_peers, seed)

    @torch.no_grad()
    def evaluate(self, model):
        logits = model(self.val_x)
        return float(self.loss(model, (self.val_x, self.val_y))), float((logits.argmax(1) == self.val_y).float().mean())


results = gossamer.simulate(task=MyDigits(), algorithms=("ddp", "diloco", "sparseloco"), peers=4, steps=300,
                            inner_steps=20, link="20mbit,40ms", save="my-digits.safetensors",
                            algorithm_options={"ddp": {"lr": 1e-2}, "diloco": {"lr": 1e-2}})
print(f"task: {results.task}")
ddp_bytes = results.runs[0].bytes_sent_per_peer
for run in results.runs:
    ratio = "the baseline" if run.algorithm == "ddp" else f"{ddp_bytes / run.bytes_sent_per_peer:.1f}x fewer bytes than ddp"
    print(f"{run.algorithm:10s} accuracy {run.final_val_metric:6.1%}  {run.bytes_sent_per_peer / 1e3:9.1f} kB sent per peer"
          f"  ({ratio})")
model = MyDigits().make_model(0)
model.load_state_dict(load_file("my-digits-diloco.safetensors"))  # plain torch, strict
print("saved diloco model loads:", type(model).__name__)

"""``digits``: an MLP on scikit-learn's bundled 8x8 handwritten digits (no download).

Data: ``sklearn.datasets.load_digits()`` (1797 images, 10 classes), pixels
divided by 16 so inputs lie in [0, 1]. A stratified train/validation split
(``val_fraction``, default 20%) fixed by ``split_seed`` and independent of
any run seed.

Shards (membership is a pure function of the config, ``n_peers`` and ``seed``):

* iid (``iid=True``): training indices in a seeded random order, cut into
  ``n_peers`` nearly equal parts.
* non-iid (``iid=False``): for every class, Dirichlet(``alpha`` * 1) proportions
  over peers split that class's (shuffled) samples; ``alpha`` defaults to 0.5
  (smaller is more skewed). Afterwards any peer with fewer than
  ``min_shard_size`` samples takes samples, one at a time, from the currently
  largest shard, so no shard is empty. Uses only a ``numpy.random.Generator``
  seeded by ``seed``.

Passing ``alpha`` together with ``iid=True`` is a ``ConfigError`` (it would be
silently ignored otherwise).

Batches: ``batch_size`` samples drawn without replacement within an epoch
(a fresh ``torch.Generator`` permutation of the shard each epoch, seeded by
``(seed, peer)``); a batch is ``(x float32 (B, 64), y int64 (B,))``.
``label_flip=True`` poisons the shard: labels become ``9 - y``.

Model: MLP ``64 -> hidden... -> 10`` with ReLU, PyTorch-style uniform init
from an explicit generator. Loss: cross-entropy. ``evaluate`` returns
(validation cross-entropy, validation accuracy); ``val_accuracy`` is higher
is better.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gossamer.errors import ConfigError, ShardError, TaskError
from gossamer.tasks.base import Shard, _ConfiguredTask, check_peer, check_seed, derive_seed, torch_generator

N_FEATURES = 64
N_CLASSES = 10
DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class DigitsConfig:
    """``digits`` options (see module docstring)."""

    hidden: tuple[int, ...] = (64,)
    batch_size: int = 32
    iid: bool = True
    alpha: float | None = None
    min_shard_size: int = 8
    val_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.hidden, int) and not isinstance(self.hidden, bool):
            object.__setattr__(self, "hidden", (self.hidden,))
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"digits: hidden must be ints >= 1, got {self.hidden!r}")
        if self.batch_size < 1:
            raise ConfigError(f"digits: batch_size must be >= 1, got {self.batch_size!r}")
        if self.min_shard_size < 1:
            raise ConfigError(f"digits: min_shard_size must be >= 1, got {self.min_shard_size!r}")
        if self.alpha is not None:
            if not (math.isfinite(self.alpha) and self.alpha > 0):
                raise ConfigError(f"digits: alpha must be a finite number > 0, got {self.alpha!r}")
            if self.iid:
                raise ConfigError(
                    f"digits: alpha={self.alpha!r} applies only to non-iid shards; pass iid=False"
                )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"digits: val_fraction must be in (0, 1), got {self.val_fraction!r}")

    @property
    def effective_alpha(self) -> float:
        return DEFAULT_ALPHA if self.alpha is None else self.alpha


@dataclass(frozen=True, eq=False)
class DigitsData:
    """Train and validation arrays (float32 inputs in [0, 1], int64 labels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@functools.lru_cache(maxsize=4)
def load_digits_split(val_fraction: float, split_seed: int) -> DigitsData:
    """Load the bundled digits and split them, stratified, by ``split_seed`` (cached)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    try:
        bunch = load_digits()
    except Exception as exc:  # pragma: no cover - sklearn always bundles it
        raise TaskError(f"digits: cannot load sklearn's bundled digits: {exc}") from exc
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(y)), test_size=val_fraction, stratify=y, random_state=split_seed
    )
    idx_train = np.sort(idx_train)
    idx_val = np.sort(idx_val)
    return DigitsData(
        x_train=torch.from_numpy(x[idx_train]),
        y_train=torch.from_numpy(y[idx_train]),
        x_val=torch.from_numpy(x[idx_val]),
        y_val=torch.from_numpy(y[idx_val]),
    )


def dirichlet_partition(labels: np.ndarray, n_peers: int, alpha: float, min_size: int,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Split indices of ``labels`` over peers with per-class Dirichlet(alpha) proportions.

    Every peer ends with at least ``min_size`` indices (taken from the largest
    shard) provided ``len(labels) >= n_peers * min_size``. Each result sorted.
    """
    if len(labels) < n_peers * min_size:
        raise ShardError(
            f"digits: {len(labels)} training samples cannot give {n_peers} peers "
            f"at least min_shard_size={min_size} each; use at most {len(labels) // min_size} peers"
        )
    bins: list[list[int]] = [[] for _ in range(n_peers)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        props = rng.dirichlet(np.full(n_peers, alpha))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for p, part in enumerate(np.split(idx, cuts)):
            bins[p].extend(part.tolist())
    while True:
        sizes = [len(b) for b in bins]
        small = min(range(n_peers), key=lambda q: (sizes[q], q))
        if sizes[small] >= min_size:
            break
        big = max(range(n_peers), key=lambda q: (sizes[q], -q))
        bins[small].append(bins[big].pop())
    return [np.sort(np.asarray(b, dtype=np.int64)) for b in bins]


class DigitsShard(Shard):
    """Epoch-wise shuffled minibatches of one peer's digits."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices: np.ndarray, peer: int, n_peers: int,
                 seed: int, batch_size: int) -> None:
        self.peer = peer
        self.n_peers = n_peers
        self.indices = indices
        self.x = x
        self.y = y
        self.num_samples = int(len(indices))
        self.samples_per_batch = batch_size
        self._batch_size = batch_size
        self._gen = torch_generator("digits-batches", seed, peer)
        self._queue = torch.empty(0, dtype=torch.long)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        while self._queue.numel() < self._batch_size:
            self._queue = torch.cat([self._queue, torch.randperm(self.num_samples, generator=self._gen)])
        take, self._queue = self._queue[: self._batch_size], self._queue[self._batch_size:]
        return self.x[take], self.y[take]


class MLP(nn.Module):
    """``64 -> hidden... -> 10`` with ReLU between layers."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def init_parameters(self, gen: torch.Generator) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, from ``gen``."""
        with torch.no_grad():
            for layer in self.layers:
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)


class DigitsTask(_ConfiguredTask):
    """Digit classification with an MLP (see module docstring)."""

    name = "digits"
    Config = DigitsConfig
    metric_name = "val_accuracy"
    metric_higher_is_better = True
    loss_unit = "cross-entropy, nats"

    def __init__(self, config: DigitsConfig | None = None) -> None:
        self.config = config if config is not None else DigitsConfig()
        self.samples_per_batch = self.config.batch_size

    @property
    def data(self) -> DigitsData:
        return load_digits_split(self.config.val_fraction, self.config.split_seed)

    def make_model(self, seed: int) -> MLP:
        check_seed(seed)
        with torch.device("meta"):
            model = MLP((N_FEATURES, *self.config.hidden, N_CLASSES))
        model = model.to_empty(device="cpu")
        model.init_parameters(torch_generator("digits-init", seed))
        return model

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def partition(self, n_peers: int, seed: int) -> tuple[np.ndarray, ...]:
        """Indices into the training set for every peer (each sorted)."""
        return _partition(self.config, n_peers, seed)

    def shard(self, peer: int, n_peers: int, *, seed: int, label_flip: bool = False) -> DigitsShard:
        check_peer(peer, n_peers, seed)
        data = self.data
        idx = self.partition(n_peers, seed)[peer]
        t_idx = torch.tensor(idx, dtype=torch.long)
        x, y = data.x_train[t_idx], data.y_train[t_idx]
        if label_flip:
            y = (N_CLASSES - 1) - y
        return DigitsShard(x, y, idx, peer, n_peers, seed, self.config.batch_size)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        data = self.data
        device = next(model.parameters()).device  # the validation set goes where the model is
        x_val, y_val = data.x_val.to(device), data.y_val.to(device)
        logits = model(x_val)
        loss = float(F.cross_entropy(logits, y_val))
        acc = float((logits.argmax(dim=1) == y_val).double().mean())
        return loss, acc


@functools.lru_cache(maxsize=16)
def _partition(config: DigitsConfig, n_peers: int, seed: int) -> tuple[np.ndarray, ...]:
    parts = _compute_partition(config, n_peers, seed)
    for part in parts:
        part.flags.writeable = False  # shared through the cache
    return tuple(parts)


def _compute_partition(config: DigitsConfig, n_peers: int, seed: int) -> list[np.ndarray]:
    data = load_digits_split(config.val_fraction, config.split_seed)
    labels = data.y_train.numpy()
    rng = np.random.default_rng(derive_seed("digits-shards", seed))
    if config.iid:
        if n_peers > len(labels):
            raise ShardError(f"digits: {n_peers} peers but only {len(labels)} training samples; use at most {len(labels)} peers")
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), n_peers)]
    return dirichlet_partition(labels, n_peers, config.effective_alpha, config.min_shard_size, rng)

"""``quadratic``: strongly convex least squares with a known optimum.

Problem (all data float64, fixed by ``data_seed``, independent of the run seed)
------------------------------------------------------------------------------
``n_rows`` rows ``a_r ~ N(0, I_dim)`` split into ``n_groups`` contiguous groups,
and ``b_r = a_r . x_g(r) + noise * e_r``. With ``iid=True`` every group has
the same target ``x_g = x_c``; with ``iid=False`` group ``g`` has its own
target ``x_g = x_c + heterogeneity * u_g`` (``x_c, u_g ~ N(0, I)``, so
``heterogeneity`` is about ``||x_g - x_c|| / ||x_c||``; default 1.0; setting
it with ``iid=True`` is a ``ConfigError``). The iid and non-iid problems
therefore differ, each with its own optimum. The global objective is

    f(x) = 1/(2 n_rows) * ||A x - b||^2

whose unique minimiser ``x* = (A^T A)^{-1} A^T b`` (``task.optimum``) is
solved in closed form in float64. With Gaussian rows and ``n_rows >> dim``,
``A^T A / n_rows`` is close to the identity: well conditioned
(``task.condition_number`` reports it; ~2 at the defaults).

Shards (any ``n_peers <= n_rows``)
----------------------------------
The rows are cut into ``n_peers`` nearly equal parts (``numpy.array_split``):

* iid: rows in a random order seeded by ``seed``; all rows share one target,
  so local optima differ from ``x*`` only through the noise;
* non-iid: rows in group order (independent of ``seed``), so each peer holds
  one or a few groups and its local optimum differs from ``x*`` by about
  ``heterogeneity * ||x_c||``.

When ``n_peers`` divides ``n_rows`` (the defaults: 1024 rows) the global
objective is exactly the average of the peers' local objectives.

Batches: full batch (default) returns the peer's whole ``(A_i, b_i)`` as
float32 tensors (the same tensors each call; treat them as read-only); with
``stochastic=True`` a batch is ``batch_size`` distinct rows drawn by a
``torch.Generator`` seeded by ``(seed, peer)``. ``loss = 1/2 mean((A x - b)^2)``.
``label_flip=True`` poisons the shard by negating ``b_i`` (its local optimum
moves to ``-x_i``).

``samples_per_batch`` is ``batch_size`` when stochastic and ``n_rows`` (an upper
bound; the exact count is ``Shard.samples_per_batch``) in full-batch mode.

``evaluate`` returns ``(f(x), ||x - x*|| / ||x*||)`` in float64; the metric
``rel_dist_to_opt`` is lower is better. The model is a module with a single
float32 parameter vector ``x`` (``N(0, I)`` init from an explicit generator).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gossamer.errors import ConfigError, ShardError, TaskError
from gossamer.tasks.base import Shard, _ConfiguredTask, check_peer, check_seed, derive_seed, torch_generator

DEFAULT_HETEROGENEITY = 1.0


@dataclass(frozen=True)
class QuadraticConfig:
    """``quadratic`` options (see module docstring)."""

    dim: int = 32
    n_rows: int = 1024
    n_groups: int = 16
    heterogeneity: float | None = None
    noise: float = 0.1
    iid: bool = True
    stochastic: bool = False
    batch_size: int = 32
    data_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "n_rows", "n_groups", "batch_size"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"quadratic: {name} must be >= 1, got {value!r}")
        if self.n_rows < self.dim:
            raise ConfigError(
                f"quadratic: n_rows={self.n_rows} must be >= dim={self.dim} for a unique optimum"
            )
        if self.n_groups > self.n_rows:
            raise ConfigError(f"quadratic: n_groups={self.n_groups} exceeds n_rows={self.n_rows}")
        for name in ("heterogeneity", "noise"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"quadratic: {name} must be a finite number >= 0, got {value!r}")
        if self.heterogeneity is not None and self.iid:
            raise ConfigError(
                f"quadratic: heterogeneity={self.heterogeneity!r} applies only to non-iid shards; "
                "pass iid=False"
            )

    @property
    def effective_heterogeneity(self) -> float:
        """0 for iid; ``heterogeneity`` (default 1.0) for non-iid."""
        if self.iid:
            return 0.0
        return DEFAULT_HETEROGENEITY if self.heterogeneity is None else self.heterogeneity


@dataclass(frozen=True, eq=False)
class QuadraticProblem:
    """The float64 problem data and its closed-form optimum."""

    A: np.ndarray
    b: np.ndarray
    group: np.ndarray
    optimum: np.ndarray
    optimum_value: float
    condition_number: float


@functools.lru_cache(maxsize=8)
def build_problem(config: QuadraticConfig) -> QuadraticProblem:
    """Generate the problem from ``config.data_seed`` and solve it (cached)."""
    c = config
    rng = np.random.default_rng(derive_seed("quadratic-data", c.data_seed))
    A = rng.standard_normal((c.n_rows, c.dim))
    x_c = rng.standard_normal(c.dim)
    u = rng.standard_normal((c.n_groups, c.dim))
    group = (np.arange(c.n_rows) * c.n_groups) // c.n_rows
    targets = x_c[None, :] + c.effective_heterogeneity * u[group]
    b = np.einsum("rd,rd->r", A, targets) + c.noise * rng.standard_normal(c.n_rows)
    H = A.T @ A
    eig = np.linalg.eigvalsh(H)
    if eig[0] <= 1e-10 * eig[-1]:
        raise TaskError(f"quadratic: A^T A is singular for config {c}")
    x_star = np.linalg.solve(H, A.T @ b)
    value = 0.5 * float(np.mean((A @ x_star - b) ** 2))
    for arr in (A, b, group, x_star):
        arr.flags.writeable = False
    return QuadraticProblem(A=A, b=b, group=group, optimum=x_star, optimum_value=value,
                            condition_number=float(eig[-1] / eig[0]))


class QuadraticModel(nn.Module):
    """One parameter vector ``x``; ``forward(A) = A @ x``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.empty(dim))

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        return A @ self.x


class QuadraticShard(Shard):
    """One peer's rows ``(A_i, b_i)``: full batch or seeded row subsets."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor, rows: np.ndarray, peer: int, n_peers: int,
                 seed: int, stochastic: bool, batch_size: int) -> None:
        self.peer = peer
        self.n_peers = n_peers
        self.rows = rows
        self.A = A
        self.b = b
        self.num_samples = int(A.shape[0])
        self.stochastic = stochastic
        self.samples_per_batch = min(batch_size, self.num_samples) if stochastic else self.num_samples
        self._gen = torch_generator("quadratic-batches", seed, peer)

    def local_optimum(self) -> torch.Tensor:
        """Least-squares minimiser of this shard alone (float64; min-norm if rank deficient)."""
        return torch.linalg.lstsq(self.A.double(), self.b.double()[:, None]).solution[:, 0]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.stochastic:
            return self.A, self.b
        take = torch.randperm(self.num_samples, generator=self._gen)[: self.samples_per_batch]
        return self.A[take], self.b[take]


class QuadraticTask(_ConfiguredTask):
    """Least squares with a known optimum (see module docstring)."""

    name = "quadratic"
    Config = QuadraticConfig
    metric_name = "rel_dist_to_opt"
    metric_higher_is_better = False
    loss_unit = "mean squared residual / 2"

    def __init__(self, config: QuadraticConfig | None = None) -> None:
        self.config = config if config is not None else QuadraticConfig()
        self.samples_per_batch = self.config.batch_size if self.config.stochastic else self.config.n_rows
        self._problem = build_problem(self.config)
        self._A64 = torch.from_numpy(self._problem.A.copy())
        self._b64 = torch.from_numpy(self._problem.b.copy())
        self.optimum: torch.Tensor = torch.from_numpy(self._problem.optimum.copy())  # x*, float64
        self.optimum_value: float = self._problem.optimum_value  # f(x*)
        self.condition_number: float = self._problem.condition_number

    def objective(self, x: torch.Tensor) -> float:
        """Global objective ``f(x)`` in float64."""
        r = self._A64 @ x.detach().double().reshape(-1) - self._b64
        return 0.5 * float(torch.mean(r * r))

    def make_model(self, seed: int) -> QuadraticModel:
        check_seed(seed)
        with torch.device("meta"):
            model = QuadraticModel(self.config.dim)
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            model.x.normal_(0.0, 1.0, generator=torch_generator("quadratic-init", seed))
        return model

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        A, b = batch
        r = model(A) - b
        return 0.5 * torch.mean(r * r)

    def partition(self, n_peers: int, seed: int) -> tuple[np.ndarray, ...]:
        """Row indices of every peer (each sorted)."""
        n = self.config.n_rows
        if n_peers > n:
            raise ShardError(f"quadratic: {n_peers} peers but only n_rows={n} rows; use at most {n} peers or a larger n_rows")
        if self.config.iid:
            order = np.random.default_rng(derive_seed("quadratic-iid", seed)).permutation(n)
        else:
            order = np.arange(n)
        return tuple(np.sort(part) for part in np.array_split(order, n_peers))

    def shard(self, peer: int, n_peers: int, *, seed: int, label_flip: bool = False) -> QuadraticShard:
        check_peer(peer, n_peers, seed)
        rows = self.partition(n_peers, seed)[peer]
        A = torch.from_numpy(self._problem.A[rows].astype(np.float32))
        b = torch.from_numpy(self._problem.b[rows].astype(np.float32))
        if label_flip:
            b = -b
        return QuadraticShard(A, b, rows, peer, n_peers, seed, self.config.stochastic, self.config.batch_size)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        x = model.x.detach().to("cpu", torch.float64)  # type: ignore[union-attr]  # float64 on the CPU, where the optimum is
        rel = float(torch.linalg.vector_norm(x - self.optimum) / torch.linalg.vector_norm(self.optimum))
        return self.objective(x), rel

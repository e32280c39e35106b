"""``charlm``: a small character-level transformer on CPython's own stdlib sources.

Data
----
The ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` of the running
interpreter (or ``CharLMConfig.root``), minus:

* top-level folders ``site-packages`` (third-party code), ``test``
  (CPython's test suite: huge and repetitive), ``idlelib``, ``lib2to3``,
  ``tkinter``, ``turtledemo`` (GUI / deprecated tooling), ``ensurepip``,
  ``pydoc_data`` (one generated 750 kB string table), ``encodings``
  (generated codec tables), ``lib-dynload``, ``config-*`` (build files);
* any folder named ``test``, ``tests`` or ``__pycache__`` at any depth
  (e.g. ``unittest/test``, ``ctypes/test``, ``distutils/tests``);
* generated top-level files ``_sysconfigdata_*.py``.

The train/validation split is BY FILE: a file is a validation file iff
``sha256("val:" + relative_path)`` (as a fraction of 2**64) is below
``val_fraction``; this does not depend on ``max_chars`` or the run seed.
Within each side, files are ranked by ``sha256("select:" + relative_path)``
and taken greedily in that order while their total size in bytes stays
within that side's budget (``val_fraction * max_chars`` for validation, the
rest for training), then sorted by path. So the loaded subset is
deterministic, spread over all modules, never over ``max_chars`` characters,
and about ``val_fraction`` validation by characters. At the default
``max_chars`` (10 M) the whole eligible stdlib of CPython 3.11 (~8.4 MB, ~435
files) is loaded in ~0.15 s.

Text is decoded as UTF-8 (invalid bytes replaced), ``\\r\\n`` and ``\\r``
become ``\\n``, and each character maps to a FIXED vocabulary independent of
the files: tab, newline, the 95 printable ASCII characters, and one unknown id
for everything else (98 ids). Every machine therefore agrees on the ids.

Shards
------
* iid: training files in a seeded random order, each dealt to the peer with
  the fewest characters so far (ties to the lowest peer).
* non-iid (``iid=False``): files grouped by top-level module (``asyncio/*``
  is ``asyncio``, ``os.py`` is ``os``); modules, largest first, dealt to the
  peer with the fewest characters so far (longest-processing-time
  balancing). This split does not depend on the seed. Needs
  ``n_peers <= `` the number of modules.
* non-iid with ``alpha`` (``iid=False, alpha=A``): Dirichlet by module, as
  digits is Dirichlet by label: for every module (in sorted order),
  proportions ``q ~ Dirichlet(A * 1)`` over the peers are drawn and each of
  its files (in path order) goes to a peer drawn from ``q``; then, while a
  peer has no file, the peer with the most files gives it its last one. Small ``A``: each module on one or a
  few peers; large ``A``: close to iid. Seeded by ``seed``. Needs
  ``n_peers <=`` the number of training files. ``alpha`` with ``iid=True``
  is a ``ConfigError``.

A split that cannot give every peer data raises ``ShardError`` (a
``TaskError`` and a ``ConfigError``) naming the limit.

A batch is ``batch_size`` random windows of ``context + 1`` characters from the
shard's concatenated text (LongTensor ``(batch_size, context + 1)``), drawn
from a ``torch.Generator`` seeded by ``(seed, peer)``.

Validation: ``val_windows`` fixed windows of the concatenated validation text
(positions from a constant seed). ``evaluate`` returns the mean cross-entropy
in nats per character twice: as the loss and as the metric
(``val_loss_nats_per_char``, lower is better).

Model: decoder-only transformer, learned position embedding, pre-LayerNorm
blocks with ``scaled_dot_product_attention(is_causal=True)`` and a 4x GELU
MLP, final LayerNorm, output projection tied to the token embedding.
GPT-2 style init (normal std 0.02, residual projections 0.02/sqrt(2 layers)).

``label_flip`` is meaningless for a language model and raises ``ConfigError``.

The loaded corpus is cached process-wide (keyed by root, ``max_chars`` and
``val_fraction``), so many simulated peers share one copy.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sysconfig
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gossamer.errors import ConfigError, ShardError, TaskError
from gossamer.tasks.base import Shard, _ConfiguredTask, check_peer, check_seed, derive_seed, torch_generator

# ---------------------------------------------------------------- vocabulary

VOCAB: str = "\t\n" + "".join(chr(c) for c in range(32, 127))
"""Characters with their own id, in id order; every other character is ``UNK_ID``."""
UNK_ID: int = len(VOCAB)
VOCAB_SIZE: int = len(VOCAB) + 1

_LUT = np.full(128, UNK_ID, dtype=np.uint8)
for _i, _ch in enumerate(VOCAB):
    _LUT[ord(_ch)] = _i
del _i, _ch


def encode(text: str) -> np.ndarray:
    """Map ``text`` to ids (uint8) in the fixed vocabulary."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    ids = _LUT[np.minimum(cps, 127)]
    ids[cps > 127] = UNK_ID
    return ids


def decode(ids: np.ndarray | torch.Tensor | list[int]) -> str:
    """Map ids back to text; ``UNK_ID`` becomes ``"\\ufffd"``."""
    table = VOCAB + "\ufffd"
    return "".join(table[int(i)] for i in ids)


# ---------------------------------------------------------------- corpus

EXCLUDED_TOP_DIRS: frozenset[str] = frozenset(
    {
        "site-packages",
        "test",
        "idlelib",
        "lib2to3",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "pydoc_data",
        "encodings",
        "lib-dynload",
    }
)
EXCLUDED_DIRS_ANYWHERE: frozenset[str] = frozenset({"test", "tests", "__pycache__"})


def _hash_fraction(salt: str, rel: str) -> float:
    digest = hashlib.sha256(f"{salt}:{rel}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def module_of(rel: str) -> str:
    """Top-level module of a relative path: ``asyncio/x.py`` -> ``asyncio``, ``os.py`` -> ``os``."""
    head = rel.split("/", 1)[0]
    return head[:-3] if head.endswith(".py") else head


def list_stdlib_files(root: str) -> list[tuple[str, int]]:
    """``(relative posix path, size in bytes)`` of the eligible files, sorted by path."""
    out: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        top = rel_dir == "."
        keep = []
        for d in sorted(dirnames):
            if d in EXCLUDED_DIRS_ANYWHERE:
                continue
            if top and (d in EXCLUDED_TOP_DIRS or d.startswith("config-")):
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            if top and f.startswith("_sysconfigdata_"):
                continue
            rel = f if top else f"{rel_dir}/{f}".replace(os.sep, "/")
            try:
                size = os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
            out.append((rel, size))
    out.sort()
    return out


@dataclass(frozen=True, eq=False)
class CorpusFile:
    """One source file: relative path, top-level module, encoded ids (uint8)."""

    rel: str
    module: str
    ids: np.ndarray

    @property
    def chars(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True, eq=False)
class Corpus:
    """The loaded, split corpus; files sorted by path within each split."""

    root: str
    train: tuple[CorpusFile, ...]
    val: tuple[CorpusFile, ...]

    @property
    def train_chars(self) -> int:
        return sum(f.chars for f in self.train)

    @property
    def val_chars(self) -> int:
        return sum(f.chars for f in self.val)


@functools.lru_cache(maxsize=4)
def load_corpus(root: str, max_chars: int, val_fraction: float) -> Corpus:
    """Load and split the stdlib corpus (cached process-wide; see module docstring)."""
    if not os.path.isdir(root):
        raise TaskError(f"charlm: stdlib folder {root!r} does not exist")
    files = list_stdlib_files(root)
    if not files:
        raise TaskError(f"charlm: no eligible .py files under {root!r}")
    ranked = sorted(files, key=lambda rs: (_hash_fraction("select", rs[0]), rs[0]))
    budget = {True: int(max_chars * val_fraction), False: max_chars - int(max_chars * val_fraction)}
    chosen: list[str] = []
    for is_val in (False, True):
        total = 0
        for rel, size in ranked:
            if (_hash_fraction("val", rel) < val_fraction) == is_val and total + size <= budget[is_val]:
                chosen.append(rel)
                total += size
    chosen.sort()
    train: list[CorpusFile] = []
    val: list[CorpusFile] = []
    for rel in chosen:
        path = os.path.join(root, *rel.split("/"))
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise TaskError(f"charlm: cannot read {path!r}: {exc}") from exc
        text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        if not text:
            continue
        cf = CorpusFile(rel=rel, module=module_of(rel), ids=encode(text))
        (val if _hash_fraction("val", rel) < val_fraction else train).append(cf)
    if not train or not val:
        raise TaskError(
            f"charlm: max_chars={max_chars} and val_fraction={val_fraction} leave "
            f"{len(train)} train and {len(val)} validation files under {root!r}; need both"
        )
    return Corpus(root=root, train=tuple(train), val=tuple(val))


def _concat(files: tuple[CorpusFile, ...] | list[CorpusFile]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([f.ids for f in files]))


@functools.lru_cache(maxsize=16)
def _partition(corpus: Corpus, n_peers: int, iid: bool, seed: int,
               alpha: float | None = None) -> tuple[tuple[int, ...], ...]:
    """Indices into ``corpus.train`` for each peer (each sorted)."""
    files = corpus.train
    loads = [0] * n_peers
    bins: list[list[int]] = [[] for _ in range(n_peers)]
    if iid or alpha is not None:
        if n_peers > len(files):
            raise ShardError(
                f"charlm: {n_peers} peers but only {len(files)} training files "
                f"(each peer needs at least one); use at most {len(files)} peers"
            )
    if not iid and alpha is not None:
        return _dirichlet_partition(files, n_peers, alpha, seed)
    if iid:
        rng = np.random.default_rng(derive_seed("charlm-iid", seed))
        for idx in rng.permutation(len(files)).tolist():
            p = min(range(n_peers), key=lambda q: (loads[q], q))
            bins[p].append(idx)
            loads[p] += files[idx].chars
    else:
        modules: dict[str, list[int]] = {}
        for idx, f in enumerate(files):
            modules.setdefault(f.module, []).append(idx)
        if n_peers > len(modules):
            raise ShardError(
                f"charlm: non-iid sharding by module needs at most {len(modules)} peers "
                f"(one module each at least), got {n_peers}"
            )
        sizes = {m: sum(files[i].chars for i in idxs) for m, idxs in modules.items()}
        for m in sorted(modules, key=lambda m: (-sizes[m], m)):
            p = min(range(n_peers), key=lambda q: (loads[q], q))
            bins[p].extend(modules[m])
            loads[p] += sizes[m]
    return tuple(tuple(sorted(b)) for b in bins)


def _dirichlet_partition(files: tuple[CorpusFile, ...], n_peers: int, alpha: float,
                         seed: int) -> tuple[tuple[int, ...], ...]:
    """Dirichlet(alpha) by module (see the module docstring); ``n_peers <= len(files)``."""
    rng = np.random.default_rng(derive_seed("charlm-dirichlet", seed))
    modules: dict[str, list[int]] = {}
    for idx, f in enumerate(files):
        modules.setdefault(f.module, []).append(idx)
    bins: list[list[int]] = [[] for _ in range(n_peers)]
    for m in sorted(modules):
        props = rng.dirichlet(np.full(n_peers, alpha))
        for idx, p in zip(modules[m], rng.choice(n_peers, size=len(modules[m]), p=props).tolist()):
            bins[p].append(idx)
    while True:
        sizes = [len(b) for b in bins]
        empty = min(range(n_peers), key=lambda q: (sizes[q], q))
        if sizes[empty] > 0:
            break
        full = max(range(n_peers), key=lambda q: (sizes[q], -q))
        bins[empty].append(bins[full].pop())
    return tuple(tuple(sorted(b)) for b in bins)


# ---------------------------------------------------------------- config

@dataclass(frozen=True)
class CharLMConfig:
    """``charlm`` options (see module docstring). Defaults: ~18 ms per fwd+bwd of one batch on 2 CPU cores (torch 2.13)."""

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    context: int = 128
    batch_size: int = 4
    iid: bool = True
    alpha: float | None = None
    max_chars: int = 10_000_000
    val_fraction: float = 0.05
    val_windows: int = 64
    root: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "context", "batch_size", "max_chars", "val_windows"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"charlm: {name} must be >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"charlm: d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"charlm: val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.alpha is not None:
            if not (math.isfinite(self.alpha) and self.alpha > 0):
                raise ConfigError(f"charlm: alpha must be a finite number > 0, got {self.alpha!r}")
            if self.iid:
                raise ConfigError(f"charlm: alpha={self.alpha!r} applies only to non-iid shards; pass iid=False")

    @property
    def stdlib_root(self) -> str:
        return self.root if self.root is not None else sysconfig.get_paths()["stdlib"]


# ---------------------------------------------------------------- model

class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharTransformer(nn.Module):
    """Decoder-only transformer: ids ``(B, T)`` -> logits ``(B, T, vocab)``, ``T <= context``."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, n_heads: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList([_Block(d_model, n_heads) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ConfigError(f"charlm: sequence length {t} exceeds context {self.context}")
        x = self.tok(idx) + self.pos.weight[:t]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.t()

    def init_parameters(self, gen: torch.Generator) -> None:
        """GPT-2 style init from ``gen`` only (in module registration order)."""
        resid_std = 0.02 / math.sqrt(2 * len(self.blocks))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln" in name or name.startswith("ln_"):
                    p.fill_(1.0)
                elif name.endswith("proj.weight") or name.endswith("out.weight"):
                    p.normal_(0.0, resid_std, generator=gen)
                else:
                    p.normal_(0.0, 0.02, generator=gen)


# ---------------------------------------------------------------- task

class CharLMShard(Shard):
    """Random windows of ``context + 1`` ids from one peer's concatenated files."""

    def __init__(self, data: torch.Tensor, files: tuple[str, ...], peer: int, n_peers: int,
                 seed: int, batch_size: int, context: int) -> None:
        self.peer = peer
        self.n_peers = n_peers
        self.files = files
        self.modules = tuple(sorted({module_of(f) for f in files}))
        self.data = data
        self.num_samples = int(data.shape[0])
        self.samples_per_batch = batch_size
        self._batch_size = batch_size
        self._offsets = torch.arange(context + 1)
        self._high = self.num_samples - context  # number of valid window starts
        if self._high < 1:
            raise TaskError(
                f"charlm: peer {peer}'s shard has {self.num_samples} chars, fewer than context+1={context + 1}"
            )
        self._gen = torch_generator("charlm-batches", seed, peer)

    def next_batch(self) -> torch.Tensor:
        starts = torch.randint(0, self._high, (self._batch_size,), generator=self._gen)
        return self.data[starts[:, None] + self._offsets].long()


class CharLMTask(_ConfiguredTask):
    """Character-level language modelling on the stdlib (see module docstring)."""

    name = "charlm"
    Config = CharLMConfig
    metric_name = "val_loss_nats_per_char"
    metric_higher_is_better = False
    loss_unit = "nats per character"
    vocab_size = VOCAB_SIZE

    def __init__(self, config: CharLMConfig | None = None) -> None:
        self.config = config if config is not None else CharLMConfig()
        self.samples_per_batch = self.config.batch_size
        self._val: torch.Tensor | None = None

    @property
    def corpus(self) -> Corpus:
        c = self.config
        return load_corpus(c.stdlib_root, c.max_chars, c.val_fraction)

    def make_model(self, seed: int) -> CharTransformer:
        check_seed(seed)
        c = self.config
        with torch.device("meta"):
            model = CharTransformer(VOCAB_SIZE, c.d_model, c.n_layers, c.n_heads, c.context)
        model = model.to_empty(device="cpu")
        model.init_parameters(torch_generator("charlm-init", seed))
        return model

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def shard(self, peer: int, n_peers: int, *, seed: int, label_flip: bool = False) -> CharLMShard:
        check_peer(peer, n_peers, seed)
        if label_flip:
            raise ConfigError("charlm: label_flip=True is meaningless for a language model (no labels)")
        corpus = self.corpus
        idxs = _partition(corpus, n_peers, self.config.iid, seed, self.config.alpha)[peer]
        files = [corpus.train[i] for i in idxs]
        return CharLMShard(_concat(files), tuple(f.rel for f in files), peer, n_peers, seed,
                           self.config.batch_size, self.config.context)

    def validation_windows(self) -> torch.Tensor:
        """The fixed validation windows, LongTensor ``(val_windows, context + 1)``."""
        if self._val is None:
            c = self.config
            data = _concat(self.corpus.val)
            high = int(data.shape[0]) - c.context
            if high < 1:
                raise TaskError(f"charlm: validation text has {data.shape[0]} chars, fewer than context+1")
            gen = torch_generator("charlm-val")
            starts = torch.randint(0, high, (c.val_windows,), generator=gen)
            self._val = data[starts[:, None] + torch.arange(c.context + 1)].long()
        return self._val

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        windows = self.validation_windows()
        device = next(model.parameters()).device  # the validation windows go where the model is
        total = 0.0
        for chunk in windows.split(16):
            total += float(self.loss(model, chunk.to(device))) * chunk.shape[0]
        value = total / windows.shape[0]
        return value, value

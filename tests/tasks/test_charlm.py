"""charlm: corpus selection, split by file, shards, batches, model and learning."""

from __future__ import annotations

import math
import sysconfig

import pytest
import torch

from gossamer.errors import ConfigError, ShardError, TaskError
from gossamer.tasks import make_task
from gossamer.tasks.charlm import (
    UNK_ID,
    VOCAB,
    VOCAB_SIZE,
    CharLMTask,
    decode,
    encode,
    list_stdlib_files,
    load_corpus,
    module_of,
)

MAX = 1_500_000  # a deterministic subset keeps the tests fast


@pytest.fixture(scope="module")
def task() -> CharLMTask:
    t = make_task("charlm", max_chars=MAX)
    assert isinstance(t, CharLMTask)
    return t


def test_vocabulary_is_fixed() -> None:
    assert VOCAB_SIZE == 98 and UNK_ID == 97
    assert VOCAB[0] == "\t" and VOCAB[1] == "\n" and VOCAB[2] == " " and VOCAB[-1] == "~"
    text = "def f(x):\n\treturn x ~ 1\n"
    assert decode(encode(text)) == text
    assert encode("é€\x00").tolist() == [UNK_ID] * 3


def test_defaults() -> None:
    c = make_task("charlm").config
    assert (c.n_layers, c.d_model, c.n_heads, c.context, c.batch_size) == (2, 128, 4, 128, 4)
    assert c.iid is True and c.val_fraction == 0.05


def test_excluded_folders_are_not_read() -> None:
    files = [rel for rel, _ in list_stdlib_files(sysconfig.get_paths()["stdlib"])]
    assert len(files) > 100
    tops = {rel.split("/")[0] for rel in files}
    for excluded in ("site-packages", "test", "idlelib", "lib2to3", "tkinter", "encodings", "pydoc_data"):
        assert excluded not in tops
    assert all("/test/" not in f and "/tests/" not in f and f.endswith(".py") for f in files)
    assert "os.py" in files and "asyncio/events.py" in files


def test_module_of() -> None:
    assert module_of("asyncio/events.py") == "asyncio"
    assert module_of("os.py") == "os"
    assert module_of("email/mime/text.py") == "email"


def test_split_is_by_file_and_disjoint(task: CharLMTask) -> None:
    corpus = task.corpus
    train = {f.rel for f in corpus.train}
    val = {f.rel for f in corpus.val}
    assert train and val and not train & val
    assert corpus.train_chars + corpus.val_chars <= MAX
    assert 0.02 < corpus.val_chars / (corpus.train_chars + corpus.val_chars) < 0.06


def test_split_does_not_depend_on_the_cap() -> None:
    root = sysconfig.get_paths()["stdlib"]
    small, big = load_corpus(root, 600_000, 0.05), load_corpus(root, MAX, 0.05)
    big_train = {f.rel for f in big.train}
    big_val = {f.rel for f in big.val}
    assert small.val and small.train
    assert not {f.rel for f in small.val} & big_train
    assert not {f.rel for f in small.train} & big_val


def test_corpus_is_cached(task: CharLMTask) -> None:
    other = make_task("charlm", max_chars=MAX, batch_size=2, iid=False)
    assert other.corpus is task.corpus


def test_iid_shards_partition_all_training_files(task: CharLMTask) -> None:
    n = 5
    shards = [task.shard(p, n, seed=1) for p in range(n)]
    seen = [f for s in shards for f in s.files]
    assert sorted(seen) == sorted(f.rel for f in task.corpus.train)
    sizes = [s.num_samples for s in shards]
    assert sum(sizes) == task.corpus.train_chars
    assert max(sizes) < 2 * min(sizes)
    # a different seed deals the files differently
    assert task.shard(0, n, seed=2).files != shards[0].files


def test_non_iid_shards_split_by_module() -> None:
    t = make_task("charlm", max_chars=MAX, iid=False)
    n = 4
    shards = [t.shard(p, n, seed=0) for p in range(n)]
    mods = [set(s.modules) for s in shards]
    for i in range(n):
        for j in range(i + 1, n):
            assert not mods[i] & mods[j], "a module must live on one peer only"
    assert sorted(f for s in shards for f in s.files) == sorted(f.rel for f in t.corpus.train)
    for s in shards:
        assert all(module_of(f) in s.modules for f in s.files)
    sizes = [s.num_samples for s in shards]
    assert max(sizes) < 2 * min(sizes), sizes
    # iid shards, by contrast, share modules
    iid = make_task("charlm", max_chars=MAX)
    assert set(iid.shard(0, n, seed=0).modules) & set(iid.shard(1, n, seed=0).modules)


def test_too_many_peers_for_modules() -> None:
    t = make_task("charlm", max_chars=MAX, iid=False)
    with pytest.raises(TaskError):
        t.shard(0, 10_000, seed=0)


@pytest.mark.parametrize("iid,alpha", [(True, None), (False, None), (False, 0.5)])
def test_too_many_peers_is_a_config_error_naming_the_limit(iid: bool, alpha: float | None) -> None:
    t = make_task("charlm", max_chars=MAX, iid=iid, alpha=alpha)
    with pytest.raises(ShardError, match=r"at most \d+ peers") as info:
        t.shard(0, 10_000, seed=0)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, TaskError)


def _module_overlap(shards: list) -> float:
    pairs = [(a, b) for i, a in enumerate(shards) for b in shards[i + 1:]]
    return sum(len(set(a.modules) & set(b.modules)) for a, b in pairs) / len(pairs)


def test_dirichlet_shards_by_module() -> None:
    """``alpha``: Dirichlet(alpha) by module, as digits is by label; every
    training file dealt once; seeded; smaller alpha, fewer shared modules."""
    n = 4
    shards = {a: [make_task("charlm", max_chars=MAX, iid=False, alpha=a).shard(p, n, seed=0) for p in range(n)]
              for a in (0.05, 100.0)}
    train = sorted(f.rel for f in make_task("charlm", max_chars=MAX).corpus.train)
    for ss in shards.values():
        assert sorted(f for s in ss for f in s.files) == train
        assert all(s.num_samples > 0 for s in ss)
    assert _module_overlap(shards[0.05]) < _module_overlap(shards[100.0]) / 2
    t = make_task("charlm", max_chars=MAX, iid=False, alpha=0.5)
    assert t.shard(1, n, seed=0).files == t.shard(1, n, seed=0).files
    assert t.shard(1, n, seed=0).files != t.shard(1, n, seed=1).files


def test_alpha_needs_non_iid_and_a_positive_value() -> None:
    with pytest.raises(ConfigError, match="non-iid"):
        make_task("charlm", alpha=0.5)
    with pytest.raises(ConfigError, match="> 0"):
        make_task("charlm", iid=False, alpha=0.0)


def test_batches_are_deterministic_and_peer_specific(task: CharLMTask) -> None:
    a, b, c = task.shard(0, 4, seed=9), task.shard(0, 4, seed=9), task.shard(1, 4, seed=9)
    d = task.shard(0, 4, seed=10)
    xa = [a.next_batch() for _ in range(3)]
    xb = [b.next_batch() for _ in range(3)]
    for u, v in zip(xa, xb):
        assert torch.equal(u, v)
    assert not torch.equal(xa[0], c.next_batch())
    assert not torch.equal(xa[0], d.next_batch())
    assert not torch.equal(xa[0], xa[1])
    batch = xa[0]
    assert batch.shape == (task.config.batch_size, task.config.context + 1)
    assert batch.dtype == torch.long and int(batch.min()) >= 0 and int(batch.max()) < VOCAB_SIZE


def test_batch_windows_come_from_the_shard_text(task: CharLMTask) -> None:
    shard = task.shard(2, 3, seed=0)
    text = shard.data.numpy().tobytes()
    for row in shard.next_batch():
        assert row.to(torch.uint8).numpy().tobytes() in text


def test_validation_windows_are_fixed(task: CharLMTask) -> None:
    other = make_task("charlm", max_chars=MAX, batch_size=1)
    w = task.validation_windows()
    assert w.shape == (64, 129)
    assert torch.equal(w, other.validation_windows())


def test_label_flip_is_rejected(task: CharLMTask) -> None:
    with pytest.raises(ConfigError, match="label_flip"):
        task.shard(0, 2, seed=0, label_flip=True)


def test_bad_model_config() -> None:
    with pytest.raises(ConfigError, match="n_heads=3"):
        make_task("charlm", d_model=128, n_heads=3)
    with pytest.raises(ConfigError, match="val_fraction"):
        make_task("charlm", val_fraction=1.5)


def test_model_architecture_ties_embeddings(task: CharLMTask) -> None:
    model = task.make_model(0)
    names = dict(model.named_parameters())
    assert "tok.weight" in names and "pos.weight" in names
    assert not any("head" in n or "lm_out" in n for n in names)  # tied output
    logits = model(torch.zeros(2, 10, dtype=torch.long))
    assert logits.shape == (2, 10, VOCAB_SIZE)
    # causality: changing a later token leaves earlier logits untouched
    x = torch.randint(0, VOCAB_SIZE, (1, 20), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, 15] = (y[0, 15] + 1) % VOCAB_SIZE
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :15], model(y)[0, :15])
        assert not torch.allclose(model(x)[0, 15:], model(y)[0, 15:])


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_at_init_is_about_log_vocab(task: CharLMTask, seed: int) -> None:
    model = task.make_model(seed)
    val_loss, metric = task.evaluate(model)
    assert val_loss == metric
    assert abs(val_loss - math.log(VOCAB_SIZE)) < 0.5


def test_a_few_adam_steps_reduce_the_loss(task: CharLMTask) -> None:
    model = task.make_model(0)
    shard = task.shard(0, 2, seed=0)
    before, _ = task.evaluate(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        loss = task.loss(model, shard.next_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, _ = task.evaluate(model)
    assert after < before - 0.8, (before, after)

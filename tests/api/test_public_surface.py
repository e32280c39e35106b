"""Issue 13.1: the public surface is ``import gossamer`` and the names it exports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gossamer


def test_import_is_cheap_and_every_exported_name_resolves():
    code = "import sys, gossamer; assert 'torch' not in sys.modules, 'import gossamer imported torch'; print(gossamer.__version__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() and run.stdout.strip() != "0.0.0+unknown"
    for name in gossamer.__all__:
        assert getattr(gossamer, name) is not None, name
    assert issubclass(gossamer.ConfigError, gossamer.GossamerError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gossamer.nope  # noqa: B018


def test_simulate_returns_results_and_validates_before_training():
    seen = []
    res = gossamer.simulate(task="quadratic", algorithms=("ddp", "sparseloco"), peers=3, steps=12, inner_steps=4,
                            codec="ctopk:4:16+ef", progress=lambda a, done, total: seen.append(a))
    assert isinstance(res, gossamer.Results) and [r.algorithm for r in res.runs] == ["ddp", "sparseloco"]
    assert res.runs[1].bytes_sent_per_peer < res.runs[0].bytes_sent_per_peer
    assert set(seen) == {"ddp", "sparseloco"}
    with pytest.raises(gossamer.ConfigError, match="unknown algorithm"):
        gossamer.simulate(task="quadratic", algorithms=("nope",))
    with pytest.raises(gossamer.ConfigError):  # ShardError: more peers than the data can be split over
        gossamer.simulate(task="digits", peers=100_000, steps=1)
    codec = gossamer.make_codec("ctopk:64+ef:0.95")
    assert codec.spec == "ctopk:64:4096:2bit+ef:0.95"
    assert gossamer.make_aggregator("median", 1) is not None

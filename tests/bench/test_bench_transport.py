"""The transport bench: real worker processes, ours vs gloo, schema and agreement."""

from __future__ import annotations

import pytest

pytest.importorskip("torch.distributed")

import torch.distributed as dist  # noqa: E402

from gossamer.bench.transport import format_table, run_transport_bench  # noqa: E402
from gossamer.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo")


def test_tiny_bench_rows_and_agreement() -> None:
    messages: list[str] = []
    result = run_transport_bench(sizes_mib=(0.25,), processes=4, repeats=2, progress=messages.append, timeout=120)
    assert result["processes"] == 4
    assert isinstance(result["cores"], int) and result["cores"] >= 1
    assert result["repeats"] == 2
    (row,) = result["rows"]
    assert {"size_bytes", "ours_GBps", "gloo_GBps", "ratio"} <= set(row)
    assert row["size_bytes"] == 1 << 18
    assert row["ours_GBps"] > 0 and row["gloo_GBps"] > 0
    assert row["ratio"] == pytest.approx(row["ours_GBps"] / row["gloo_GBps"])
    # every worker checked that our mean equals gloo's sum / 4 to fp32 tolerance
    assert row["match"] is True, row
    assert row["max_abs_diff"] < 1e-5
    assert any("0.25 MiB" in m for m in messages)
    assert "0.25 MiB" in format_table(result)
    # the machine's load before and after, so a reader can judge the times
    assert len(result["load"]) == 2 and all(x >= 0 for x in result["load"])
    assert "load average" in format_table(result)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        run_transport_bench(sizes_mib=(1,), processes=1)
    with pytest.raises(ConfigError):
        run_transport_bench(sizes_mib=(1,), patches=("no-such-patch",))


def test_timeout_kills_workers_instead_of_hanging() -> None:
    from gossamer.errors import GossamerError

    with pytest.raises(GossamerError, match="did not finish within"):
        run_transport_bench(sizes_mib=(0.25,), processes=2, repeats=1, timeout=0.5)

"""The short soak (issue 10's measure, in CI): a loopback swarm of real
processes under random faults, two coordinator restarts among them, an
error-feedback codec and one peer with a non-finite gradient."""

from __future__ import annotations

import pytest

from gossamer.bench.soak import run_soak


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_short_soak_loses_nothing(tmp_path):
    r = run_soak(faults=10, peers=4, interval=1.0, seed=1, workdir=tmp_path)
    assert r["faults"] == 10 and r["coordinator_restarts"] == 2
    assert r["rounds_committed"] >= 10
    assert r["divergent_rounds"] == 0, r
    assert r["lost_rounds"] == 0, r
    assert r["livelocks"] == 0, r
    assert r["rss_growth_mb"] is not None and r["rss_growth_mb"] < 50, r["rss_mb"]

"""Invariant 1, proved in CI: for every algorithm, a seeded scenario run in the
simulator and as four real ``gossamer peer`` processes over TCP ends with the
bit-identical final state and the same payload bytes per peer."""

from __future__ import annotations

import pytest

from gossamer.bench.parity import PARITY_ALGORITHMS, run_parity


@pytest.mark.timeout(300)
@pytest.mark.parametrize("algorithm", PARITY_ALGORITHMS)
def test_simulator_and_real_swarm_end_bit_identical(algorithm, tmp_path):
    row = run_parity(algorithm, task="digits", peers=4, steps=12, inner_steps=4, seed=0, workdir=tmp_path)
    assert row["rounds"] >= 3
    assert row["hash_equal"], row
    assert row["bytes_equal"], row
    assert min(row["tcp_payload_bytes"]) > 0

"""Issue 13.7: a peer's default torch threads count the cores it may use, not every core of the host."""

from __future__ import annotations

import os

import pytest

from gossamer.swarm import cli


def test_the_default_counts_the_cores_this_process_may_use(monkeypatch):
    # Pinned to 2 of 64 cores (taskset, a container's cpuset): one thread, not 16.
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cli.usable_cores() == 2 and cli.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert cli.default_threads() == 8


def test_without_an_affinity_the_machine_s_cores_count(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert cli.usable_cores() == 16 and cli.default_threads() == 4


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_on_this_machine_it_is_a_quarter_of_the_usable_cores():
    assert cli.default_threads() == max(1, len(os.sched_getaffinity(0)) // 4)

"""Run a scenario's simulations on a Ray cluster (``gossamer simulate --ray [ADDRESS]``).

Contract:

- What is distributed: the independent runs of a scenario, one Ray task per
  algorithm (``run_algorithm``, the very code ``simulate`` runs in one
  process), each on a Ray worker with one CPU. The runs come back in the
  scenario's order into the same ``Results`` as ``simulate`` builds, so for
  the same scenario and seed every field is equal to the in-process run's:
  bytes, state hashes, losses and curves; simulated times too when
  ``compute_time`` fixes the seconds charged per step (without it each step
  is charged the wall time it took on whatever machine ran it). Only the
  machine's own figures differ (``wall_time_s`` and ``runner.MACHINE_KEYS``).
  Bit-identical values assume the workers run the same torch build on the
  same kind of CPU as the in-process run would (float kernels differ
  between instruction sets).
- What is not distributed: the peers of one run. All peers of a run stay in
  one worker process, because the network model (``transport/sim.py``)
  times every message from a global order of sends and receives in one
  event loop (uplink batches, downlink contention); splitting a run's peers
  over processes would need a distributed discrete-event simulator to give
  the same times and bytes. One run is therefore bounded by one machine's
  memory (1,000 digits peers: under 1 GiB, docs/concepts.md).
- ``address=None`` starts a local Ray instance for the call (and stops it
  afterwards); an address (``ray://host:10001`` or ``host:6379``, or
  ``auto``) connects to that cluster, whose workers then need gossamer and
  its dependencies installed (the same versions as the driver's). With
  ``ray`` already initialised in this process, that instance is used and
  left running.
- Without Ray installed, ``ConfigError`` with one line that says how to
  install it (``pip install 'gossamer[ray]'``); Ray is imported only here,
  only when asked for.
- ``scenario.trace`` and ``scenario.save`` files are written by the worker
  that ran the algorithm, on its machine's file system.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from ..trace.results import RunResult
from .scenario import Scenario

INSTALL_HINT = "pip install 'gossamer[ray]' (or pip install 'ray>=2.9')"


def import_ray() -> Any:
    """The ``ray`` module, or ``ConfigError`` (one line) when it is not installed."""
    try:
        import ray  # noqa: PLC0415 - optional extra, imported only when asked for
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


def _run_one(scenario: Scenario, algorithm: str) -> RunResult:
    """One algorithm's run on a Ray worker: exactly ``runner.run_algorithm``."""
    from .runner import run_algorithm  # noqa: PLC0415 - imported on the worker

    return run_algorithm(scenario, algorithm)


def run_on_ray(scenario: Scenario, algorithms: Sequence[str], *, address: str | None = None,
               progress: Callable[[str, int, int], None] | None = None,
               init_options: dict[str, Any] | None = None) -> list[RunResult]:
    """Run each of ``algorithms`` of ``scenario`` as one Ray task; returns
    their ``RunResult`` in the order given (see the module docstring).
    ``progress(algorithm, steps, steps)`` is called as each run completes
    (a worker's steps are not reported one by one). ``init_options`` go to
    ``ray.init`` when this call starts Ray (e.g. ``{"num_cpus": 2}``)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {}
        if address is None:  # a local instance of our own: no dashboard, workers' logs stay in their files
            options = {"log_to_driver": False, "include_dashboard": False}
        elif not address.startswith("ray://"):  # Ray Client (ray://) takes fewer options
            options = {"log_to_driver": False}
        options.update(init_options or {})
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:
            raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster there: {exc}") from None
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_run_one)
        refs = [task.remote(scenario, algorithm) for algorithm in algorithms]
        runs: list[RunResult] = []
        for algorithm, ref in zip(algorithms, refs):
            runs.append(ray.get(ref))
            if progress is not None:
                progress(algorithm, int(scenario.steps or 0), int(scenario.steps or 0))
        return runs
    finally:
        if started:
            ray.shutdown()

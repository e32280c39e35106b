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
- ``address=None`` starts a new local Ray instance for the call (never one
  that ``RAY_ADDRESS`` or an earlier ``ray start`` points at) and stops it
  afterwards; an address (``host:6379``, a head's port; ``ray://host:10001``,
  Ray Client, which needs ``pip install 'ray[client]'``; or ``auto``)
  connects to that cluster, after checking that something answers there
  (5 s); a malformed address, nothing listening, a missing client package
  or a cluster that wants an authentication token the driver does not have
  is one ``ConfigError`` line, whose workers then need gossamer and
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

import re
import socket
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


_ADDRESS = re.compile(r"(?P<client>ray://)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


def check_address(address: str) -> None:
    """``ConfigError`` (one line) unless ``address`` is ``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT`` with something listening there (checked with a TCP
    connection, 5 s): Ray itself retries a closed port for many minutes."""
    if address == "auto":
        return
    m = _ADDRESS.fullmatch(address)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"--ray {address!r}: expected HOST:PORT (a Ray head, e.g. 10.0.0.5:6379), "
                          f"ray://HOST:PORT (Ray Client) or auto")
    host = m["host"].strip("[]")
    try:
        socket.create_connection((host, int(m["port"])), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: nothing answers at {host}:{m['port']} ({exc.strerror or exc}); "
                          f"is a Ray head running there (ray start --head --port={m['port']})?") from None


def _init_error(address: str | None, exc: BaseException) -> ConfigError:
    text = " ".join(str(exc).split())[:300]
    where = f"--ray {address}" if address else "--ray"
    if "ray[client]" in text:
        return ConfigError(f"{where}: a ray:// address needs Ray's client: pip install 'ray[client]'")
    if "auth" in text.lower():
        return ConfigError(f"{where}: the cluster wants an authentication token this driver does not have "
                           f"(Ray's token authentication: set RAY_AUTH_MODE / the token as for the cluster): {text}")
    return ConfigError(f"{where}: cannot start or reach Ray: {type(exc).__name__}: {text}")


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
        else:
            check_address(address)
            if not address.startswith("ray://"):  # Ray Client (ray://) takes fewer options
                options = {"log_to_driver": False}
        options.update(init_options or {})
        try:
            ray.init(address=address if address is not None else "local", **options)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            raise _init_error(address, exc) from None
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

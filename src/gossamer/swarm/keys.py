"""Default identity files, so a swarm runs on one machine with no set-up.

Contract: ``default_peer_identity()`` returns an identity from
``~/.gossamer/keys/peer-N.pem`` for the smallest ``N`` whose lock file
``peer-N.lock`` this process can lock exclusively (``flock``; the lock is held
for the life of the process), creating the key on first use. Several peers on
one machine therefore get distinct, stable identities without any flag.
``default_coordinator_identity()`` uses ``~/.gossamer/keys/coordinator.pem``.
``GOSSAMER_HOME`` overrides ``~/.gossamer``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from ..transport.identity import Identity

MAX_SLOTS = 1024
_held: list[IO[Any]] = []


def home() -> Path:
    return Path(os.environ.get("GOSSAMER_HOME") or Path.home() / ".gossamer")


def default_coordinator_identity() -> Identity:
    return Identity.load_or_create(home() / "keys" / "coordinator.pem")


def default_peer_identity() -> Identity:
    import fcntl

    keys = home() / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    for n in range(MAX_SLOTS):
        lock = open(keys / f"peer-{n}.lock", "a")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _held.append(lock)
        return Identity.load_or_create(keys / f"peer-{n}.pem")
    raise ConfigError(f"all {MAX_SLOTS} default peer keys in {keys} are in use; pass --key PATH")


def load_identity(path: str | os.PathLike[str] | None, *, coordinator: bool = False) -> Identity:
    """The identity at ``path`` (created on first use), or the default one."""
    if path is not None:
        return Identity.load_or_create(path)
    return default_coordinator_identity() if coordinator else default_peer_identity()

"""Real ``gossamer`` processes on this machine, for benches that run a swarm over TCP.

Contract: ``LocalProcesses(root, env)`` starts ``python -m gossamer.cli ARGS``
processes whose stdout and stderr go to ``root/NAME.out`` and ``root/NAME.err``
(``start``), reads a coordinator's port from its output (``coordinator_port``),
gathers the tails of their logs for an error message (``logs``), and kills
whatever is still running on ``close()`` (or leaving the ``with`` block).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class LocalProcesses:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.cli = [sys.executable, "-m", "gossamer.cli"]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.out", "wb") as out, open(self.root / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(self.cli + args, stdout=out, stderr=err, env=self.env, start_new_session=True)
        self.procs.append(proc)
        self.names.append(name)
        return proc

    def coordinator_port(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int | None:
        """The port the coordinator ``name`` prints it listens on; None if it exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = (self.root / f"{name}.out").read_text()
            if "listening on" in text:
                return int(text.split("listening on")[1].split()[0].rsplit(":", 1)[1])
            if proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def logs(self, exts: Sequence[str] = ("out", "err"), tail: int = 2000) -> str:
        out = []
        for name in self.names:
            for ext in exts:
                f = self.root / f"{name}.{ext}"
                if f.exists():
                    out.append(f"--- {name}.{ext}\n{f.read_text()[-tail:]}")
        return "\n".join(out)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def __enter__(self) -> "LocalProcesses":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

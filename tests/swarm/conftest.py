"""Helpers for swarm tests: real coordinator and peer processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "gossamer.swarm.cli"]


class Procs:
    """Starts processes, remembers them, and kills whatever is left at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.events_path = root / "events.jsonl"
        self.env = dict(os.environ, GOSSAMER_HOME=str(root / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                        MKL_NUM_THREADS="1")

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.root / f"{name}.out", "ab")
        err = open(self.root / f"{name}.err", "ab")
        proc = subprocess.Popen(CLI + args, stdout=out, stderr=err, env={**self.env, **(env or {})},
                                start_new_session=True)
        out.close()
        err.close()
        self.procs[name] = proc
        return proc

    def coordinator(self, *args: str, timeout: float = 90.0) -> int:
        self.start("coordinator", ["coordinator", "--listen", "127.0.0.1:0", "--events", str(self.events_path), "-v",
                                   *args])
        deadline = time.monotonic() + timeout
        out = self.root / "coordinator.out"
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            if "listening on" in text:
                return int(text.split("listening on")[1].split()[0].rsplit(":", 1)[1])
            if self.procs["coordinator"].poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"coordinator did not start: {self.log('coordinator')}")

    def peer(self, name: str, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.start(name, ["peer", "--coordinator", f"127.0.0.1:{port}", "--task", "digits", "--algorithm",
                                 "diloco", "--key", str(self.root / f"{name}.pem"), "--json",
                                 str(self.root / f"{name}.json"), *args], env)

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish within {timeout} s; {self.log(name)}\n"
                                 f"coordinator: {self.log('coordinator')}") from None

    def log(self, name: str) -> str:
        text = ""
        for ext in ("out", "err"):
            p = self.root / f"{name}.{ext}"
            if p.exists():
                text += p.read_text()[-3000:]
        return text

    def report(self, name: str) -> dict:
        return json.loads((self.root / f"{name}.json").read_text())

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.events_path.exists():
            return []
        rows = [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["event"] == kind]

    def wait_event(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if pred(ev):
                    return ev
            time.sleep(0.1)
        raise AssertionError(f"no such event within {timeout} s; coordinator: {self.log('coordinator')}")

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


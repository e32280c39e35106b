#!/usr/bin/env python3
"""Set-up and entry points for a fresh machine: ``python3 dev.py demo`` and
``python3 dev.py test``.

Each creates (or reuses) the virtual environment ``.venv`` next to this file,
installs torch 2.13.0 (CPU) first and then gossamer with its test, fast (numba), examples (transformers) and ray
(``gossamer simulate --ray``, about 240 MB, 15 s) extras, and
runs the demo or the test suite. Only the Python standard library is used
here, so a machine with nothing but Python 3.11 and pip can run it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def sh(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"gossamer needs Python >= 3.11, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".gossamer-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    # torch first, pinned, so nothing later can pull a different (CUDA) build.
    sh(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH)
    sh(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", ".[test,fast,examples,ray]")
    stamp.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "env"):
        print("usage: python3 dev.py demo | test [pytest args] | env", file=sys.stderr)
        return 2
    ensure_env()
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        out = ROOT / "out"
        out.mkdir(exist_ok=True)
        sh(BIN / "gossamer", "simulate", "--task", "charlm", "--algorithms", "ddp,diloco", "--peers", "8",
           "--json", out / "demo.json", "--plot", out / "demo.png", *rest)
    elif cmd == "test":
        sh(PY, "-m", "pytest", "-q", *rest)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)

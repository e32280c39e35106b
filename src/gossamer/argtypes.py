"""argparse value types shared by the command lines (leaf module).

Each raises ``argparse.ArgumentTypeError`` with a message that says what was
expected and what was given; argparse turns it into one error line, exit 2.
"""

from __future__ import annotations

import argparse


def _number(text: str, kind: type, what: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = int(_number(text, int, "a positive integer"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = int(_number(text, int, "a non-negative integer"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(_number(text, float, "a positive number"))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def nonneg_float(text: str) -> float:
    value = float(_number(text, float, "a number >= 0"))
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def probability(text: str) -> float:
    value = float(_number(text, float, "a probability in [0, 1]"))
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {value}")
    return value


def check_writable(path: str) -> None:
    """Fail before any work when ``path`` cannot be written (missing or
    read-only folder): ``ConfigError`` naming the folder."""
    import os
    from pathlib import Path

    from .errors import ConfigError

    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder, not a file")
    folder = target.resolve().parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"cannot write {path}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise ConfigError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write {path}: the folder {folder} is not writable")


class _AlgorithmNames:
    """Formats as ``", ".join(gossamer.algorithms.ALGORITHM_NAMES)``, importing
    the algorithms (and torch) only when help text is printed."""

    def __str__(self) -> str:
        from .algorithms import ALGORITHM_NAMES

        return ", ".join(ALGORITHM_NAMES)


def help_naming_algorithms(action: argparse.Action, text: str) -> None:
    """Give ``action`` the help ``text``, in which ``%(algorithm_names)s``
    stands for every registered algorithm, so help never lists a stale subset."""
    action.algorithm_names = _AlgorithmNames()  # type: ignore[attr-defined]  # read by argparse's %-expansion of help
    action.help = text

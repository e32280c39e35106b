"""Issue 13.1: the docs import only what ``import gossamer`` exports."""

from __future__ import annotations

import re
from pathlib import Path

import gossamer

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def _code(text: str) -> str:
    """The bodies of the page's python and shell code blocks (every fence is paired, whatever its language)."""
    blocks = re.findall(r"^```([\w+-]*)[^\n]*\n(.*?)^```", text, re.S | re.M)
    return "\n".join(body for lang, body in blocks if lang in ("", "python", "py", "bash", "sh", "console", "pycon"))


def test_docs_code_imports_only_top_level_names():
    bad = []
    for page in PAGES:
        code = _code(page.read_text())
        for m in re.finditer(r"(from gossamer\.[\w.]+ import [\w, ]+|import gossamer\.[\w.]+|python -m gossamer\.[\w.]+)", code):
            bad.append(f"{page.name}: {m.group(1)}")
    assert not bad, "docs import internals instead of `from gossamer import ...`:\n" + "\n".join(bad)


def test_every_name_the_docs_import_from_gossamer_is_exported():
    missing = []
    for page in PAGES:
        code = _code(page.read_text())
        for m in re.finditer(r"from gossamer import ([\w, ()]+)", code):
            for name in re.split(r"[,\s()]+", m.group(1)):
                if name and not hasattr(gossamer, name):
                    missing.append(f"{page.name}: {name}")
        for name in set(re.findall(r"\bgossamer\.([A-Za-z_]\w*)\b", code)):
            if not hasattr(gossamer, name):
                missing.append(f"{page.name}: gossamer.{name}")
    assert not missing, missing

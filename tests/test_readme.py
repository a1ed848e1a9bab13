"""The README's layout names every module of edgekd/, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_modules() -> set[str]:
    """``folder/file.py`` for every file named in the "Every module, by folder" block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("Every module, by folder:", 1)[1].split("```", 2)[1]
    named, folder = set(), None
    for line in block.splitlines():
        head = line.split()[0] if line.strip() and not line.startswith(" ") else None
        if head and head.startswith("edgekd/"):
            folder = head.rstrip("/")
        if folder is None:
            continue
        for name in re.findall(r"(?<![\w/.])([\w/]+\.(?:py|sh))\b", line if not head else line[len(head) :]):
            if name != "__init__.py":
                named.add(f"{folder}/{name}")
    return named


def test_the_layout_names_every_module_and_only_those():
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "edgekd").rglob("*.py") if p.name != "__init__.py"}
    on_disk |= {str(p.relative_to(ROOT)) for p in (ROOT / "edgekd").rglob("templates/*")}
    named = layout_modules()
    assert sorted(on_disk - named) == [], "modules the README layout does not name"
    assert sorted(named - on_disk) == [], "names in the README layout that are not modules"

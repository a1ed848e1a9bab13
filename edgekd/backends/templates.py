"""Scripts shipped in artifacts are template files beside their backend (``<backend>/templates/``);
``@NAME@`` marks a value filled in at emit time, already quoted for the shell by the caller."""

from __future__ import annotations

import re
from importlib import resources

_SLOT = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def render(package: str, name: str, **values: object) -> str:
    """The template ``name`` of backend ``package`` with every slot filled; a slot without a value, or a
    value without a slot, is a bug in the backend and fails loudly."""
    text = resources.files(package).joinpath("templates", name).read_text()
    slots = set(_SLOT.findall(text))
    if slots != set(values):
        raise KeyError(f"template {package}/{name}: slots {sorted(slots)} but values {sorted(values)}")
    return _SLOT.sub(lambda m: str(values[m.group(1)]), text)

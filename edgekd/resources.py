"""Where the shipped data folders (targets/, devices/, calibration/) live.

From a source checkout they sit beside the package; an installed wheel carries them as
``edgekd/_data/<kind>`` (see pyproject's package-dir mapping).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """``kind`` is one of targets, devices, calibration."""
    checkout = _PACKAGE.parent / kind
    if checkout.is_dir() and (_PACKAGE.parent / "pyproject.toml").exists():
        return checkout
    return _PACKAGE / "_data" / kind

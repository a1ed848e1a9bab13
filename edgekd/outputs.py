"""The one place that decides what edgekd may write over.

An existing output is replaced only with ``--force``, only when edgekd wrote it (an artifact
directory with an edgekd manifest, a student file with its edgekd record), and never when it is
the working directory, one of its parents, the home directory, or holds one of the inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from edgekd.errors import OutputExistsError, OutputRefusedError, OutputWriteError

MANIFEST = "manifest.json"


def is_edgekd_artifact(path: Path) -> bool:
    """A directory holding a manifest that edgekd wrote (a web app's manifest.json is not one)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "edgekd_version" in data


NAME_MAX = 255  # bytes in one path component on Linux filesystems


def check_name_lengths(out: Path) -> None:
    for part in out.parts:
        if len(part.encode()) > NAME_MAX:
            raise OutputWriteError(
                f"-o {str(out)[:80]}…: the name {part[:24]}… is too long "
                f"({len(part.encode())} bytes; filesystems allow {NAME_MAX})",
                "choose a shorter name for -o",
            )


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _protected_reason(real: Path) -> str | None:
    cwd, home = _real(Path.cwd()), _real(Path.home())
    if real == cwd:
        return "it is the current directory"
    if cwd.is_relative_to(real):
        return "it holds the current directory"
    if real == home or home.is_relative_to(real):
        return "it is your home directory or holds it"
    return None


def _input_inside(real: Path, inputs: Iterable[Path | str | None]) -> Path | None:
    for p in inputs:
        if p is None or not Path(p).exists():
            continue
        if _real(Path(p)).is_relative_to(real):
            return Path(p)
    return None


def check_artifact_output(out: Path, force: bool, inputs: Iterable[Path | str | None] = ()) -> Path:
    """Where the artifact directory ``out`` goes (a symlink's target, so the link stays); raises when it
    may not be written there."""
    out = Path(out)
    check_name_lengths(out)
    real = _real(out)
    reason = _protected_reason(real)
    if reason:
        raise OutputRefusedError(
            f"refusing to write the artifact to {out}: {reason}",
            "choose a new directory for -o, e.g. -o build/model-int8",
        )
    inside = _input_inside(real, inputs)
    if inside is not None:
        raise OutputRefusedError(
            f"refusing to write the artifact to {out}: it holds the input {inside}",
            "choose an -o directory that holds none of the inputs",
        )
    if not real.exists():
        if out.is_symlink():
            raise OutputRefusedError(
                f"-o {out} is a symlink to {real}, which does not exist", "point -o at a real directory or fix the link"
            )
        return real
    if not real.is_dir():
        raise OutputExistsError(
            f"output {out} exists and is a file, not an artifact directory",
            "choose another -o; --force replaces edgekd artifact directories only",
        )
    if not force:
        raise OutputExistsError(f"output {out} already exists")
    if not is_edgekd_artifact(real):
        raise OutputRefusedError(
            f"refusing to replace {out}: it is not an edgekd artifact (no edgekd {MANIFEST})",
            "--force replaces only directories that edgekd wrote; choose another -o",
        )
    return real


def check_file_output(out: Path, force: bool, is_ours, inputs: Iterable[Path | str | None] = ()) -> None:
    """A single output file (a student's weights, its record): refuses inputs and directories, and
    replaces an existing file only with ``force`` and when ``is_ours(path)`` says edgekd wrote it."""
    out = Path(out)
    check_name_lengths(out)
    real = _real(out)
    for p in inputs:
        if p is not None and Path(p).exists() and _real(Path(p)) == real:
            raise OutputRefusedError(f"refusing to write {out}: it is the input {p}", "choose another -o")
    if not out.exists():
        return
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory", "pass a file name for -o, e.g. -o student.pt")
    if not force:
        raise OutputExistsError(f"{out} exists", "pass --force to replace it, or choose another -o")
    if not is_ours(out):
        raise OutputRefusedError(
            f"refusing to replace {out}: edgekd did not write it",
            "--force replaces only files that edgekd wrote; choose another -o",
        )

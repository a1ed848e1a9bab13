"""The artifact directory: built in a temporary sibling, renamed into place only when complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgekd.outputs import MANIFEST, check_artifact_output
REPORT = "report.md"
RESULTS_DIR = "results"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactWriter:
    """``with ArtifactWriter(out, force, inputs) as tmp:`` build into ``tmp``; on success it becomes ``out``.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and ``out``,
    if it existed, is left exactly as it was. What may be replaced is decided by ``edgekd.outputs``;
    a symlinked ``out`` is written where it points, so the link stays.
    """

    def __init__(self, out: str | Path, force: bool = False, inputs=()):
        self.requested = Path(out)
        self.force, self.inputs = force, tuple(inputs)
        self.out = check_artifact_output(self.requested, force, self.inputs)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.out = check_artifact_output(self.requested, self.force, self.inputs)
        # Parent folders this writer creates, outermost first; removed again (when empty) on failure.
        self._made_parents = [p for p in reversed(self.out.parents) if not p.exists()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.edgekd-tmp-", dir=self.out.parent))
        return self.tmp

    def _discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for p in reversed(self._made_parents):
            try:
                p.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            return False
        old = None
        try:
            check_artifact_output(self.requested, self.force, self.inputs)  # someone may have created it meanwhile
            if self.out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.edgekd-old-", dir=self.out.parent))
                os.rmdir(old)
                os.rename(self.out, old)
            os.rename(self.tmp, self.out)
        except BaseException:
            if old is not None and old.exists():
                os.rename(old, self.out)
            self._discard()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def file_entries(root: Path, names: list[str]) -> list[dict[str, Any]]:
    return [{"path": n, "bytes": (root / n).stat().st_size, "sha256": sha256_file(root / n)} for n in sorted(names)]


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(artifact: str | Path) -> dict[str, Any]:
    from edgekd.errors import InputNotFoundError

    path = Path(artifact) / MANIFEST
    if not path.exists():
        raise InputNotFoundError(f"{artifact} is not an edgekd artifact (no {MANIFEST})",
                                 "pass the directory that `edgekd compile -o` wrote")
    return json.loads(path.read_text())


def verify_files(artifact: Path, manifest: dict[str, Any]) -> list[str]:
    """Names of listed files whose bytes no longer match the manifest."""
    return [e["path"] for e in manifest["files"]
            if not (artifact / e["path"]).exists() or sha256_file(artifact / e["path"]) != e["sha256"]]

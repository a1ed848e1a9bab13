"""The artifact directory: built in a temporary sibling, renamed into place only when complete."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from edgekd.errors import ArtifactError, InputNotFoundError
from edgekd.outputs import MANIFEST

REPORT = "report.md"
RESULTS_DIR = "results"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(root: Path, names: list[str]) -> list[dict[str, Any]]:
    return [{"path": n, "bytes": (root / n).stat().st_size, "sha256": sha256_file(root / n)} for n in sorted(names)]


def finite_json(value: Any) -> Any:
    """``value`` with NaN/Inf floats as None: JSON has no NaN, and a manifest must parse everywhere."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite_json(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


# What bench and report read from a manifest: without these an artifact cannot be run.
REQUIRED = {"artifact": ("model_file", "runtime", "backend"), "target": ("name",), "files": (), "inputs": ()}


def read_manifest(artifact: str | Path) -> dict[str, Any]:
    path = Path(artifact) / MANIFEST
    if not Path(artifact).is_dir():
        raise InputNotFoundError(
            f"{artifact} is not an artifact directory", "pass the directory that `edgekd compile -o` wrote"
        )
    if not path.exists():
        raise InputNotFoundError(
            f"{artifact} is not an edgekd artifact (no {MANIFEST})", "pass the directory that `edgekd compile -o` wrote"
        )
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from e
    missing = [
        f"{k}.{f}" if f else k
        for k, fields in REQUIRED.items()
        for f in (fields or ("",))
        if not isinstance(manifest, dict)
        or not isinstance(manifest.get(k), (dict, list))
        or (f and f not in manifest[k])
    ]
    bad_files = (
        isinstance(manifest, dict)
        and isinstance(manifest.get("files"), list)
        and any(not isinstance(e, dict) or not {"path", "sha256"} <= e.keys() for e in manifest["files"])
    )
    if missing or bad_files or not manifest.get("inputs"):
        raise ArtifactError(f"{path} is incomplete: missing {', '.join(missing) or 'file entries or inputs'}")
    return manifest


def verify_files(artifact: Path, manifest: dict[str, Any]) -> list[str]:
    """Names of listed files whose bytes no longer match the manifest."""
    return [
        e["path"]
        for e in manifest["files"]
        if not (artifact / e["path"]).exists() or sha256_file(artifact / e["path"]) != e["sha256"]
    ]

"""What ``manifest.json`` says about an artifact."""

from __future__ import annotations

import importlib.metadata
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekd import __version__
from edgekd.artifact import file_entries
from edgekd.backends.base import Backend
from edgekd.state import CompileState

MANIFEST_VERSION = 1
_TOOLCHAIN = ("torch", "onnx", "onnx-ir", "onnxruntime", "numpy")


def toolchain_versions(backend: Backend) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in _TOOLCHAIN:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out.update(backend.toolchain_versions())
    return out


def build_manifest(state: CompileState, backend: Backend, extra_files: list[str]) -> dict[str, Any]:
    main = backend.main_file(state.artifact_files)
    inputs, outputs = backend.io(state.workdir / main)
    pre = state.input.preprocess.to_dict()
    input_dicts = []
    for t in inputs:
        d = t.to_dict()
        d["layout"] = d["layout"] or pre["layout"]
        d["preprocessing"] = pre
        input_dicts.append(d)
    return {
        "manifest_version": MANIFEST_VERSION,
        "edgekd_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": state.spec.to_dict(),
        "artifact": {"model_file": main, "runtime": backend.runtime, "backend": backend.name,
                     "precision": state.precision},
        "source": state.metrics.get("source"),
        "toolchain": toolchain_versions(backend),
        "inputs": input_dicts,
        "outputs": [t.to_dict() for t in outputs],
        "labels": list(state.labels) if state.labels else None,
        "files": file_entries(state.workdir, state.artifact_files + extra_files),
        "passes": [{"name": r.name, "seconds": r.seconds, "changed": r.changed, "metrics": r.metrics}
                   for r in state.records],
        "profile": state.metrics.get("profile"),
        "fidelity": state.metrics.get("fidelity"),
        "calibration": state.metrics.get("calibration"),
        "accuracy": state.metrics.get("accuracy"),
        "config": state.config.to_dict(),
    }


def relative_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

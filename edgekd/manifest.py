"""What ``manifest.json`` says about an artifact."""

from __future__ import annotations

import importlib.metadata
import platform
from datetime import datetime, timezone
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
        if t.name in state.qparams and "quantization" not in d:  # float input quantized first thing in the graph
            d["quantization"] = state.qparams[t.name]
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
        "outputs": [_with_qparams(t.to_dict(), state) for t in outputs],
        "labels": list(state.labels) if state.labels else None,
        "files": file_entries(state.workdir, state.artifact_files + extra_files),
        "passes": [{"name": r.name, "seconds": r.seconds, "changed": r.changed, "metrics": r.metrics}
                   for r in state.records],
        "profile": state.metrics.get("profile"),
        "fidelity": state.metrics.get("fidelity"),
        "calibration": state.metrics.get("calibration"),
        "quantization": _quantization(state),
        "accuracy": state.metrics.get("accuracy"),
        "distill": state.metrics.get("distill"),
        "sparsity": state.metrics.get("sparsity"),
        "backend_report": state.metrics.get("backend"),  # what the backend checked and recorded
        "config": state.config.to_dict(),
    }


def _with_qparams(d: dict[str, Any], state: CompileState) -> dict[str, Any]:
    if d["name"] in state.qparams and "quantization" not in d:
        d["quantization"] = state.qparams[d["name"]]
    return d


def _quantization(state: CompileState) -> dict[str, Any] | None:
    if state.calibration is None:
        return None
    quant = state.spec.raw.get("quantization", {})
    return {
        "activation_scheme": state.calibration.scheme,
        "weights": "int8 per-channel symmetric [-127, 127], zero point 0",
        "bias": "int32, scale = input scale x weight scale",
        "why": quant.get("why"),
        "layers_in_float": sorted(state.keep_float | set(state.config.keep_float)),
        "error_vs_float": state.metrics.get("quantization_error"),
        "sensitivity": state.metrics.get("sensitivity"),
        "accuracy_budget": state.metrics.get("accuracy_budget"),
        "tensors": state.qparams,
    }

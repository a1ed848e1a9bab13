"""What ``manifest.json`` says about an artifact, built from the pass records in the state."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from edgekd import __version__
from edgekd.artifact import file_entries
from edgekd.backends.base import Backend
from edgekd.state import CompileState

MANIFEST_VERSION = 1
_TOOLCHAIN = ("torch", "onnx", "onnx-ir", "onnxruntime", "numpy")
# Manifest entries filled by a pass's output (PassOutput.section), None when that pass did not run.
SECTIONS = (
    "fidelity",
    "calibration",
    "accuracy",
    "distill",
    "sparsity",
    "qat",
    "backend_report",
    "int8_coverage",
    "speed_check",
    "nms",
)


def toolchain_versions(backend: Backend) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in _TOOLCHAIN:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out.update(backend.toolchain_versions())
    return out


def pass_sections(state: CompileState) -> dict[str, Any]:
    """Each section from the latest pass output that fills it."""
    found: dict[str, Any] = {}
    for record in state.records:
        if record.output is not None and record.output.section:
            found[record.output.section] = record.output.to_manifest()
    return {name: found.get(name) for name in SECTIONS}


def build_manifest(
    state: CompileState, backend: Backend, extra_files: list[str], profile: dict | None, status: str
) -> dict[str, Any]:
    main = backend.main_file(state.artifact_files)
    inputs, outputs = backend.io(state.workdir / main)
    pre = state.input.preprocess.to_dict()
    input_dicts = []
    for t in inputs:
        d = _with_qparams(t.to_dict(), state)  # a float input is quantized first thing in the graph
        d["layout"] = d["layout"] or pre["layout"]
        d["preprocessing"] = pre
        input_dicts.append(d)
    sections = pass_sections(state)
    return {
        "manifest_version": MANIFEST_VERSION,
        "edgekd_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": state.spec.to_dict(),
        "artifact": {
            "model_file": main,
            "runtime": backend.runtime,
            "backend": backend.name,
            "precision": state.precision,
        },
        "source": asdict(state.source) if state.source else None,
        "toolchain": toolchain_versions(backend),
        "inputs": input_dicts,
        "outputs": [_with_qparams(t.to_dict(), state) for t in outputs],
        "labels": list(state.labels) if state.labels else None,
        "files": file_entries(state.workdir, state.artifact_files + extra_files),
        "passes": [
            {"name": r.name, "seconds": r.seconds, "changed": r.changed, "metrics": r.metrics} for r in state.records
        ],
        "profile": profile,
        "fidelity": sections["fidelity"],
        "calibration": sections["calibration"],
        "quantization": _quantization(state),
        "accuracy": sections["accuracy"],
        "distill": sections["distill"],
        "sparsity": sections["sparsity"],
        "qat": sections["qat"],
        "backend_report": sections["backend_report"],
        "int8_coverage": sections["int8_coverage"],
        "speed_check": sections["speed_check"],
        "nms": sections["nms"] or _runner_nms(state),
        "config": state.config.to_dict(),
        "status": status,
    }


def _runner_nms(state: CompileState) -> dict[str, Any] | None:
    """Where a detector's NMS runs when the graph has none: in the runner, in numpy."""
    from edgekd.ir.detector import looks_like_detector

    if state.onnx_model is None or not looks_like_detector(state.onnx_model.graph):
        return None
    return {
        "where": "runner",
        "module": "edgekd.detect.nms",
        "graph_nms_available": state.spec.graph_nms,  # --nms would put it in the artifact
        "why": state.spec.raw.get("detection", {}).get("why"),
    }


def _with_qparams(d: dict[str, Any], state: CompileState) -> dict[str, Any]:
    if d["name"] in state.qparams and "quantization" not in d:
        d["quantization"] = state.qparams[d["name"]]
    return d


def _quantization(state: CompileState) -> dict[str, Any] | None:
    from edgekd.passes.accuracy_budget import AccuracyBudgetOutput
    from edgekd.passes.quantize import QuantizeOutput

    if state.calibration is None:
        return None
    quantize, budget = state.output(QuantizeOutput), state.output(AccuracyBudgetOutput)
    return {
        "activation_scheme": state.calibration.scheme,
        "ranges_from": state.calibration.method,  # the calibration's observer, or qat
        "weights": "int8 per-channel symmetric [-127, 127], zero point 0",
        "bias": "int32, scale = input scale x weight scale",
        "why": state.spec.raw.get("quantization", {}).get("why"),
        "layers_in_float": sorted(state.keep_float),
        "error_vs_float": quantize.error_vs_float if quantize else None,
        "sensitivity": [asdict(s) for s in state.sensitivity] or None,
        "accuracy_budget": budget.to_manifest() if budget else None,
        "tensors": state.qparams,
    }

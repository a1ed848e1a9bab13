"""The last step of a compile, in one place: labels, the model profile, the manifest and the report,
written into the artifact's working directory before it is renamed into place."""

from __future__ import annotations

from typing import Any

from edgekd.artifact import MANIFEST, write_json
from edgekd.backends.base import Backend
from edgekd.manifest import build_manifest
from edgekd.report import write_report
from edgekd.state import CompileState

LABELS = "labels.txt"


def finalize_artifact(state: CompileState, backend: Backend, failure: Exception | None = None) -> dict[str, Any]:
    """Writes labels.txt (when labels are known), manifest.json and report.md; returns the manifest.
    ``failure``: the fidelity failure a --keep-failed artifact is kept with, recorded as its status."""
    import onnx_ir as ir

    from edgekd.ir.profile import profile_onnx

    extra = []
    if state.labels:
        (state.workdir / LABELS).write_text("\n".join(state.labels) + "\n")
        extra.append(LABELS)
    profile = profile_onnx(ir.to_proto(state.onnx_model)).to_dict() if state.onnx_model is not None else None
    status = "ok" if failure is None else f"failed: {getattr(failure, 'message', failure)}"
    manifest = build_manifest(state, backend, extra, profile, status)
    write_json(state.workdir / MANIFEST, manifest)
    write_report(state.workdir)
    return manifest

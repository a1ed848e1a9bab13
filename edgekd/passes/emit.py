"""Hands the graph to the target's backend, which writes the artifact's model file(s)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekd.backends import get_backend
from edgekd.backends.base import EmitInput
from edgekd.config import CompileConfig
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, ONNX_MODEL, CompileState, PassOutput


@dataclass(frozen=True)
class EmitOutput(PassOutput):
    section = "backend_report"

    backend: str
    bytes: int
    files: tuple[str, ...]
    report: dict | None = field(default=None)  # what the backend checked and recorded

    def to_manifest(self) -> dict | None:
        return self.report

    def summary(self) -> dict:
        return {"backend": self.backend, "bytes": self.bytes}


class EmitPass(Pass):
    name = "emit"
    requires = frozenset({ONNX_MODEL})
    provides = frozenset({EMITTED})

    def __init__(self, backend: str):
        self.backend = get_backend(backend)

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "EmitPass":
        return cls(spec.backend)

    def run(self, state: CompileState) -> PassResult:
        self.backend.require()
        result = self.backend.emit(
            EmitInput(
                model=state.onnx_model,
                spec=state.spec,
                precision=state.precision,
                quantized=state.quantized,
                qparams=state.qparams,
                keep_float=frozenset(state.keep_float),
                input_shape=tuple(state.input.shape),
                float_onnx=state.float_onnx,
                outdir=state.workdir,
                float_region=state.float_region,
            )
        )
        state.artifact_files.extend(result.files)
        size = sum((state.workdir / f).stat().st_size for f in result.files)
        output = EmitOutput(self.backend.name, size, tuple(result.files), result.report)
        if result.failure is not None:
            result.failure.output = output  # the files and the report stay for --keep-failed
            raise result.failure
        return PassResult(state, changed=True, output=output)

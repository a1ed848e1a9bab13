"""Hands the graph to the target's backend, which writes the artifact's model file(s)."""

from __future__ import annotations

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, ONNX_MODEL, CompileState


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
        files = self.backend.emit(state, state.workdir)
        state.artifact_files.extend(files)
        sizes = {f: (state.workdir / f).stat().st_size for f in files}
        return PassResult(state, changed=True, metrics={"backend": self.backend.name, "bytes": sum(sizes.values())})

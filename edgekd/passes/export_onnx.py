"""torch.nn.Module → ONNX graph, at the opset the target spec asks for."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from edgekd.config import CompileConfig
from edgekd.ir.graph import op_counts
from edgekd.models.export import export_onnx
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, TORCH_MODEL, CompileState, PassOutput


@dataclass(frozen=True)
class ExportOutput(PassOutput):
    opset: int
    nodes: int
    ops: dict[str, int]


class ExportOnnxPass(Pass):
    name = "export"
    requires = frozenset({TORCH_MODEL})
    provides = frozenset({ONNX_MODEL})

    def __init__(self, opset: int, fold_constants: bool = True):
        self.opset = opset
        self.fold_constants = fold_constants

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "ExportOnnxPass":
        return cls(spec.opset)

    def run(self, state: CompileState) -> PassResult:
        proto = export_onnx(state.torch_model, state.input.shape, self.opset, state.input.name, self.fold_constants)
        state.onnx_model = ir.from_proto(proto)
        return PassResult(
            state,
            changed=True,
            output=ExportOutput(self.opset, len(proto.graph.node), op_counts(state.onnx_model.graph)),
        )

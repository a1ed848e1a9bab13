"""torch.nn.Module → ONNX graph, at the opset the target spec asks for."""

from __future__ import annotations

import io
import warnings

import onnx
import onnx_ir as ir
import torch

from edgekd.config import CompileConfig
from edgekd.errors import InputShapeError
from edgekd.ir.graph import op_counts
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, TORCH_MODEL, CompileState


class ExportOnnxPass(Pass):
    name = "export"
    requires = frozenset({TORCH_MODEL})
    provides = frozenset({ONNX_MODEL})

    def __init__(self, opset: int, fold_constants: bool = True):
        self.opset = opset
        # With folding, torch's exporter already folds eval-mode BN into Conv; without it, BN
        # nodes stay for FuseConvBnReluPass (as they do in graphs from other frameworks).
        self.fold_constants = fold_constants

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "ExportOnnxPass":
        return cls(spec.opset)

    def run(self, state: CompileState) -> PassResult:
        model = state.torch_model.eval()
        x = torch.zeros(state.input.shape, dtype=torch.float32)
        with torch.no_grad():
            try:
                outputs = model(x)
            except RuntimeError as e:
                raise InputShapeError(f"the model does not accept input shape {tuple(state.input.shape)}: {e}") from e
        n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        named = getattr(model, "output_names", None)  # e.g. a decoded detector's ("boxes", "scores")
        if named and len(named) == n_out:
            output_names = list(named)
        else:
            output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=self.opset,
                              input_names=[state.input.name], output_names=output_names,
                              do_constant_folding=self.fold_constants)
        proto = onnx.load_from_string(buf.getvalue())
        onnx.checker.check_model(proto)
        state.onnx_model = ir.from_proto(proto)
        return PassResult(state, changed=True, metrics={"opset": self.opset, "nodes": len(proto.graph.node),
                                                        "ops": op_counts(state.onnx_model.graph)})

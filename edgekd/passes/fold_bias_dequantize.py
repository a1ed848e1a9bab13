"""Legalization for runtimes whose DequantizeLinear reads int8 only (TensorRT): int32 bias
DequantizeLinear nodes become float constants with bit-identical values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgekd.config import CompileConfig
from edgekd.ir.graph import const_array, new_initializer
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import QUANTIZED, CompileState, PassOutput


def fold_bias_dequantize(model: "ir.Model") -> int:
    """Replaces DequantizeLinear nodes of int32 constants (quantized biases) by their float values,
    computed as DequantizeLinear does ((q - zero_point) * scale in float32); returns how many."""
    graph = model.graph
    folded = 0
    for node in list(graph):
        if node.op_type != "DequantizeLinear":
            continue
        q, scale = const_array(node.inputs[0]), const_array(node.inputs[1])
        if q is None or scale is None or q.dtype != np.int32:
            continue
        zp = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros_like(q)
        axis = node.attributes.get_int("axis", 1)
        shape = [1] * q.ndim
        if scale.ndim == 1 and q.ndim:
            shape[axis % q.ndim] = scale.size
        values = (q.astype(np.int32) - zp.reshape(shape if zp.ndim else ()).astype(np.int32)).astype(
            np.float32
        ) * scale.astype(np.float32).reshape(shape if scale.ndim else ())
        out = node.outputs[0]
        name = out.name.removesuffix("_DequantizeLinear_out") or out.name
        value = new_initializer(graph, name, values.astype(np.float32))
        ir.convenience.replace_all_uses_with(out, value)
        graph.remove(node, safe=True)
        folded += 1
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        graph.initializers.pop(name)
    return folded


@dataclass(frozen=True)
class FoldBiasOutput(PassOutput):
    bias_dequantize_folded_to_float: int


class FoldBiasDequantizePass(Pass):
    name = "fold-bias-dequantize"
    requires = frozenset({QUANTIZED})

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return (config.precision or spec.default_precision) == "int8"

    def run(self, state: CompileState) -> PassResult:
        folded = fold_bias_dequantize(state.onnx_model)
        return PassResult(state, changed=bool(folded), output=FoldBiasOutput(folded))

"""Parameters and multiply-accumulates of an ONNX graph (Conv, Gemm and MatMul; like most papers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import shape_inference


@dataclass(frozen=True)
class GraphProfile:
    params: int
    macs: int
    ops: dict[str, int]

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "ops": self.ops}


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = dims
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def profile_onnx(model: onnx.ModelProto) -> GraphProfile:
    g = model.graph
    params = sum(int(np.prod(i.dims)) for i in g.initializer
                 if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                                    onnx.TensorProto.UINT8, onnx.TensorProto.DOUBLE))
    shapes = _shapes(model)
    macs, ops = 0, {}
    for node in g.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w_name = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
            w = shapes.get(w_name)
            if w:
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
            a = shapes.get(node.input[0])
            if a:
                k = a[0] if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute) else a[-1]
                macs += int(np.prod(out)) * k
    return GraphProfile(params, macs, dict(sorted(ops.items())))

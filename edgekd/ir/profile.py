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


def node_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates of each Conv/Gemm/MatMul node, by node name (``op_index`` for an unnamed one)."""
    shapes = _shapes(model)
    out: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        key = node.name or f"{node.op_type}_{i}"
        shape = shapes.get(node.output[0])
        if shape is None:
            continue
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes.get(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
            if w:
                out[key] = int(np.prod(shape)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
            a = shapes.get(node.input[0])
            if a:
                k = (
                    a[0]
                    if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
                    else a[-1]
                )
                out[key] = int(np.prod(shape)) * k
    return out


def profile_onnx(model: onnx.ModelProto) -> GraphProfile:
    g = model.graph
    params = sum(
        int(np.prod(i.dims))
        for i in g.initializer
        if i.data_type
        in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.INT8,
            onnx.TensorProto.UINT8,
            onnx.TensorProto.DOUBLE,
        )
    )
    ops: dict[str, int] = {}
    for node in g.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return GraphProfile(params, sum(node_macs(model).values()), dict(sorted(ops.items())))

"""What ONNX Runtime executes: the graph after its optimizer (``SessionOptions.optimized_model_filepath``).

Its QDQ optimizer replaces each DequantizeLinear → op → QuantizeLinear unit it has an integer kernel
for by one node (QLinearConv, QLinearAdd, QGemm, ...) named after the op (``<name>_token_<n>``); an
op left between a DQ and a Q runs in float on dequantized values."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from edgekd.backends.base import ExecutedLayer

INTEGER_OPS = frozenset(
    {
        "QGemm",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QAttention",
        "DynamicQuantizeLinear",
    }
)
# Steps that only move, reshape or (de)quantize data: not compute layers.
NOT_LAYERS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "Transpose",
        "ReorderInput",
        "ReorderOutput",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Shape",
        "Gather",
        "Slice",
        "Split",
        "Constant",
        "Cast",
    }
)
_SUFFIX = re.compile(r"(_token_\d+)+$|/duplicated$")
_DEQUANTIZED = re.compile(r"(_DequantizeLinear|_dequantized)$")


def is_integer(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in INTEGER_OPS


def source_name(name: str) -> str:
    return _SUFFIX.sub("", name)


def optimized_graph(model_path: Path):
    """The model as ONNX Runtime's CPU session optimizes it (all levels, as ``runtime.ort_session``)."""
    import onnx

    from edgekd.runtime import ort_session

    with tempfile.TemporaryDirectory(prefix="edgekd-ort-") as d:
        out = Path(d) / "optimized.onnx"
        ort_session(model_path, optimized_path=out)
        return onnx.load(str(out))


def _base(tensor: str) -> str:
    """The tensor a dequantized value stands for: ONNX Runtime renames a DQ's output after the DQ node."""
    return _DEQUANTIZED.sub("", source_name(tensor))


def executed_layers(model_path: Path, model) -> list[ExecutedLayer]:
    """``model``: the emitted graph (an ``onnx_ir`` model), whose node names and MACs the layers carry.
    A node ONNX Runtime made up (the HardSigmoid and Mul it decomposes a HardSwish into) takes the name
    of the emitted node it replaces: the one reading the same tensor that is gone from the optimized graph."""
    import onnx_ir as ir

    from edgekd.ir.profile import node_macs

    optimized = optimized_graph(model_path).graph.node
    op_types = {n.name: n.op_type for n in model.graph}
    kept = {source_name(n.name) for n in optimized}
    replaced: dict[str, str] = {}
    for n in model.graph:
        if n.name not in kept and n.op_type not in NOT_LAYERS:
            for v in n.inputs:
                if v is not None:
                    replaced.setdefault(_base(v.name), n.name)
    macs = node_macs(ir.to_proto(model))
    layers = []
    for node in optimized:
        if node.op_type in NOT_LAYERS:
            continue
        name = source_name(node.name)
        if name not in op_types:
            name = next((replaced[_base(i)] for i in node.input if _base(i) in replaced), name or node.op_type)
        layers.append(
            ExecutedLayer(
                name, op_types.get(name, node.op_type), is_integer(node.op_type), node.op_type, macs.get(name, 0)
            )
        )
    return layers

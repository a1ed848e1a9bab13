"""Which values of a graph carry data (activations) and which carry shapes or indices.

Quantization belongs on data only. A model that computes shapes at run time (``Shape → Gather →
Concat → Reshape``, or ``Shape → Cast(float) → Mul → Cast`` for an interpolation size) has float and
integer values that never touch an image; a Q/DQ pair there breaks the graph or its shapes.
"""

from __future__ import annotations

import onnx_ir as ir

# Ops whose outputs describe their input's shape or positions, not its values.
SHAPE_OPS = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin"})


def data_values(graph: ir.Graph) -> set[ir.Value]:
    """Values computed from a graph input through value-carrying edges (not through shape queries)."""
    data = {v for v in graph.inputs if not v.is_initializer()}
    for node in graph:  # graph order is topological
        if node.op_type in SHAPE_OPS:
            continue
        if any(v is not None and v in data for v in node.inputs):
            data.update(o for o in node.outputs)
    return data


def is_float_data(value: ir.Value | None, data: set[ir.Value]) -> bool:
    """A float32 activation: derived from the input's values (an unknown type counts as float only
    for such values)."""
    if value is None or value not in data:
        return False
    return value.dtype in (None, ir.DataType.FLOAT)

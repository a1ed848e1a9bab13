"""Small queries and edits on an ``onnx_ir`` graph, for the ONNX-stage passes that change a model.

Read-only checks of an ``onnx.ModelProto`` (the backends' rules and tables) use
``edgekd.ir.proto_index.GraphIndex`` instead, which needs no conversion and changes nothing.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

FUSED_ACTIVATION = "edgekd.fused_activation"  # Conv node metadata: the activation fused after it
FUSED_INTO = "edgekd.fused_into"  # activation node metadata: the Conv it is fused into
FUSED_ADD = "edgekd.fused_add"  # Conv node metadata: the residual Add the runtime sums into it


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind a value (initializer or Constant node), or None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The one node reading ``value``, if exactly one does and it is not also a graph output."""
    consumers = value.consumers()
    if len(consumers) != 1 or value.is_graph_output():
        return None
    return consumers[0]


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    existing = {v for v in graph.initializers}
    base, k = name, 1
    while name in existing:
        name, k = f"{base}_{k}", k + 1
    array = np.array(array, order="C")  # not ascontiguousarray: it turns 0-d scalars into shape (1,)
    value = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value


def bypass(graph: ir.Graph, node: ir.Node, replacement: ir.Value) -> None:
    """Removes a one-output ``node``, sending its readers (and graph outputs) to ``replacement``."""
    out = node.outputs[0]
    was_output = out.is_graph_output()
    ir.convenience.replace_all_uses_with(out, replacement, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if was_output:
        replacement.name = out.name


def op_counts(graph: ir.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))

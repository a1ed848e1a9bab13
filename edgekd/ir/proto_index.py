"""Read-only lookups over an ``onnx.ModelProto``: constants, producers, consumers, opset and shapes.

The backends' rules and tables check the very proto an artifact will hold, node by node, and change
nothing; they read it through :class:`GraphIndex`. The ONNX-stage passes edit graphs as ``onnx_ir``
models and use ``edgekd.ir.graph`` instead: edits there, read-only checks of protos here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")
PASS_THROUGH = ("Identity", "DequantizeLinear")  # what constants_through looks through by default
_LIST_ATTRS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def node_attrs(node: "onnx.NodeProto") -> dict[str, Any]:
    """A node's attributes as Python values (strings stay bytes, as ONNX stores them)."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def attr(node: "onnx.NodeProto", name: str, default: Any = None) -> Any:
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def default_opset(model: "onnx.ModelProto") -> int | None:
    """The version of the default (ai.onnx) domain the model imports, or None."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)


def constant_node_value(node: "onnx.NodeProto") -> np.ndarray | None:
    """The tensor a Constant node produces (``value`` or ``value_float(s)``/``value_int(s)``); None for the
    kinds no check reads (sparse and string values)."""
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in _LIST_ATTRS:
            return np.asarray(helper.get_attribute_value(a), _LIST_ATTRS[a.name])
    return None


def dtype_name(elem_type: int) -> str:
    """numpy's name for an ONNX element type (``float32``), or ONNX's own lower-cased (``bfloat16``)."""
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


class GraphIndex:
    """Indexes over one ONNX graph, built once and never written back.

    ``constants``: initializers and Constant-node outputs by name. ``producer``: tensor name → the node
    writing it. ``consumers``: tensor name → ``(node, input index)`` for every use. ``outputs``: the graph's
    output names. ``shapes``/``dtypes``: what the model declares (inputs, value_info, outputs) plus every
    constant's; :meth:`with_shapes` adds what ONNX shape inference finds. A dimension ONNX does not know
    is its symbolic name, or ``"?"``.
    """

    def __init__(self, model: "onnx.ModelProto"):
        self.model = model
        self.nodes = list(model.graph.node)
        self.opset = default_opset(model)
        self.outputs = {o.name for o in model.graph.output}
        self.shapes: dict[str, list[int | str]] = {}
        self.dtypes: dict[str, str] = {}
        self._read_value_infos()
        self.constants = self._read_constants()
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((n, i))

    @classmethod
    def with_shapes(cls, model: "onnx.ModelProto", input_shape: tuple[int, ...] | None = None) -> "GraphIndex":
        """The index of a shape-inferred copy of ``model``, its one graph input pinned to ``input_shape``
        (when given and of the same rank). A graph ONNX cannot infer keeps the shapes it declares."""
        import onnx

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if input_shape is not None:
            _pin_input(copy, input_shape)
        try:
            copy = onnx.shape_inference.infer_shapes(copy)
        except Exception:  # noqa: BLE001 — a graph ONNX cannot infer is still checked, with unknown shapes
            pass
        return cls(copy)

    def _read_value_infos(self) -> None:
        g = self.model.graph
        for info in (*g.input, *g.value_info, *g.output):
            t = info.type.tensor_type
            if t.HasField("shape"):
                self.shapes[info.name] = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
                ]
            if t.elem_type:
                self.dtypes[info.name] = dtype_name(t.elem_type)

    def _read_constants(self) -> dict[str, np.ndarray]:
        from onnx import numpy_helper

        consts: dict[str, np.ndarray] = {}
        for init in self.model.graph.initializer:
            arr = consts[init.name] = numpy_helper.to_array(init)
            self.shapes[init.name] = list(arr.shape)  # an initializer is what it holds, whatever value_info says
            self.dtypes[init.name] = arr.dtype.name
        for n in self.nodes:
            value = constant_node_value(n) if n.op_type == "Constant" and n.output else None
            if value is not None:
                consts[n.output[0]] = value
                self.shapes.setdefault(n.output[0], list(value.shape))
                self.dtypes.setdefault(n.output[0], value.dtype.name)
        return consts

    # --- per node ------------------------------------------------------------------------------------

    @staticmethod
    def input(node, i: int) -> str | None:
        """The name of ``node``'s input ``i``, or None when it is absent or left empty."""
        return node.input[i] if len(node.input) > i and node.input[i] else None

    def const(self, node, i: int) -> np.ndarray | None:
        """``node``'s input ``i`` when it is a constant."""
        name = self.input(node, i)
        return self.constants.get(name) if name else None

    def produced_by(self, name: str | None, op_type: str):
        """The node writing ``name`` when it is an ``op_type`` node, else None."""
        node = self.producer.get(name) if name else None
        return node if node is not None and node.op_type == op_type else None

    def readers(self, name: str) -> list:
        """The nodes reading ``name``, once per use, in graph order."""
        return [n for n, _ in self.consumers.get(name, [])]

    def weight(self, node) -> np.ndarray | None:
        """A weighted node's weight (input 1) as stored: the constant behind a DequantizeLinear (int8 for a
        quantized graph), or the float constant itself."""
        name = self.input(node, 1)
        if name is None:
            return None
        if name in self.constants:
            return self.constants[name]
        dq = self.produced_by(name, "DequantizeLinear")
        return self.const(dq, 0) if dq is not None else None

    # --- whole graph -----------------------------------------------------------------------------------

    def constants_through(self, op_types: Iterable[str] = PASS_THROUGH) -> dict[str, np.ndarray]:
        """``constants`` plus the outputs of ``op_types`` nodes whose first input is constant, each standing as
        that input's value: known before the graph runs. A dequantized weight stands as its stored (int8)
        values, so read shapes and constness from it, not values. Resolved in one pass in node order."""
        op_types = frozenset(op_types)
        out = dict(self.constants)
        for n in self.nodes:
            if n.op_type in op_types and n.input[0] in out:
                out[n.output[0]] = out[n.input[0]]
        return out


def _pin_input(model: "onnx.ModelProto", input_shape: tuple[int, ...]) -> None:
    """Writes ``input_shape`` into the model's one non-initializer input, when it has one of that rank."""
    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(graph_inputs) != 1:
        return
    dims = graph_inputs[0].type.tensor_type.shape.dim
    if len(dims) == len(input_shape):
        for d, size in zip(dims, input_shape, strict=True):
            d.Clear()
            d.dim_value = int(size)

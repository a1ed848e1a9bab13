"""The values the TFLite lowering passes between ONNX nodes (NHWC tensors, fake-quant ranges, int8
weights), what it hands the backend, and the walk over the graph. The op handlers are in ops.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekd.backends.base import Unsupported
from edgekd.backends.tflite.rules import composite_nodes, raise_unsupported

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
NCHW_AXIS_IN_NHWC = (0, 3, 1, 2)  # NCHW axis a is NHWC axis NCHW_AXIS_IN_NHWC[a]
INT8_MIN, INT8_MAX = -128, 127
CONST_OPERAND = "constant operand quantized to int8 by the converter"
CONST_OPERAND_REASON = (
    "TFLite's int8 ADD/SUB/MUL take int8 operands only; the QDQ simulation keeps the constant "
    "float, so the artifact differs from it by the constant's rounding (quantize such constants "
    "in the QDQ graph to make the simulation exact)"
)
FC_AS_CONV = "Gemm/MatMul lowered as 1x1 CONV_2D"
FC_AS_CONV_REASON = (
    "the TFLite converter fails on per-channel FULLY_CONNECTED weights ('tfl.transpose' op has "
    "mismatched quantized axes); a 1x1 CONV_2D keeps the simulation's per-channel weights, where "
    "per-tensor FC weights would differ from it"
)


@dataclass(frozen=True)
class WeightQ:
    """A constant that came from an int8 DequantizeLinear: its int8 values and scales."""

    q: np.ndarray
    scale: np.ndarray  # () per tensor, (C,) per channel
    axis: int | None
    zero_point: int = 0  # per tensor only (constant operands; weights are symmetric)


@dataclass
class Val:
    t: Any  # tf.Tensor, or np.ndarray for constants
    nhwc: bool = False  # a 4-D ONNX (NCHW) tensor held as NHWC
    q: tuple[float, int] | None = None  # (scale, zero point) of the fake quant that produced it
    w: WeightQ | None = None

    @property
    def const(self) -> bool:
        return isinstance(self.t, np.ndarray)


@dataclass
class Lowered:
    """The traced function and what the backend needs to check and run the converted model."""

    function: Any  # tf.types.experimental.ConcreteFunction
    module: Any  # a tf.Module that holds it (the converter wants a trackable object)
    input_name: str
    input_shape: tuple[int, ...]  # as the TF function takes it (NHWC for images)
    outputs: list[str]  # ONNX output names, in order
    output_nhwc: list[bool]
    output_sources: list[set[str]]  # per output: the ONNX tensors its value is (through Q/DQ/Identity)
    output_shapes: list[tuple[int, ...]]  # as the TF function returns them
    scopes: dict[str, str] = field(default_factory=dict)  # name scope → ONNX tensor whose range it carries
    conv_scopes: dict[str, dict] = field(default_factory=dict)  # name scope → {node, op, weight scales}
    notes: list[dict] = field(default_factory=list)  # what the lowering had to change, and why
    fake_quants: int = 0


class Reject(Exception):
    pass


def grid(qp: tuple[float, int]) -> tuple[float, float]:
    s, zp = qp
    return (INT8_MIN - zp) * s, (INT8_MAX - zp) * s


def derived_grid(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an int8 grid over [lo, hi] widened to hold 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255.0 or 1e-7
    return s, int(np.clip(np.rint(INT8_MIN - lo / s), INT8_MIN, INT8_MAX))


def same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class Lowering:
    def __init__(self, tf, model: onnx.ModelProto, handlers: dict, composites: dict | None = None):
        self.tf = tf
        self.handlers = handlers  # op type → handler (handlers.HANDLERS)
        self.composites = composites or {}  # kind → lowering of a composite from its input (handlers.COMPOSITES)
        self.inside = composite_nodes(model)  # first output of a composite's node → (kind, input, is last)
        self.model = model
        self.env: dict[str, Val] = {}
        self.quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        self.scopes: dict[str, str] = {}
        self.conv_scopes: dict[str, dict] = {}
        self.notes: list[dict] = []
        self.fake_quants = 0
        self.index = -1  # of the node being lowered
        self.float_nodes: frozenset[str] = frozenset()  # a detector's decode: lowered so it stays float
        self._readers: dict[str, list] | None = None
        self.variables: list = []  # the weights (see _stored), kept by the module the converter freezes
        self._weights_read = 0

    # ---- helpers
    def sole_reader(self, name: str):
        """The one node reading tensor ``name`` (None when it has none, several, or is a graph output)."""
        if self._readers is None:
            self._readers = {o.name: [None] for o in self.model.graph.output}  # a graph output: read outside
            for n in self.model.graph.node:
                for i in n.input:
                    self._readers.setdefault(i, []).append(n)
        readers = self._readers.get(name, [])
        return readers[0] if len(readers) == 1 else None

    def get(self, name: str) -> Val:
        if name not in self.env:
            raise Reject(f"input {name!r} is not available (produced by an unsupported node?)")
        return self.env[name]

    def tensor(self, v: Val):
        return self.tf.constant(v.t.astype(np.float32) if v.t.dtype.kind == "f" else v.t) if v.const else v.t

    def rank(self, v: Val) -> int:
        return v.t.ndim if v.const else v.t.shape.rank

    def onnx_shape(self, v: Val) -> list[int]:
        shape = list(v.t.shape) if v.const else v.t.shape.as_list()
        return [shape[i] for i in TO_NCHW] if v.nhwc else shape

    def to_nhwc(self, v: Val) -> Val:
        """The value as NHWC (4-D) — transposing an ONNX-layout tensor if needed."""
        if v.nhwc:
            return v
        if self.rank(v) != 4:
            raise Reject(f"expected a 4-D NCHW tensor, got rank {self.rank(v)}")
        if v.const:
            return Val(v.t.transpose(TO_NHWC), True, v.q, v.w)
        with self.tf.name_scope("derived"):
            return Val(self.tf.transpose(v.t, TO_NHWC), True, v.q, v.w)

    def to_onnx(self, v: Val) -> Val:
        if not v.nhwc:
            return v
        with self.tf.name_scope("derived"):
            return Val(self.tf.transpose(v.t, TO_NCHW), False, v.q)

    def axis(self, v: Val, axis: int) -> int:
        axis = axis % self.rank(v)
        return NCHW_AXIS_IN_NHWC[axis] if v.nhwc else axis

    def fake_quant(self, x, qp: tuple[float, int], name: str = "fq"):
        lo, hi = grid(qp)
        self.fake_quants += 1
        return self.tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False, name=name)

    def fake_quant_range(self, x, lo: float, hi: float):
        """An intermediate range the lowering derives (inside one ONNX op): only in quantized graphs."""
        if not self.quantized:
            return x
        with self.tf.name_scope("derived"):
            return self.fake_quant(x, derived_grid(lo, hi))

    def operand(self, v: Val):
        """A value as an operand of an element-wise op: a constant the simulation quantized per tensor
        gets a fake quant on its own grid, so the converter stores the simulation's int8 values."""
        if v.const and v.w is not None and v.w.axis is None and self.quantized:
            with self.tf.name_scope("derived"):
                return self.fake_quant(self.tf.constant(v.t.astype(np.float32)), (float(v.w.scale), v.w.zero_point))
        return self.tensor(v)

    def weight(self, v: Val):
        """A weight already laid out for TF (output channel last), fake-quantized per channel with
        narrow range at ∓127·scale when the ONNX weight was int8, so the converter recovers the same
        int8 values and scales."""
        tf = self.tf
        w = v.t.astype(np.float32)
        t = self._stored(w)
        if v.w is None:
            return t
        scale = np.broadcast_to(v.w.scale.astype(np.float32), (w.shape[-1],)) if v.w.axis is None else v.w.scale
        scale = scale.astype(np.float32)
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            t, -INT8_MAX * scale, INT8_MAX * scale, num_bits=8, narrow_range=True
        )

    def _stored(self, w: np.ndarray):
        """A weight as a variable of the module, read in the function: the converter freezes it into the
        same constant, but a constant traced into the function is copied at every stage of the conversion
        (measured, light AlexNet's 244 MB of weights for rpi4: peak 12.4 GB and 44 s to convert as traced
        constants, 4.6 GB and 6.5 s as variables). The k-th weight of a trace is the k-th of every trace."""
        tf = self.tf
        k = self._weights_read
        self._weights_read += 1
        if k == len(self.variables):
            with tf.init_scope():  # created once, outside the trace, as tf.function requires
                self.variables.append(tf.Variable(w, trainable=False, name=f"w{k}"))
        var = self.variables[k]
        assert tuple(var.shape) == w.shape, "the lowering must read its weights in the same order every trace"
        return tf.identity(var)

    # ---- the walk
    def run(self, input_nhwc):
        """Lowers every node (called once per trace; starts from a clean slate each time)."""
        self.env, self.scopes, self.conv_scopes, self.notes, self.fake_quants = {}, {}, {}, [], 0
        self._weights_read = 0
        g = self.model.graph
        inits = {i.name for i in g.initializer}
        for i in g.initializer:
            self.env[i.name] = Val(numpy_helper.to_array(i))
        inp = next(i for i in g.input if i.name not in inits)
        self.env[inp.name] = Val(input_nhwc, nhwc=input_nhwc.shape.rank == 4)
        self.scopes[scope_name(inp.name)] = inp.name
        bad: list[Unsupported] = []
        unlowered: set[str] = set()  # outputs of refused nodes and of the nodes that read them
        refused: set[str] = set()
        for index, node in enumerate(g.node):
            if unlowered.intersection(node.input):
                unlowered.update(node.output)  # downstream of a refusal: nothing to lower it from
                continue
            handler = self.handlers[node.op_type]
            composite = self.inside.get(node.output[0]) if node.output else None
            if composite is not None:
                if not composite[2]:
                    continue  # inside a composite: lowered with its last node
                kind, source = composite[0], composite[1]
                handler = lambda cx, n, kind=kind, source=source: [cx.composites[kind](cx, cx.get(source))]  # noqa: E731
            scope = node_scope(index)
            try:
                if node.op_type in LOWERED_APART:
                    outs = handler(self, node)
                else:
                    self.index = index
                    with self.tf.name_scope(scope) as actual:
                        self.scopes[actual.rstrip("/")] = node.output[0]
                        outs = handler(self, node)
            except Reject as e:
                bad.append(Unsupported(node.name or node.op_type, node.op_type, str(e)))
                unlowered.update(node.output)
                refused.update(node.output)
                continue
            for name, v in zip(node.output, outs):
                if name:
                    self.env[name] = v
        if bad:
            raise_unsupported(bad, downstream=len(unlowered - refused))
        outs, nhwc = [], []
        for o in g.output:
            v = self.get(o.name)
            v = self.to_nhwc(v) if self.rank(v) == 4 else self.to_onnx(v)
            outs.append(self.tf.identity(self.tensor(v)))
            nhwc.append(v.nhwc)
        return outs, nhwc


def node_scope(index: int) -> str:
    """The TF name scope of the ONNX node at ``index``, which the converter keeps in its tensor names."""
    return f"n{index}"


def quantize_scope(tensor: str) -> str:
    """The TF name scope of the fake quant of an activation Q/DQ pair on ``tensor``."""
    return f"q_{scope_name(tensor)}"


LOWERED_APART = ("Constant", "Identity", "QuantizeLinear", "DequantizeLinear")  # no node scope of their own


def lowering_scopes(graph) -> dict[str, str]:
    """Name scope → the ONNX tensor it computes, in graph order, as ``Lowering.lower`` names them (read
    back from a converted model's tensor names by ``verify.owner``)."""
    scopes = {scope_name(graph.input[0].name): graph.input[0].name}
    for index, node in enumerate(graph.node):
        if node.op_type == "QuantizeLinear":
            scopes[quantize_scope(node.input[0])] = node.input[0]
        elif node.op_type not in LOWERED_APART:
            scopes[node_scope(index)] = node.output[0]
    return scopes


def scope_name(onnx_name: str) -> str:
    """A TF-legal op name for an ONNX tensor name."""
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in onnx_name).lstrip("_.-")
    return name if name and name[0].isalnum() else f"t{name}"

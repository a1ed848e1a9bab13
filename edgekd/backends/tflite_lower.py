"""Lowers a QDQ (or float) ONNX graph to a TensorFlow function in NHWC that the TFLite converter
turns into a full-int8 flatbuffer with edgekd's own quantization parameters.

Every activation QuantizeLinear → DequantizeLinear pair becomes a ``fake_quant_with_min_max_vars``
whose range is ``[(-128 - zp)·s, (127 - zp)·s]``, so the converter recovers scale ``s`` and zero
point ``zp`` exactly and needs no representative dataset. Weights come from their int8
DequantizeLinear: dequantized values with a per-output-channel, narrow-range fake quant at ∓127·s,
so the converter recovers the same int8 values and scales. The graph is mirrored op by op, so a
fake quant sits where the simulation has its Q/DQ pair: after a Conv's fused ReLU/ReLU6 (the
converter then fuses conv, bias and activation into one int8 op), after every projection conv,
residual add and the logits.

Layout: the TF input is NHWC; every 4-D ONNX (NCHW) tensor produced by a spatial op is held in NHWC
and ops that care about axes (Concat, Split, Slice, Softmax, Pad, Transpose, Reshape, Flatten)
translate them. 4-D graph outputs stay NHWC; the backend's session transposes them back.

The converter's quirks this module works around (TF 2.21, measured):
- per-channel FULLY_CONNECTED weights fail (``'tfl.transpose' op has mismatched quantized axes``):
  Gemm / MatMul with constant weights become a 1×1 CONV_2D, which keeps them per channel (per-tensor
  FC weights measured 4 output steps from the simulation on mobilenetv3-small, 3 with this);
- depthwise weights get their per-channel fake quant on ``[kh, kw, 1, C·m]`` and are reshaped to
  ``[kh, kw, C, m]`` afterwards (applied to ``[kh, kw, C, 1]`` they silently share one scale);
- weights use ``narrow_range=True`` (else some channels get zero point -1 and XNNPACK refuses the model);
- a float bias equal in every channel (a splat) is quantized with the first channel's scale for all
  channels: biases are snapped to their int32 grid first, so their values differ per channel;
- ONNX's explicit padding is kept as ``SAME`` only where TF's SAME splits it identically, else it
  becomes an explicit pad (zeros for convs, the grid's lowest value for max pools) and ``VALID``.

Node names go into TF name scopes (``n<index>``), which the converter keeps in its tensor names;
``tflite_verify`` reads them back to compare the flatbuffer's scales with the ones asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekd.backends.base import Unsupported
from edgekd.errors import UnsupportedOpsError
from edgekd.quant.qparams import quantize_bias

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
NCHW_AXIS_IN_NHWC = (0, 3, 1, 2)  # NCHW axis a is NHWC axis NCHW_AXIS_IN_NHWC[a]
INT8_MIN, INT8_MAX = -128, 127
CONST_OPERAND = "constant operand quantized to int8 by the converter"
CONST_OPERAND_REASON = ("TFLite's int8 ADD/SUB/MUL take int8 operands only; the QDQ simulation keeps the constant "
                        "float, so the artifact differs from it by the constant's rounding (quantize such constants "
                        "in the QDQ graph to make the simulation exact)")
FC_AS_CONV = "Gemm/MatMul lowered as 1x1 CONV_2D"
FC_AS_CONV_REASON = ("the TFLite converter fails on per-channel FULLY_CONNECTED weights ('tfl.transpose' op has "
                     "mismatched quantized axes); a 1x1 CONV_2D keeps the simulation's per-channel weights, where "
                     "per-tensor FC weights would differ from it")


# ---------------------------------------------------------------- static checks (no TensorFlow needed)

def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers, Constant outputs, and what Identity or DequantizeLinear make of them, by name
    (a dequantized weight stands as its int8 values: the checks only read shapes)."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None:
                out[node.output[0]] = value
        elif node.op_type in ("Identity", "DequantizeLinear") and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            v = helper.get_attribute_value(a)
            return np.asarray(v, np.float32 if "float" in a.name else np.int64)
    return None


def _check_conv(node, a, consts) -> str | None:
    if node.input[1] not in consts:
        return "weights computed at run time; TFLite needs constant conv weights"
    if len(a.get("kernel_shape", [1, 1])) != 2:
        return "only 2-D convolutions lower to TFLite CONV_2D"
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", b"SAME_UPPER"):
        return f"auto_pad {a['auto_pad'].decode()} has no TFLite equivalent"
    return None  # grouped convs are checked against the weight shape below


def _check_group(node, a, consts) -> str | None:
    group = a.get("group", 1)
    if group == 1:
        return None
    w = consts.get(node.input[1])
    if w is None:
        return None
    # depthwise: one input channel per group (any channel multiplier)
    if w.shape[1] == 1 and w.shape[0] % group == 0:
        return None
    return (f"grouped convolution (group={group}, {w.shape[1]} input channels per group) is neither regular nor "
            "depthwise; TFLite has no grouped CONV_2D that XNNPACK and the int8 kernels run")


def _check_pool(node, a, consts) -> str | None:
    if len(a.get("kernel_shape", [])) != 2:
        return "only 2-D pooling lowers to TFLite"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated pooling has no TFLite equivalent"
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", b"SAME_UPPER"):
        return f"auto_pad {a['auto_pad'].decode()} has no TFLite equivalent"
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        return "MaxPool's indices output has no TFLite equivalent"
    return None


def _check_gemm(node, a, consts) -> str | None:
    if a.get("transA", 0):
        return "Gemm with transA=1 is not lowered"
    if a.get("alpha", 1.0) != 1.0:
        return "Gemm with alpha != 1 is not lowered"
    return None


def _check_resize(node, a, consts) -> str | None:
    if a.get("mode", b"nearest") != b"nearest":
        return f"Resize mode {a['mode'].decode()} is not lowered (nearest only)"
    return None


def _check_pad(node, a, consts) -> str | None:
    mode = a.get("mode", b"constant")
    if mode not in (b"constant", b"reflect"):
        return f"Pad mode {mode.decode()} has no TFLite int8 equivalent"
    if len(node.input) > 3 and node.input[3]:
        return "Pad with axes is not lowered"
    if len(node.input) > 1 and node.input[1] not in consts:
        return "pads computed at run time"
    return None


def _check_const_inputs(*indices: int) -> Callable:
    def check(node, a, consts) -> str | None:
        for i in indices:
            if len(node.input) > i and node.input[i] and node.input[i] not in consts:
                return f"input {i} ({node.input[i]}) is computed at run time; TFLite needs it constant"
        return None
    return check


def _check_quant(node, a, consts) -> str | None:
    if node.op_type == "DequantizeLinear" and node.input[0] in consts:
        return None  # constants (weights, biases) are dequantized at lowering time
    scale = consts.get(node.input[1])
    zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None:
        return "scale computed at run time"
    if scale.size != 1:
        return "per-channel activation quantization has no TFLite equivalent"
    if zp is not None and zp.dtype != np.int8:
        return f"{zp.dtype} activations: this backend emits int8 (use activation scheme asymmetric-int8)"
    return None


def _ok(node, a, consts) -> None:
    return None


CHECKS: dict[str, Callable[[onnx.NodeProto, dict, dict], str | None]] = {
    "Conv": lambda n, a, c: _check_conv(n, a, c) or _check_group(n, a, c),
    "Gemm": _check_gemm, "MatMul": _ok, "Add": _ok, "Sub": _ok, "Mul": _ok, "Relu": _ok,
    "Clip": _check_const_inputs(1, 2), "Sigmoid": _ok, "HardSwish": _ok, "HardSigmoid": _ok,
    "MaxPool": _check_pool, "AveragePool": _check_pool, "GlobalAveragePool": _ok, "Concat": _ok,
    "Resize": lambda n, a, c: _check_resize(n, a, c) or _check_const_inputs(2, 3)(n, a, c),
    "Reshape": _check_const_inputs(1), "Flatten": _ok, "Transpose": _ok, "Pad": _check_pad,
    "Softmax": _ok, "Split": _check_const_inputs(1), "Slice": _check_const_inputs(1, 2, 3, 4),
    "Constant": _ok, "Identity": _ok, "QuantizeLinear": _check_quant, "DequantizeLinear": _check_quant,
}


def unsupported_nodes(model: onnx.ModelProto) -> list[Unsupported]:
    """Every node this lowering cannot express, with the reason."""
    consts = _constants(model)
    bad = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            bad.append(Unsupported(node.name or node.op_type, node.op_type, f"custom domain {node.domain!r}"))
            continue
        check = CHECKS.get(node.op_type)
        if check is None:
            bad.append(Unsupported(node.name or node.op_type, node.op_type,
                                   f"{node.op_type} is not lowered to TFLite (supported: {', '.join(sorted(CHECKS))})"))
            continue
        reason = check(node, _attrs(node), consts)
        if reason:
            bad.append(Unsupported(node.name or node.op_type, node.op_type, reason))
    return bad


def raise_unsupported(bad: list[Unsupported], where: str = "the tflite backend") -> None:
    listing = "\n".join(f"  {u.node} ({u.op}): {u.reason}" for u in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    raise UnsupportedOpsError(f"{len(bad)} node(s) cannot be lowered by {where}:\n{listing}{more}")


# ---------------------------------------------------------------- lowering

@dataclass(frozen=True)
class WeightQ:
    """A constant that came from an int8 DequantizeLinear: its int8 values and scales."""

    q: np.ndarray
    scale: np.ndarray  # () per tensor, (C,) per channel
    axis: int | None


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


class _Reject(Exception):
    pass


def _grid(qp: tuple[float, int]) -> tuple[float, float]:
    s, zp = qp
    return (INT8_MIN - zp) * s, (INT8_MAX - zp) * s


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class _Lowering:
    def __init__(self, tf, model: onnx.ModelProto):
        self.tf = tf
        self.model = model
        self.env: dict[str, Val] = {}
        self.quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        self.scopes: dict[str, str] = {}
        self.conv_scopes: dict[str, dict] = {}
        self.notes: list[dict] = []
        self.fake_quants = 0
        self.index = -1  # of the node being lowered

    # ---- helpers
    def get(self, name: str) -> Val:
        if name not in self.env:
            raise _Reject(f"input {name!r} is not available (produced by an unsupported node?)")
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
            raise _Reject(f"expected a 4-D NCHW tensor, got rank {self.rank(v)}")
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
        lo, hi = _grid(qp)
        self.fake_quants += 1
        return self.tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False, name=name)

    def fake_quant_range(self, x, lo: float, hi: float):
        """An intermediate range the lowering derives (inside one ONNX op): only in quantized graphs."""
        if not self.quantized:
            return x
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        s = (hi - lo) / 255.0 or 1e-7
        zp = int(np.clip(np.rint(INT8_MIN - lo / s), INT8_MIN, INT8_MAX))
        with self.tf.name_scope("derived"):
            return self.fake_quant(x, (s, zp))

    def weight(self, v: Val):
        """TF constant for a weight already laid out for TF (output channel last), fake-quantized per
        channel with narrow range at ∓127·scale when the ONNX weight was int8, so the converter
        recovers the same int8 values and scales."""
        tf = self.tf
        w = v.t.astype(np.float32)
        if v.w is None:
            return tf.constant(w)
        scale = np.broadcast_to(v.w.scale.astype(np.float32), (w.shape[-1],)) if v.w.axis is None else v.w.scale
        scale = scale.astype(np.float32)
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.constant(w), -INT8_MAX * scale, INT8_MAX * scale, num_bits=8, narrow_range=True)

    # ---- the walk
    def run(self, input_nhwc):
        """Lowers every node (called once per trace; starts from a clean slate each time)."""
        self.env, self.scopes, self.conv_scopes, self.notes, self.fake_quants = {}, {}, {}, [], 0
        g = self.model.graph
        inits = {i.name for i in g.initializer}
        for i in g.initializer:
            self.env[i.name] = Val(numpy_helper.to_array(i))
        inp = next(i for i in g.input if i.name not in inits)
        self.env[inp.name] = Val(input_nhwc, nhwc=input_nhwc.shape.rank == 4)
        self.scopes[_scope_name(inp.name)] = inp.name
        bad: list[Unsupported] = []
        for index, node in enumerate(g.node):
            handler = _HANDLERS[node.op_type]
            scope = f"n{index}"
            try:
                if node.op_type in ("Constant", "Identity", "QuantizeLinear", "DequantizeLinear"):
                    outs = handler(self, node)
                else:
                    self.index = index
                    with self.tf.name_scope(scope) as actual:
                        self.scopes[actual.rstrip("/")] = node.output[0]
                        outs = handler(self, node)
            except _Reject as e:
                bad.append(Unsupported(node.name or node.op_type, node.op_type, str(e)))
                continue
            for name, v in zip(node.output, outs):
                if name:
                    self.env[name] = v
        if bad:
            raise_unsupported(bad)
        outs, nhwc = [], []
        for o in g.output:
            v = self.get(o.name)
            v = self.to_nhwc(v) if self.rank(v) == 4 else self.to_onnx(v)
            outs.append(self.tf.identity(self.tensor(v)))
            nhwc.append(v.nhwc)
        return outs, nhwc


def _scope_name(onnx_name: str) -> str:
    """A TF-legal op name for an ONNX tensor name."""
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in onnx_name).lstrip("_.-")
    return name if name and name[0].isalnum() else f"t{name}"


# ---------------------------------------------------------------- op handlers

def _constant(cx: _Lowering, node) -> list[Val]:
    value = _constant_value(node)
    if value is None:
        raise _Reject("Constant without a tensor value")
    return [Val(value)]


def _identity(cx: _Lowering, node) -> list[Val]:
    return [cx.get(node.input[0])]


def _quantize(cx: _Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    scale = float(np.float32(cx.get(node.input[1]).t))
    zp = int(cx.get(node.input[2]).t) if len(node.input) > 2 and node.input[2] else 0
    if x.const:
        raise _Reject("QuantizeLinear of a constant is not lowered")
    with cx.tf.name_scope(f"q_{_scope_name(node.input[0])}") as scope:
        cx.scopes[scope.rstrip("/")] = node.input[0]
        return [Val(cx.fake_quant(x.t, (scale, zp)), x.nhwc, (scale, zp))]


def _dequantize(cx: _Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    if not x.const:  # the second half of an activation Q/DQ pair: the fake quant already is both
        return [x]
    scale = cx.get(node.input[1]).t.astype(np.float32)
    zp = cx.get(node.input[2]).t if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.int64)
    axis = _attrs(node).get("axis", 1) if scale.ndim == 1 and scale.size > 1 else None
    shape = [1] * x.t.ndim
    if axis is not None:
        shape[axis % x.t.ndim] = scale.size
    deq = ((x.t.astype(np.int64) - zp.reshape(shape).astype(np.int64)).astype(np.float32) * scale.reshape(shape))
    weight = WeightQ(x.t, scale, axis % x.t.ndim if axis is not None else None) if x.t.dtype == np.int8 else None
    return [Val(deq, w=weight)]


def _pads_for(cx: _Lowering, x: Val, a: dict, kernel: list[int], strides: list[int], dilations: list[int]):
    """('SAME' | 'VALID', explicit [[top, bottom], [left, right]] or None)."""
    auto = a.get("auto_pad", b"NOTSET")
    h, w = x.t.shape.as_list()[1:3]
    same = [_same_pads(size, k, s, d) for size, k, s, d in zip((h, w), kernel, strides, dilations)]
    if auto == b"SAME_UPPER":
        return "SAME", None
    if auto == b"VALID":
        return "VALID", None
    pads = a.get("pads", [0, 0, 0, 0])
    onnx_pads = [(pads[0], pads[2]), (pads[1], pads[3])]
    if all(p == (0, 0) for p in onnx_pads):
        return "VALID", None
    if onnx_pads == same:
        return "SAME", None
    return "VALID", [list(p) for p in onnx_pads]


def _conv(cx: _Lowering, node) -> list[Val]:
    tf = cx.tf
    a = _attrs(node)
    x = cx.to_nhwc(cx.get(node.input[0]))
    wv = cx.get(node.input[1])
    if not wv.const:
        raise _Reject("weights computed at run time")
    w = wv.t  # [O, I/g, kh, kw]
    group = a.get("group", 1)
    cin = x.t.shape[-1]
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1, 1])
    dilations = a.get("dilations", [1, 1])
    padding, explicit = _pads_for(cx, x, a, kernel, strides, dilations)
    xt = x.t
    if explicit is not None:
        with tf.name_scope("derived"):
            xt = tf.pad(xt, [[0, 0], explicit[0], explicit[1], [0, 0]])
    filt = Val(w.transpose(2, 3, 1, 0), w=wv.w)  # [kh, kw, I/g, O], output channel last
    if group == 1:
        y = tf.nn.conv2d(xt, cx.weight(filt), [1, *strides, 1], padding, dilations=[1, *dilations, 1])
        kind = "CONV_2D"
    elif group == cin and w.shape[1] == 1:
        mult = w.shape[0] // cin
        # per-channel fake quant on [kh, kw, 1, C·m], then [kh, kw, C, m]: applied to [kh, kw, C, 1]
        # the converter silently collapses it to one scale
        f = tf.reshape(cx.weight(filt), [kernel[0], kernel[1], cin, mult])
        y = tf.nn.depthwise_conv2d(xt, f, [1, *strides, 1], padding, dilations=dilations)
        kind = "DEPTHWISE_CONV_2D"
    else:
        raise _Reject(f"grouped convolution (group={group}) that is not depthwise")
    if len(node.input) > 2 and node.input[2]:
        b = cx.get(node.input[2])
        if not b.const:
            raise _Reject("bias computed at run time")
        bias = _bias(x, wv, b.t)
        y = tf.nn.bias_add(y, bias)
    else:
        bias = None
    cx.conv_scopes[f"n{cx.index}"] = {
        "node": node.name, "op": kind, "weight_scales": None if wv.w is None else wv.w.scale, "bias": bias}
    return [Val(y, True)]


def _bias(x: Val, w: Val, bias: np.ndarray) -> np.ndarray:
    """The float bias, snapped to its int32 grid (input scale × weight scale per channel) when the
    layer is quantized. The simulation's int32 biases already are; a float one (torch shares equal
    biases through Identity nodes, which the quantizer leaves float) must be too: a bias whose
    channels are all equal is a splat constant, and the converter quantizes a splat with the first
    channel's scale for every channel (measured: yolo-det's class heads, bias -log 99, 28 steps off).
    Snapped, its values differ per channel."""
    bias = np.asarray(bias, np.float32)
    if x.q is None or w.w is None:
        return bias
    q, scale = quantize_bias(bias, x.q[0], np.asarray(w.w.scale, np.float32))
    return (q.astype(np.float64) * scale.astype(np.float64)).astype(np.float32)


def _fc(cx: _Lowering, node, x: Val, w: Val, bias: np.ndarray | None) -> Val:
    """x [.., K] @ w [K, N] + bias as a 1×1 CONV_2D on [M, 1, 1, K]: the converter fails on
    per-channel FULLY_CONNECTED weights, and per-tensor ones would differ from the simulation."""
    tf = cx.tf
    xt = cx.tensor(x)
    k, n = w.t.shape
    lead = xt.shape.as_list()[:-1]
    with tf.name_scope("derived"):
        x4 = tf.reshape(xt, [-1, 1, 1, k])
    y = tf.nn.conv2d(x4, cx.weight(Val(w.t.reshape(1, 1, k, n), w=w.w)), [1, 1, 1, 1], "VALID")
    if bias is not None:
        bias = _bias(x, w, bias)
        y = tf.nn.bias_add(y, bias)
    cx.conv_scopes[f"n{cx.index}"] = {"node": node.name, "op": "CONV_2D",
                                      "weight_scales": None if w.w is None else w.w.scale, "bias": bias}
    if w.w is not None:
        note = next((nt for nt in cx.notes if nt["forced"] == FC_AS_CONV), None)
        if note is None:
            note = {"forced": FC_AS_CONV, "reason": FC_AS_CONV_REASON, "nodes": []}
            cx.notes.append(note)
        note["nodes"].append(node.name)
    return Val(tf.reshape(y, lead + [n]))


def _gemm(cx: _Lowering, node) -> list[Val]:
    a = _attrs(node)
    x = cx.to_onnx(cx.get(node.input[0]))
    b = cx.get(node.input[1])
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = cx.get(node.input[2])
        if not c.const:
            raise _Reject("Gemm bias computed at run time")
        bias = c.t.astype(np.float32) * np.float32(a.get("beta", 1.0))
    if not b.const:
        bt = cx.tensor(b)
        y = cx.tf.matmul(cx.tensor(x), bt, transpose_b=bool(a.get("transB", 0)))
        return [Val(y + bias if bias is not None else y)]
    w = Val(b.t.T if a.get("transB", 0) else b.t, w=b.w)
    return [_fc(cx, node, x, w, bias)]


def _matmul(cx: _Lowering, node) -> list[Val]:
    x = cx.to_onnx(cx.get(node.input[0]))
    b = cx.get(node.input[1])
    if b.const and b.t.ndim == 2:
        return [_fc(cx, node, x, b, None)]
    return [Val(cx.tf.matmul(cx.tensor(x), cx.tensor(cx.to_onnx(b))))]


def _binary(fn_name: str) -> Callable:
    def lower(cx: _Lowering, node) -> list[Val]:
        vals = [cx.get(n) for n in node.input]
        nhwc = any(v.nhwc for v in vals)
        if cx.quantized and any(v.const and v.w is None for v in vals):
            note = next((nt for nt in cx.notes if nt["forced"] == CONST_OPERAND), None)
            if note is None:
                note = {"forced": CONST_OPERAND, "reason": CONST_OPERAND_REASON, "nodes": []}
                cx.notes.append(note)
            note["nodes"].append(node.name)
        ts = []
        for v in vals:
            if nhwc and not v.nhwc:
                if cx.rank(v) > 4:
                    raise _Reject("broadcast of a rank > 4 tensor against an image tensor")
                if v.const:
                    v = Val(v.t.reshape((1,) * (4 - v.t.ndim) + v.t.shape), q=v.q, w=v.w)
                else:
                    with cx.tf.name_scope("derived"):
                        v = Val(cx.tf.reshape(v.t, [1] * (4 - cx.rank(v)) + v.t.shape.as_list()), q=v.q)
                v = cx.to_nhwc(v)
            ts.append(cx.tensor(v))
        return [Val(getattr(cx.tf.math, fn_name)(ts[0], ts[1]), nhwc)]
    return lower


def _unary(cx: _Lowering, node, fn) -> list[Val]:
    x = cx.get(node.input[0])
    return [Val(fn(cx.tensor(x)), x.nhwc)]


def _clip_bounds(cx: _Lowering, node) -> tuple[float | None, float | None]:
    a = _attrs(node)
    lo, hi = a.get("min"), a.get("max")
    if len(node.input) > 1 and node.input[1]:
        lo = float(cx.get(node.input[1]).t)
    if len(node.input) > 2 and node.input[2]:
        hi = float(cx.get(node.input[2]).t)
    return lo, hi


def _clip(cx: _Lowering, node) -> list[Val]:
    tf = cx.tf
    lo, hi = _clip_bounds(cx, node)
    if lo == 0.0 and hi == 6.0:
        fn = tf.nn.relu6
    elif lo == 0.0 and hi is None:
        fn = tf.nn.relu
    else:
        def fn(t):
            t = tf.maximum(t, lo) if lo is not None else t
            return tf.minimum(t, hi) if hi is not None else t
    return _unary(cx, node, fn)


def _hardswish(cx: _Lowering, node) -> list[Val]:
    tf = cx.tf
    # the converter fuses exactly this pattern into HARD_SWISH; no fake quant may sit inside it
    return _unary(cx, node, lambda t: t * tf.nn.relu6(t + 3.0) * (1.0 / 6.0))


def _hardsigmoid(cx: _Lowering, node) -> list[Val]:
    """max(0, min(1, αx + β)) = α·clip(x + β/α, 0, 1/α). TFLite has no such op: an ADD whose fused
    RELU6 clips (when 1/α = 6, the usual 1/6; else a clamp), then a MUL by α. The clipped sum is
    quantized with scale (1/α)/256 and the lowest code as zero point, so the MUL onto the output's
    fixed 1/256 grid multiplies codes by exactly 1: one rounding, as the simulation has."""
    tf = cx.tf
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if alpha <= 0:
        raise _Reject("HardSigmoid with alpha <= 0")
    x = cx.get(node.input[0])
    top = 1.0 / alpha
    with tf.name_scope("derived"):
        t = cx.tensor(x) + np.float32(beta / alpha)
        if abs(top - 6.0) < 1e-6:
            t = tf.nn.relu6(t)
        else:
            if x.q is not None:
                lo, hi = _grid(x.q)
                t = cx.fake_quant_range(t, lo + beta / alpha, hi + beta / alpha)
            t = tf.minimum(tf.maximum(t, 0.0), top)
        if cx.quantized:
            t = cx.fake_quant(t, (top / 256.0, INT8_MIN))
    return [Val(t * np.float32(alpha), x.nhwc)]


def _pool(cx: _Lowering, node) -> list[Val]:
    tf = cx.tf
    a = _attrs(node)
    x = cx.to_nhwc(cx.get(node.input[0]))
    kernel, strides = a["kernel_shape"], a.get("strides", [1, 1])
    padding, explicit = _pads_for(cx, x, a, kernel, strides, [1, 1])
    if a.get("ceil_mode", 0):
        h, w = x.t.shape.as_list()[1:3]
        pads = a.get("pads", [0, 0, 0, 0])
        for size, k, s, p0, p1 in ((h, kernel[0], strides[0], pads[0], pads[2]), (w, kernel[1], strides[1], pads[1], pads[3])):
            if (size + p0 + p1 - k) % s:
                raise _Reject("ceil_mode=1 changes the output size here; TFLite pools floor it")
    xt = x.t
    maxpool = node.op_type == "MaxPool"
    if explicit is not None or (padding == "SAME" and not maxpool and a.get("count_include_pad", 0)):
        explicit = explicit or [[p0, p1] for p0, p1 in _same_pads_of(x, kernel, strides)]
        padding = "VALID"
        if maxpool:  # pad with the lowest value on the grid: the max ignores it, as ONNX's -inf padding
            low = _grid(x.q)[0] if x.q is not None else float(np.finfo(np.float32).min)
            with tf.name_scope("derived"):
                xt = tf.pad(xt, [[0, 0], explicit[0], explicit[1], [0, 0]], constant_values=low)
        elif a.get("count_include_pad", 0):
            with tf.name_scope("derived"):
                xt = tf.pad(xt, [[0, 0], explicit[0], explicit[1], [0, 0]])
        else:
            raise _Reject("AveragePool with padding that excludes the pad from the count, split unlike TF's SAME")
    fn = tf.nn.max_pool2d if maxpool else tf.nn.avg_pool2d
    return [Val(fn(xt, kernel, strides, padding), True)]


def _same_pads_of(x: Val, kernel: list[int], strides: list[int]) -> list[tuple[int, int]]:
    h, w = x.t.shape.as_list()[1:3]
    return [_same_pads(size, k, s, 1) for size, k, s in zip((h, w), kernel, strides)]


def _global_avg(cx: _Lowering, node) -> list[Val]:
    x = cx.to_nhwc(cx.get(node.input[0]))
    return [Val(cx.tf.reduce_mean(x.t, axis=[1, 2], keepdims=True), True)]


def _concat(cx: _Lowering, node) -> list[Val]:
    vals = [cx.get(n) for n in node.input]
    nhwc = any(v.nhwc for v in vals)
    vals = [cx.to_nhwc(v) if nhwc else cx.to_onnx(v) for v in vals]
    axis = cx.axis(vals[0], _attrs(node)["axis"]) if nhwc else _attrs(node)["axis"]
    return [Val(cx.tf.concat([cx.tensor(v) for v in vals], axis), nhwc)]


def _split(cx: _Lowering, node) -> list[Val]:
    a = _attrs(node)
    x = cx.get(node.input[0])
    axis = a.get("axis", 0)
    size = cx.onnx_shape(x)[axis]
    if len(node.input) > 1 and node.input[1]:
        sizes = [int(s) for s in cx.get(node.input[1]).t]
    elif "split" in a:
        sizes = list(a["split"])
    else:
        n = len(node.output)
        sizes = [size // n] * n
    parts = cx.tf.split(cx.tensor(x), sizes, axis=cx.axis(x, axis))
    return [Val(p, x.nhwc) for p in parts]


def _slice(cx: _Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    starts = [int(v) for v in cx.get(node.input[1]).t]
    ends = [int(v) for v in cx.get(node.input[2]).t]
    rank = cx.rank(x)
    axes = [int(v) for v in cx.get(node.input[3]).t] if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
    steps = [int(v) for v in cx.get(node.input[4]).t] if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    index = [slice(None)] * rank
    big = np.iinfo(np.int32).max
    for s, e, ax, st in zip(starts, ends, axes, steps):
        e = None if abs(e) >= big else e
        index[cx.axis(x, ax)] = slice(s, e, st)
    t = x.t[tuple(index)] if x.const else x.t.__getitem__(tuple(index))
    return [Val(t, x.nhwc, x.q)]


def _resize(cx: _Lowering, node) -> list[Val]:
    a = _attrs(node)
    x = cx.to_nhwc(cx.get(node.input[0]))
    h, w = x.t.shape.as_list()[1:3]
    sizes = cx.get(node.input[3]).t if len(node.input) > 3 and node.input[3] else None
    if sizes is not None:
        out = [int(sizes[2]), int(sizes[3])]
        scales = [out[0] / h, out[1] / w]
    else:
        sc = cx.get(node.input[2]).t
        if sc[0] != 1 or sc[1] != 1:
            raise _Reject("Resize that scales batch or channels")
        scales = [float(sc[2]), float(sc[3])]
        out = [int(math.floor(h * scales[0])), int(math.floor(w * scales[1]))]
    coord = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    nearest = a.get("nearest_mode", b"round_prefer_floor").decode()
    half = None
    for candidate in (False, True):
        if all(np.array_equal(_onnx_nearest(n, o, s, coord, nearest), _tf_nearest(n, o, candidate))
               for n, o, s in ((h, out[0], scales[0]), (w, out[1], scales[1]))):
            half = candidate
            break
    if half is None:
        raise _Reject(f"nearest Resize with coordinate_transformation_mode={coord}, nearest_mode={nearest} picks "
                      "pixels that TFLite's RESIZE_NEAREST_NEIGHBOR does not")
    y = cx.tf.raw_ops.ResizeNearestNeighbor(images=x.t, size=out, align_corners=False, half_pixel_centers=half)
    return [Val(y, True, x.q)]


def _onnx_nearest(size: int, out: int, scale: float, coord: str, mode: str) -> np.ndarray:
    o = np.arange(out, dtype=np.float64)
    if coord == "asymmetric":
        c = o / scale
    elif coord in ("half_pixel", "pytorch_half_pixel"):
        c = (o + 0.5) / scale - 0.5 if (coord == "half_pixel" or out > 1) else np.zeros_like(o)
    elif coord == "align_corners":
        c = o * (size - 1) / (out - 1) if out > 1 else np.zeros_like(o)
    elif coord == "tf_half_pixel_for_nn":
        c = (o + 0.5) / scale
    else:
        return np.full(out, -1)
    rounders = {"floor": np.floor, "ceil": np.ceil,
                "round_prefer_floor": lambda v: np.where(v - np.floor(v) == 0.5, np.floor(v), np.round(v)),
                "round_prefer_ceil": lambda v: np.where(v - np.floor(v) == 0.5, np.ceil(v), np.round(v))}
    return np.clip(rounders[mode](c), 0, size - 1).astype(np.int64)


def _tf_nearest(size: int, out: int, half_pixel: bool) -> np.ndarray:
    scale = np.float32(size / out)
    o = np.arange(out, dtype=np.float32)
    c = np.floor((o + 0.5) * scale) if half_pixel else np.floor(o * scale)
    return np.clip(c, 0, size - 1).astype(np.int64)


def _direct_reshape_ok(shape_nchw: list[int]) -> bool:
    """Whether the NHWC buffer already is in NCHW order (only size-1 dims move)."""
    order_nchw = [i for i in range(4) if shape_nchw[i] != 1]
    order_nhwc = [i for i in TO_NHWC if shape_nchw[i] != 1]
    return order_nchw == order_nhwc


def _reshape_to(cx: _Lowering, x: Val, shape: list[int]) -> Val:
    if x.nhwc and _direct_reshape_ok(cx.onnx_shape(x)):
        return Val(cx.tf.reshape(x.t, shape), False, x.q)
    x = cx.to_onnx(x)
    t = x.t.reshape(shape) if x.const else cx.tf.reshape(x.t, shape)
    return Val(t, False, x.q)


def _reshape(cx: _Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    src = cx.onnx_shape(x)
    shape = [int(s) for s in cx.get(node.input[1]).t]
    if not _attrs(node).get("allowzero", 0):
        shape = [src[i] if s == 0 else s for i, s in enumerate(shape)]
    return [_reshape_to(cx, x, shape)]


def _flatten(cx: _Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    src = cx.onnx_shape(x)
    axis = _attrs(node).get("axis", 1) % len(src)
    return [_reshape_to(cx, x, [int(np.prod(src[:axis])), int(np.prod(src[axis:]))])]


def _transpose(cx: _Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    rank = cx.rank(x)
    perm = list(_attrs(node).get("perm", list(range(rank))[::-1]))
    if x.nhwc:
        perm = [NCHW_AXIS_IN_NHWC[p] for p in perm]
    if perm == list(range(rank)):
        return [Val(x.t, False, x.q)]
    t = x.t.transpose(perm) if x.const else cx.tf.transpose(x.t, perm)
    return [Val(t, False, x.q)]


def _pad(cx: _Lowering, node) -> list[Val]:
    a = _attrs(node)
    x = cx.get(node.input[0])
    rank = cx.rank(x)
    pads = [int(p) for p in cx.get(node.input[1]).t] if len(node.input) > 1 else list(a["pads"])
    if any(p < 0 for p in pads):
        raise _Reject("negative pads (cropping) are not lowered")
    pairs = [[pads[i], pads[i + rank]] for i in range(rank)]
    if x.nhwc:
        pairs = [pairs[i] for i in TO_NHWC]  # NHWC axis j is NCHW axis TO_NHWC[j]
    value = float(cx.get(node.input[2]).t) if len(node.input) > 2 and node.input[2] else 0.0
    mode = a.get("mode", b"constant").decode()
    if mode == "reflect":
        t = cx.tf.pad(cx.tensor(x), pairs, mode="REFLECT")
    else:
        t = cx.tf.pad(cx.tensor(x), pairs, constant_values=value)
    return [Val(t, x.nhwc, x.q)]


def _softmax(cx: _Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    axis = cx.axis(x, _attrs(node).get("axis", -1))
    return [Val(cx.tf.nn.softmax(cx.tensor(x), axis=axis), x.nhwc)]


_HANDLERS: dict[str, Callable[[_Lowering, onnx.NodeProto], list[Val]]] = {
    "Constant": _constant, "Identity": _identity, "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize,
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "Add": _binary("add"), "Sub": _binary("subtract"), "Mul": _binary("multiply"),
    "Relu": lambda cx, n: _unary(cx, n, cx.tf.nn.relu), "Clip": _clip,
    "Sigmoid": lambda cx, n: _unary(cx, n, cx.tf.sigmoid), "HardSwish": _hardswish, "HardSigmoid": _hardsigmoid,
    "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _global_avg, "Concat": _concat,
    "Resize": _resize, "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Pad": _pad,
    "Softmax": _softmax, "Split": _split, "Slice": _slice,
}
assert set(_HANDLERS) == set(CHECKS), "every checked op needs a handler"


def lower(model: onnx.ModelProto) -> Lowered:
    """Traces the ONNX graph as a TF function taking the input in NHWC. Raises UnsupportedOpsError
    naming every node it cannot express."""
    bad = unsupported_nodes(model)
    if bad:
        raise_unsupported(bad)
    import tensorflow as tf

    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise UnsupportedOpsError(f"the tflite backend lowers single-input models; this one has {len(inputs)} inputs")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if any(d <= 0 for d in dims):
        raise UnsupportedOpsError(f"input {inputs[0].name!r} has unknown dimensions {dims}",
                                  "compile with a fixed --input-shape")
    shape = tuple(dims[i] for i in TO_NHWC) if len(dims) == 4 else tuple(dims)
    cx = _Lowering(tf, model)
    holder: dict[str, Any] = {}

    def body(x):
        outs, nhwc = cx.run(x)
        holder["nhwc"], holder["shapes"] = nhwc, [tuple(o.shape.as_list()) for o in outs]
        return outs

    fn = tf.function(body, autograph=False,
                     input_signature=[tf.TensorSpec(shape, tf.float32, name=_scope_name(inputs[0].name))])
    module = tf.Module()
    module.f = fn
    concrete = fn.get_concrete_function()
    producers = {o: n for n in g.node for o in n.output}

    def sources(name: str) -> set[str]:
        out, node = {name}, producers.get(name)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear", "Identity"):
            name = node.input[0]
            out.add(name)
            node = producers.get(name)
        return out

    return Lowered(concrete, module, inputs[0].name, shape, [o.name for o in g.output], holder["nhwc"],
                   [sources(o.name) for o in g.output], holder["shapes"], cx.scopes, cx.conv_scopes, cx.notes, cx.fake_quants)

"""One handler per ONNX op: mirrors the node in TensorFlow (NHWC), with a fake quant where the QDQ
simulation has its Q/DQ pair."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np
import onnx

from edgekd.backends.tflite.graph import (
    CONST_OPERAND,
    CONST_OPERAND_REASON,
    FC_AS_CONV,
    FC_AS_CONV_REASON,
    INT8_MIN,
    NCHW_AXIS_IN_NHWC,
    TO_NHWC,
    Lowering,
    Reject,
    Val,
    WeightQ,
    grid,
    quantize_scope,
    same_pads,
)
from edgekd.ir.proto_index import constant_node_value, node_attrs
from edgekd.quant.qparams import quantize_bias


def _constant(cx: Lowering, node) -> list[Val]:
    value = constant_node_value(node)
    if value is None:
        raise Reject("Constant without a tensor value")
    return [Val(value)]


def _identity(cx: Lowering, node) -> list[Val]:
    return [cx.get(node.input[0])]


def _qparams(cx: Lowering, q) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor QuantizeLinear node."""
    return float(np.float32(cx.get(q.input[1]).t)), int(cx.get(q.input[2]).t) if len(q.input) > 2 and q.input[2] else 0


def _quantize(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    scale, zp = _qparams(cx, node)
    if x.const:
        raise Reject("QuantizeLinear of a constant is not lowered")
    with cx.tf.name_scope(quantize_scope(node.input[0])) as scope:
        cx.scopes[scope.rstrip("/")] = node.input[0]
        return [Val(cx.fake_quant(x.t, (scale, zp)), x.nhwc, (scale, zp))]


def _dequantize(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    if not x.const:  # the second half of an activation Q/DQ pair: the fake quant already is both
        return [x]
    scale = cx.get(node.input[1]).t.astype(np.float32)
    zp = cx.get(node.input[2]).t if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.int64)
    axis = node_attrs(node).get("axis", 1) if scale.ndim == 1 and scale.size > 1 else None
    shape = [1] * x.t.ndim
    if axis is not None:
        shape[axis % x.t.ndim] = scale.size
    deq = np.asarray(
        (x.t.astype(np.int64) - zp.reshape(shape).astype(np.int64)).astype(np.float32) * scale.reshape(shape)
    )
    weight = (
        WeightQ(
            x.t, scale, axis % x.t.ndim if axis is not None else None, int(zp.reshape(-1)[0]) if axis is None else 0
        )
        if x.t.dtype == np.int8
        else None
    )
    return [Val(deq, w=weight)]


def _pads_for(cx: Lowering, x: Val, a: dict, kernel: list[int], strides: list[int], dilations: list[int]):
    """('SAME' | 'VALID', explicit [[top, bottom], [left, right]] or None)."""
    auto = a.get("auto_pad", b"NOTSET")
    h, w = x.t.shape.as_list()[1:3]
    same = [same_pads(size, k, s, d) for size, k, s, d in zip((h, w), kernel, strides, dilations)]
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


def _conv(cx: Lowering, node) -> list[Val]:
    tf = cx.tf
    a = node_attrs(node)
    x = cx.to_nhwc(cx.get(node.input[0]))
    wv = cx.get(node.input[1])
    if not wv.const:
        raise Reject("weights computed at run time")
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
        return [_grouped_conv(cx, node, x, xt, wv, group, (strides, padding, dilations))]
    bias = _conv_bias(cx, node, x, wv)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    cx.conv_scopes[f"n{cx.index}"] = {
        "node": node.name,
        "op": kind,
        "weight_scales": None if wv.w is None else wv.w.scale,
        "bias": bias,
    }
    return [Val(y, True)]


def _conv_bias(cx: Lowering, node, x: Val, wv: Val) -> np.ndarray | None:
    if len(node.input) < 3 or not node.input[2]:
        return None
    b = cx.get(node.input[2])
    if not b.const:
        raise Reject("bias computed at run time")
    return _bias(x, wv, b.t)


def _grouped_conv(cx: Lowering, node, x: Val, xt, wv: Val, group: int, geometry) -> Val:
    """A grouped convolution (ShuffleNet, ResNeXt) as TFLite has none: the channels split into
    ``group`` parts, one CONV_2D each, concatenated. The simulation rounds the whole output once on one
    grid; TFLite's int8 CONCATENATION needs its inputs on that grid, so each CONV_2D writes onto it."""
    tf = cx.tf
    strides, padding, dilations = geometry
    w = wv.t
    out = w.shape[0] // group
    bias = _conv_bias(cx, node, x, wv)
    relu_grid = _relu_then_quantized(cx, node)
    with tf.name_scope("derived"):
        parts = tf.split(xt, group, axis=3)
    ys = []
    for k in range(group):
        rows = slice(k * out, (k + 1) * out)
        q = None if wv.w is None else WeightQ(wv.w.q[rows], np.broadcast_to(wv.w.scale, (w.shape[0],))[rows], 3)
        with tf.name_scope(f"g{k}") as scope:
            y = tf.nn.conv2d(
                parts[k],
                cx.weight(Val(w[rows].transpose(2, 3, 1, 0), w=q)),
                [1, *strides, 1],
                padding,
                dilations=[1, *dilations, 1],
            )
            if bias is not None:
                y = tf.nn.bias_add(y, bias[rows])
            if relu_grid is not None:  # the ReLU node after it then has nothing left to clamp
                y = cx.fake_quant(tf.nn.relu(y), relu_grid)
        cx.conv_scopes[scope.rstrip("/")] = {
            "node": node.name,
            "op": "CONV_2D",
            "bias": None if bias is None else bias[rows],
            "weight_scales": None if q is None else q.scale,
        }
        ys.append(y)
    return Val(tf.concat(ys, axis=3), True)


def _relu_then_quantized(cx: Lowering, node) -> tuple[float, int] | None:
    """The grid of ``node``'s output when a ReLU alone reads it and a QuantizeLinear alone reads that: a
    grouped convolution applies both per group, so each CONV_2D writes int8 with the ReLU fused (the
    converter cannot carry a range back through a float ReLU after the CONCATENATION)."""
    relu = cx.sole_reader(node.output[0])
    q = cx.sole_reader(relu.output[0]) if relu is not None and relu.op_type == "Relu" else None
    return _qparams(cx, q) if q is not None and q.op_type == "QuantizeLinear" else None


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


# The converter leaves a per-channel fake quant on a constant of 128 MiB or more unfolded ("neither a
# custom op nor a flex op"; measured: a 1×1 CONV_2D of 8000×4096 floats converts, 8192×4096 does not):
# AlexNet's and VGG's first classifier layers are split by output channel below it.
MAX_WEIGHT_BYTES = 96 * 2**20


def _fc(cx: Lowering, node, x: Val, w: Val, bias: np.ndarray | None) -> Val:
    """x [.., K] @ w [K, N] + bias as a 1×1 CONV_2D on [M, 1, 1, K]: the converter fails on
    per-channel FULLY_CONNECTED weights, and per-tensor ones would differ from the simulation."""
    tf = cx.tf
    xt = cx.tensor(x)
    k, n = w.t.shape
    lead = xt.shape.as_list()[:-1]
    with tf.name_scope("derived"):
        x4 = tf.reshape(xt, [-1, 1, 1, k])
    if bias is not None:
        bias = _bias(x, w, bias)
    parts = np.array_split(np.arange(n), math.ceil(k * n * 4 / MAX_WEIGHT_BYTES))
    relu_grid = _relu_then_quantized(cx, node) if len(parts) > 1 else None
    ys = []
    for j, cols in enumerate(parts):
        q = None if w.w is None else WeightQ(w.w.q[:, cols], np.broadcast_to(w.w.scale, (n,))[cols], 3)
        with contextlib.nullcontext(f"n{cx.index}") if len(parts) == 1 else tf.name_scope(f"part{j}") as scope:
            y = tf.nn.conv2d(x4, cx.weight(Val(w.t[:, cols].reshape(1, 1, k, len(cols)), w=q)), 1, "VALID")
            if bias is not None:
                y = tf.nn.bias_add(y, bias[cols])
            if relu_grid is not None:
                y = cx.fake_quant(tf.nn.relu(y), relu_grid)
        cx.conv_scopes[scope.rstrip("/")] = {
            "node": node.name,
            "op": "CONV_2D",
            "weight_scales": None if q is None else q.scale,
            "bias": None if bias is None else bias[cols],
        }
        ys.append(y)
    if w.w is not None:
        note = next((nt for nt in cx.notes if nt["forced"] == FC_AS_CONV), None)
        if note is None:
            note = {"forced": FC_AS_CONV, "reason": FC_AS_CONV_REASON, "nodes": []}
            cx.notes.append(note)
        note["nodes"].append(node.name)
    y = ys[0] if len(ys) == 1 else tf.concat(ys, axis=3)
    return Val(tf.reshape(y, lead + [n]))


def _gemm(cx: Lowering, node) -> list[Val]:
    a = node_attrs(node)
    x = cx.to_onnx(cx.get(node.input[0]))
    b = cx.get(node.input[1])
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = cx.get(node.input[2])
        if not c.const:
            raise Reject("Gemm bias computed at run time")
        bias = c.t.astype(np.float32) * np.float32(a.get("beta", 1.0))
    if not b.const:
        bt = cx.tensor(b)
        y = cx.tf.matmul(cx.tensor(x), bt, transpose_b=bool(a.get("transB", 0)))
        return [Val(y + bias if bias is not None else y)]
    if a.get("transB", 0):  # [N, K] → [K, N], its int8 values too (_fc slices them by output channel)
        b = Val(b.t.T, w=None if b.w is None else WeightQ(b.w.q.T, b.w.scale, None if b.w.axis is None else 1))
    return [_fc(cx, node, x, b, bias)]


def _matmul(cx: Lowering, node) -> list[Val]:
    x = cx.to_onnx(cx.get(node.input[0]))
    b = cx.get(node.input[1])
    if b.const and b.t.ndim == 2:
        return [_fc(cx, node, x, b, None)]
    return [Val(cx.tf.matmul(cx.tensor(x), cx.tensor(cx.to_onnx(b))))]


def _binary(fn_name: str) -> Callable:
    def lower(cx: Lowering, node) -> list[Val]:
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
                    raise Reject("broadcast of a rank > 4 tensor against an image tensor")
                if v.const:
                    v = Val(v.t.reshape((1,) * (4 - v.t.ndim) + v.t.shape), q=v.q, w=v.w)
                else:
                    with cx.tf.name_scope("derived"):
                        v = Val(cx.tf.reshape(v.t, [1] * (4 - cx.rank(v)) + v.t.shape.as_list()), q=v.q)
                v = cx.to_nhwc(v)
            ts.append(cx.operand(v))
        return [Val(getattr(cx.tf.math, fn_name)(ts[0], ts[1]), nhwc)]

    return lower


def _sigmoid(cx: Lowering, node) -> list[Val]:
    """LOGISTIC; in a detector's float decode written as e / (1 + e), e = exp(x) (x within ±30): the
    converter would run a LOGISTIC that reads int8 in int8 (its output range is fixed), and a
    CONCATENATION of those scores with the float boxes would then requantize the boxes onto the scores'
    1/256 grid. It fuses 1 / (1 + exp(-x)) back into LOGISTIC; this form it leaves alone."""
    if node.name not in cx.float_nodes:
        return _unary(cx, node, cx.tf.sigmoid)
    tf = cx.tf

    def float_sigmoid(t):
        e = tf.math.exp(tf.clip_by_value(t, -30.0, 30.0))
        return e / (1.0 + e)

    return _unary(cx, node, float_sigmoid)


def _unary(cx: Lowering, node, fn) -> list[Val]:
    x = cx.get(node.input[0])
    return [Val(fn(cx.tensor(x)), x.nhwc)]


def _clip_bounds(cx: Lowering, node) -> tuple[float | None, float | None]:
    a = node_attrs(node)
    lo, hi = a.get("min"), a.get("max")
    if len(node.input) > 1 and node.input[1]:
        lo = float(cx.get(node.input[1]).t)
    if len(node.input) > 2 and node.input[2]:
        hi = float(cx.get(node.input[2]).t)
    return lo, hi


def _clip(cx: Lowering, node) -> list[Val]:
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


def _hardswish(cx: Lowering, node) -> list[Val]:
    tf = cx.tf
    # the converter fuses exactly this pattern into HARD_SWISH; no fake quant may sit inside it
    return _unary(cx, node, lambda t: t * tf.nn.relu6(t + 3.0) * (1.0 / 6.0))


def _hardsigmoid(cx: Lowering, node) -> list[Val]:
    """max(0, min(1, αx + β)) = α·clip(x + β/α, 0, 1/α). TFLite has no such op: an ADD whose fused
    RELU6 clips (when 1/α = 6, the usual 1/6; else a clamp), then a MUL by α. The clipped sum is
    quantized with scale (1/α)/256 and the lowest code as zero point, so the MUL onto the output's
    fixed 1/256 grid multiplies codes by exactly 1: one rounding, as the simulation has."""
    tf = cx.tf
    a = node_attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if alpha <= 0:
        raise Reject("HardSigmoid with alpha <= 0")
    x = cx.get(node.input[0])
    top = 1.0 / alpha
    with tf.name_scope("derived"):
        t = cx.tensor(x) + np.float32(beta / alpha)
        if abs(top - 6.0) < 1e-6:
            t = tf.nn.relu6(t)
        else:
            if x.q is not None:
                lo, hi = grid(x.q)
                t = cx.fake_quant_range(t, lo + beta / alpha, hi + beta / alpha)
            t = tf.minimum(tf.maximum(t, 0.0), top)
        if cx.quantized:
            t = cx.fake_quant(t, (top / 256.0, INT8_MIN))
    return [Val(t * np.float32(alpha), x.nhwc)]


def _pool(cx: Lowering, node) -> list[Val]:
    tf = cx.tf
    a = node_attrs(node)
    x = cx.to_nhwc(cx.get(node.input[0]))
    kernel, strides = a["kernel_shape"], a.get("strides", [1, 1])
    padding, explicit = _pads_for(cx, x, a, kernel, strides, [1, 1])
    maxpool = node.op_type == "MaxPool"
    if a.get("ceil_mode", 0):
        extra = _ceil_mode_extra(x, a, kernel, strides)
        if any(extra) and not maxpool:
            raise Reject("ceil_mode=1 changes the output size here; TFLite pools floor it (MaxPool only is padded)")
        if any(extra):  # the extra windows reach past the end: pad there, and the max ignores the padding
            base = explicit or (_same_pads_of(x, kernel, strides) if padding == "SAME" else [[0, 0], [0, 0]])
            explicit = [[p0, p1 + e] for (p0, p1), e in zip(base, extra)]
    xt = x.t
    if explicit is not None or (padding == "SAME" and not maxpool and a.get("count_include_pad", 0)):
        explicit = explicit or [[p0, p1] for p0, p1 in _same_pads_of(x, kernel, strides)]
        padding = "VALID"
        if maxpool:  # pad with the lowest value on the grid: the max ignores it, as ONNX's -inf padding
            low = grid(x.q)[0] if x.q is not None else float(np.finfo(np.float32).min)
            with tf.name_scope("derived"):
                xt = tf.pad(xt, [[0, 0], explicit[0], explicit[1], [0, 0]], constant_values=low)
        elif a.get("count_include_pad", 0):
            with tf.name_scope("derived"):
                xt = tf.pad(xt, [[0, 0], explicit[0], explicit[1], [0, 0]])
        else:
            return [_avg_pool_excluding_pads(cx, x, xt, kernel, strides, explicit)]
    fn = tf.nn.max_pool2d if maxpool else tf.nn.avg_pool2d
    return [Val(fn(xt, kernel, strides, padding), True)]


def _ceil_mode_extra(x: Val, a: dict, kernel: list[int], strides: list[int]) -> list[int]:
    """Per spatial axis, how far past the end ``ceil_mode=1`` windows reach: the output size rounded up,
    less a last window that would start in the end padding (PyTorch's and ONNX Runtime's rule)."""
    pads = a.get("pads", [0, 0, 0, 0])
    extra = []
    for size, k, s, p0, p1 in zip(x.t.shape.as_list()[1:3], kernel, strides, pads[:2], pads[2:]):
        out = -(-(size + p0 + p1 - k) // s) + 1
        if (out - 1) * s >= size + p0:
            out -= 1
        extra.append(max(0, (out - 1) * s + k - (size + p0 + p1)))
    return extra


def _avg_pool_excluding_pads(cx: Lowering, x: Val, xt, kernel, strides, pads) -> Val:
    """ONNX's average over the window's inside only, with pads split unlike TF's SAME (Caffe2's
    ShuffleNet: pads 1/1 where SAME pads 0/1): the mean over the zero-padded window, rescaled per output
    position by window size / inside count, a constant map (one extra rounding at the border)."""
    tf = cx.tf
    h, w = x.t.shape.as_list()[1:3]
    inside = np.pad(np.ones((h, w), np.float64), pads)
    windows = np.lib.stride_tricks.sliding_window_view(inside, kernel)[:: strides[0], :: strides[1]]
    factor = (kernel[0] * kernel[1] / windows.sum(axis=(2, 3)))[None, :, :, None].astype(np.float32)
    with tf.name_scope("derived"):
        mean = tf.nn.avg_pool2d(tf.pad(xt, [[0, 0], pads[0], pads[1], [0, 0]]), kernel, strides, "VALID")
        if x.q is not None:  # TFLite's int8 pool keeps its input's grid
            mean = cx.fake_quant(mean, x.q)
        scale = cx.fake_quant_range(tf.constant(factor), 0.0, float(factor.max()))
    return Val(mean * scale, True)


def _same_pads_of(x: Val, kernel: list[int], strides: list[int]) -> list[tuple[int, int]]:
    h, w = x.t.shape.as_list()[1:3]
    return [same_pads(size, k, s, 1) for size, k, s in zip((h, w), kernel, strides)]


def _global_avg(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    if cx.rank(x) != 4:  # [N, C, L]: canonicalize writes a mean over a sequence's last axis this way
        x = cx.to_onnx(x)
        return [Val(cx.tf.reduce_mean(cx.tensor(x), axis=list(range(2, cx.rank(x))), keepdims=True))]
    x = cx.to_nhwc(x)
    return [Val(cx.tf.reduce_mean(x.t, axis=[1, 2], keepdims=True), True)]


def _concat(cx: Lowering, node) -> list[Val]:
    vals = [cx.get(n) for n in node.input]
    nhwc = any(v.nhwc for v in vals)
    vals = [cx.to_nhwc(v) if nhwc else cx.to_onnx(v) for v in vals]
    axis = cx.axis(vals[0], node_attrs(node)["axis"]) if nhwc else node_attrs(node)["axis"]
    return [Val(cx.tf.concat([cx.tensor(v) for v in vals], axis), nhwc)]


def _split(cx: Lowering, node) -> list[Val]:
    a = node_attrs(node)
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


def _slice(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    starts = [int(v) for v in cx.get(node.input[1]).t]
    ends = [int(v) for v in cx.get(node.input[2]).t]
    rank = cx.rank(x)
    axes = (
        [int(v) for v in cx.get(node.input[3]).t] if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
    )
    steps = [int(v) for v in cx.get(node.input[4]).t] if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    index = [slice(None)] * rank
    big = np.iinfo(np.int32).max
    for s, e, ax, st in zip(starts, ends, axes, steps):
        e = None if abs(e) >= big else e
        index[cx.axis(x, ax)] = slice(s, e, st)
    t = x.t[tuple(index)] if x.const else x.t.__getitem__(tuple(index))
    return [Val(t, x.nhwc, x.q)]


def _resize(cx: Lowering, node) -> list[Val]:
    a = node_attrs(node)
    x = cx.to_nhwc(cx.get(node.input[0]))
    h, w = x.t.shape.as_list()[1:3]
    sizes = cx.get(node.input[3]).t if len(node.input) > 3 and node.input[3] else None
    if sizes is not None:
        out = [int(sizes[2]), int(sizes[3])]
        scales = [out[0] / h, out[1] / w]
    else:
        sc = cx.get(node.input[2]).t
        if sc[0] != 1 or sc[1] != 1:
            raise Reject("Resize that scales batch or channels")
        scales = [float(sc[2]), float(sc[3])]
        out = [int(math.floor(h * scales[0])), int(math.floor(w * scales[1]))]
    coord = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    if a.get("mode", b"nearest") == b"linear":
        return [_bilinear(cx, x, out, coord)]
    nearest = a.get("nearest_mode", b"round_prefer_floor").decode()
    half = None
    for candidate in (False, True):
        if all(
            np.array_equal(_onnx_nearest(n, o, s, coord, nearest), _tf_nearest(n, o, candidate))
            for n, o, s in ((h, out[0], scales[0]), (w, out[1], scales[1]))
        ):
            half = candidate
            break
    if half is None:
        raise Reject(
            f"nearest Resize with coordinate_transformation_mode={coord}, nearest_mode={nearest} picks "
            "pixels that TFLite's RESIZE_NEAREST_NEIGHBOR does not"
        )
    y = cx.tf.raw_ops.ResizeNearestNeighbor(images=x.t, size=out, align_corners=False, half_pixel_centers=half)
    return [Val(y, True, x.q)]


# ONNX coordinate_transformation_mode → TF ResizeBilinear's (align_corners, half_pixel_centers).
# pytorch_half_pixel is half_pixel except for an output of size 1 (checked below).
BILINEAR_MODES = {
    "half_pixel": (False, True),
    "pytorch_half_pixel": (False, True),
    "align_corners": (True, False),
    "asymmetric": (False, False),
}


def _bilinear(cx: Lowering, x: Val, out: list[int], coord: str) -> Val:
    if coord not in BILINEAR_MODES:
        raise Reject(
            f"linear Resize with coordinate_transformation_mode={coord} has no TFLite equivalent "
            f"(lowered: {', '.join(BILINEAR_MODES)})"
        )
    if coord == "pytorch_half_pixel" and 1 in out:
        raise Reject("linear Resize to size 1 with pytorch_half_pixel samples pixel 0, TFLite's half-pixel centre")
    align, half = BILINEAR_MODES[coord]
    y = cx.tf.raw_ops.ResizeBilinear(images=x.t, size=out, align_corners=align, half_pixel_centers=half)
    return Val(y, True, x.q)


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
    rounders = {
        "floor": np.floor,
        "ceil": np.ceil,
        "round_prefer_floor": lambda v: np.where(v - np.floor(v) == 0.5, np.floor(v), np.round(v)),
        "round_prefer_ceil": lambda v: np.where(v - np.floor(v) == 0.5, np.ceil(v), np.round(v)),
    }
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


def _reshape_to(cx: Lowering, x: Val, shape: list[int]) -> Val:
    if x.nhwc and _direct_reshape_ok(cx.onnx_shape(x)):
        return Val(cx.tf.reshape(x.t, shape), False, x.q)
    x = cx.to_onnx(x)
    t = x.t.reshape(shape) if x.const else cx.tf.reshape(x.t, shape)
    return Val(t, False, x.q)


def _reshape(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    src = cx.onnx_shape(x)
    shape = [int(s) for s in cx.get(node.input[1]).t]
    if not node_attrs(node).get("allowzero", 0):
        shape = [src[i] if s == 0 else s for i, s in enumerate(shape)]
    return [_reshape_to(cx, x, shape)]


def _flatten(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    src = cx.onnx_shape(x)
    axis = node_attrs(node).get("axis", 1) % len(src)
    return [_reshape_to(cx, x, [int(np.prod(src[:axis])), int(np.prod(src[axis:]))])]


def _transpose(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    rank = cx.rank(x)
    perm = list(node_attrs(node).get("perm", list(range(rank))[::-1]))
    if x.nhwc:
        perm = [NCHW_AXIS_IN_NHWC[p] for p in perm]
    if perm == list(range(rank)):
        return [Val(x.t, False, x.q)]
    t = x.t.transpose(perm) if x.const else cx.tf.transpose(x.t, perm)
    return [Val(t, False, x.q)]


def _pad(cx: Lowering, node) -> list[Val]:
    a = node_attrs(node)
    x = cx.get(node.input[0])
    rank = cx.rank(x)
    pads = [int(p) for p in cx.get(node.input[1]).t] if len(node.input) > 1 else list(a["pads"])
    if any(p < 0 for p in pads):
        raise Reject("negative pads (cropping) are not lowered")
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


def _softmax(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    axis = cx.axis(x, node_attrs(node).get("axis", -1))
    return [Val(cx.tf.nn.softmax(cx.tensor(x), axis=axis), x.nhwc)]


HANDLERS: dict[str, Callable[[Lowering, onnx.NodeProto], list[Val]]] = {
    "Constant": _constant,
    "Identity": _identity,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _binary("add"),
    "Sub": _binary("subtract"),
    "Mul": _binary("multiply"),
    "Relu": lambda cx, n: _unary(cx, n, cx.tf.nn.relu),
    "Clip": _clip,
    "Sigmoid": _sigmoid,
    "HardSwish": _hardswish,
    "HardSigmoid": _hardsigmoid,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_avg,
    "Concat": _concat,
    "Resize": _resize,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Pad": _pad,
    "Softmax": _softmax,
    "Split": _split,
    "Slice": _slice,
}

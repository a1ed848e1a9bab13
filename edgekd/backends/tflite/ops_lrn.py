"""LRN (AlexNet, ZFNet, GoogLeNet): y = x / (bias + alpha / size · Σ x²)^beta over ``size`` channels
around each.

In float it is TFLite's LOCAL_RESPONSE_NORMALIZATION, which has no int8 kernel. In int8 it is written
out in ops that have one: x² (MUL), the window sum with alpha / size and bias folded in (a 1×1
CONV_2D with banded weights), then v^-beta from RSQRT and MUL (a = v^-1/2, rsqrt(a) = v^1/4), and x · v^-beta.
Every intermediate gets a grid derived from the input's, so the artifact rounds a few times where the
simulation's float LRN rounds once; alpha is small in every model that uses it (1e-4), which keeps
v^-beta near 1 and the extra roundings below an output step.
"""

from __future__ import annotations

import numpy as np

from edgekd.backends.tflite.graph import INT8_MAX, Lowering, Reject, Val, WeightQ, derived_grid, grid
from edgekd.backends.tflite.rules import LRN_INT8_BETAS, lrn_int8_refusal
from edgekd.ir.proto_index import node_attrs
from edgekd.quant.qparams import quantize_bias

# v^-beta from a = v^-1/2 and b = rsqrt(a) = v^1/4: the exponents int8 kernels reach, as products.
FACTORS = {0.25: ("a", "b"), 0.5: ("a",), 0.75: ("a", "a", "b"), 1.0: ("a", "a")}
assert set(FACTORS) == set(LRN_INT8_BETAS)


def lrn(cx: Lowering, node) -> list[Val]:
    a = node_attrs(node)
    size = int(a["size"])
    if size % 2 == 0:
        raise Reject(f"LRN with an even size ({size}) sums a window TFLite's symmetric one cannot")
    x = cx.to_nhwc(cx.get(node.input[0]))
    alpha, beta, bias = float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
    if not cx.quantized:
        t = cx.tf.nn.local_response_normalization(
            x.t, depth_radius=(size - 1) // 2, bias=bias, alpha=alpha / size, beta=beta
        )
        return [Val(t, True)]
    refusal = lrn_int8_refusal(a)
    if refusal or x.q is None:
        raise Reject(refusal or "LRN reads a float tensor in an int8 graph")
    return [Val(x.t * _inverse_power(cx, x, size, alpha, beta, bias), True)]


def _inverse_power(cx: Lowering, x: Val, size: int, alpha: float, beta: float, bias: float):
    """(bias + alpha / size · Σ x²)^-beta in int8 ops, each on a grid derived from x's."""
    tf = cx.tf
    lo, hi = grid(x.q)
    top = max(lo * lo, hi * hi)
    v_max = bias + alpha * top
    channels = x.t.shape[-1]
    radius = (size - 1) // 2
    band = (np.abs(np.subtract.outer(np.arange(channels), np.arange(channels))) <= radius).astype(np.float32)
    step = alpha / size / INT8_MAX  # every weight is alpha / size: 127 steps of it
    weights = WeightQ(band.astype(np.int8) * INT8_MAX, np.full(channels, step, np.float32), 3)
    with tf.name_scope("derived"):
        sq_grid = derived_grid(0.0, top)
        squares = cx.fake_quant(x.t * x.t, sq_grid)
        q, bias_scale = quantize_bias(np.full(channels, bias, np.float32), sq_grid[0], weights.scale)
        summed = tf.nn.conv2d(squares, cx.weight(Val(band[None, None] * (alpha / size), w=weights)), 1, "VALID")
        v = cx.fake_quant_range(
            tf.nn.bias_add(summed, (q * bias_scale.astype(np.float64)).astype(np.float32)), 0, v_max
        )
        factors = {"a": cx.fake_quant_range(tf.math.rsqrt(v), 0, bias**-0.5)}
        if "b" in FACTORS[beta]:
            factors["b"] = cx.fake_quant_range(tf.math.rsqrt(factors["a"]), 0, v_max**0.25)
        power, exponent = None, 0.0
        for key in FACTORS[beta]:
            exponent += {"a": 0.5, "b": -0.25}[key]
            power = factors[key] if power is None else cx.fake_quant_range(power * factors[key], 0, bias**-exponent)
    return power


HANDLERS = {"LRN": lrn}

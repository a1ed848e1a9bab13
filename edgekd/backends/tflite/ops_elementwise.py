"""Element-wise activations and math: the ops third-party models bring beyond the zoo's (Div by a
tensor, Pow, Sqrt, Exp, Tanh, LeakyRelu, PRelu, Elu, GELU written with Erf). Each maps to the TFLite
op whose int8 kernel computes it in one step, so the simulation's single Q/DQ after the ONNX op is
the kernel's one rounding (measured with the converter of TF 2.21: DIV, SQRT, RSQRT, EXP, TANH,
LEAKY_RELU, PRELU and GELU have int8 kernels; ELU, SQUARE and LOCAL_RESPONSE_NORMALIZATION stay
float, and Erf is no TFLite op at all)."""

from __future__ import annotations

import numpy as np

from edgekd.backends.tflite.graph import Lowering, Reject, Val
from edgekd.backends.tflite.ops import _binary, _unary
from edgekd.backends.tflite.rules import INT8_EXPONENTS
from edgekd.ir.proto_index import node_attrs


def pow_exponent(value) -> float | None:
    """The exponent of a Pow when it is one constant number, else None."""
    e = np.asarray(value)
    return float(e.reshape(-1)[0]) if e.size == 1 else None


def _pow(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    e = cx.get(node.input[1])
    exponent = pow_exponent(e.t) if e.const else None
    tf = cx.tf
    if exponent == 1.0:
        return [Val(cx.tensor(x), x.nhwc)]
    if exponent == 2.0:
        t = cx.tensor(x)
        return [Val(tf.math.multiply(t, t), x.nhwc)]
    if exponent == 0.5:
        return _unary(cx, node, tf.sqrt)
    if cx.quantized:
        raise Reject(
            f"Pow with exponent {exponent if exponent is not None else 'computed at run time'} has no int8 "
            f"TFLite kernel (int8: exponents {', '.join(f'{v:g}' for v in INT8_EXPONENTS)})"
        )
    return [
        Val(tf.pow(cx.tensor(x), cx.tensor(cx.to_nhwc(e) if x.nhwc and not e.const and cx.rank(e) == 4 else e)), x.nhwc)
    ]


def _leaky_relu(cx: Lowering, node) -> list[Val]:
    alpha = float(node_attrs(node).get("alpha", 0.01))
    return _unary(cx, node, lambda t: cx.tf.nn.leaky_relu(t, alpha))


def _prelu(cx: Lowering, node) -> list[Val]:
    """``relu(x) + (-slope) * relu(-x)``, the form the converter turns into PRELU. The slope must
    broadcast over every axis but the batch: [1, 1, C] for an NHWC image, as the converter wants."""
    tf = cx.tf
    x = cx.get(node.input[0])
    slope = cx.get(node.input[1])
    if not slope.const:
        raise Reject("PRelu slope computed at run time")
    shape = cx.onnx_shape(x)
    s = np.broadcast_to(np.asarray(slope.t, np.float32), shape[1:])  # ONNX broadcast, without the batch
    if x.nhwc:
        s = s.transpose(1, 2, 0)
    neg = tf.constant(np.ascontiguousarray(-s))
    t = cx.tensor(x)
    return [Val(tf.nn.relu(t) + neg * tf.nn.relu(-t), x.nhwc)]


def _elu(cx: Lowering, node) -> list[Val]:
    if cx.quantized:
        raise Reject("ELU has no int8 TFLite kernel: the converter keeps it float")
    tf = cx.tf
    alpha = float(node_attrs(node).get("alpha", 1.0))
    if alpha == 1.0:
        return _unary(cx, node, tf.nn.elu)
    return _unary(cx, node, lambda t: tf.where(t > 0, t, alpha * (tf.exp(t) - 1.0)))


def _erf(cx: Lowering, node) -> list[Val]:
    raise Reject("Erf has no TFLite op; only a GELU written with it (0.5·x·(1 + erf(x/√2))) lowers")


def rsqrt(cx: Lowering, x: Val) -> Val:
    """The ``1 / sqrt(x)`` a composite stands for: TFLite's RSQRT."""
    return Val(cx.tf.math.rsqrt(cx.tensor(x)), x.nhwc)


def gelu(cx: Lowering, x: Val) -> Val:
    """The GELU a composite (``edgekd.ir.patterns.composites``) stands for: TFLite's GELU op."""
    return Val(cx.tf.nn.gelu(cx.tensor(x), approximate=False), x.nhwc)


HANDLERS = {
    "Div": _binary("divide"),
    "Pow": _pow,
    "Sqrt": lambda cx, n: _unary(cx, n, cx.tf.sqrt),
    "Exp": lambda cx, n: _unary(cx, n, cx.tf.exp),
    "Tanh": lambda cx, n: _unary(cx, n, cx.tf.tanh),
    "LeakyRelu": _leaky_relu,
    "PRelu": _prelu,
    "Elu": _elu,
    "Erf": _erf,
}

"""Activation and normalization patterns written out in primitive ops.

Hard-swish / hard-sigmoid (``x * relu6(x + 3) / 6``) are fused into the ONNX ops, which every backend
lowers (onnxscript's rules; HardSwish needs opset 14). SiLU, GELU and decomposed LayerNorm have no op
every target takes at the opsets edgekd emits, so they are recognized and counted, not rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgekd.ir.graph import const_array


def fuse_hard_activations(model: ir.Model, opset: int) -> int:
    """``x * clip(x + 3, 0, 6) / 6`` → HardSwish and ``clip(x + 3, 0, 6) / 6`` → HardSigmoid (opset ≥ 14)."""
    if opset < 14:
        return 0
    from onnxscript.rewriter.rules.common import fuse_hardswish_rules

    return fuse_hardswish_rules().apply_to_model(model)


def _producer(v: ir.Value | None, op: str) -> ir.Node | None:
    node = v.producer() if v is not None else None
    return node if node is not None and node.op_type == op else None


def _is_const(v: ir.Value | None, value: float, rtol: float = 1e-3) -> bool:
    c = const_array(v)
    return c is not None and c.size == 1 and bool(np.isclose(float(c.reshape(-1)[0]), value, rtol=rtol))


def _other(node: ir.Node, v: ir.Value) -> ir.Value | None:
    return node.inputs[1] if node.inputs[0] is v else node.inputs[0]


def is_silu(node: ir.Node) -> bool:
    """``x * sigmoid(x)``."""
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return False
    for v in node.inputs:
        sig = _producer(v, "Sigmoid")
        if sig is not None and sig.inputs[0] is _other(node, v):
            return True
    return False


def is_gelu(node: ir.Node) -> bool:
    """The Erf at the heart of ``0.5 * x * (1 + erf(x / sqrt(2)))`` (division or multiplication by 1/√2)."""
    if node.op_type != "Erf":
        return False
    scaled = node.inputs[0].producer() if node.inputs[0] is not None else None
    if scaled is None or len(scaled.inputs) != 2:
        return False
    if not (
        (scaled.op_type == "Div" and _is_const(scaled.inputs[1], np.sqrt(2)))
        or (scaled.op_type == "Mul" and any(_is_const(v, 1 / np.sqrt(2)) for v in scaled.inputs))
    ):
        return False
    return any(
        u.node.op_type == "Add" and any(_is_const(v, 1.0) for v in u.node.inputs) for u in node.outputs[0].uses()
    )


def is_tanh_gelu(node: ir.Node) -> bool:
    """The Tanh of ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``."""
    if node.op_type != "Tanh":
        return False
    mul = _producer(node.inputs[0], "Mul")
    return mul is not None and any(_is_const(v, np.sqrt(2 / np.pi)) for v in mul.inputs)


def _reciprocal_sqrt(v: ir.Value | None) -> ir.Node | None:
    """The Sqrt of ``1 / sqrt(x)`` that computed ``v``."""
    div = _producer(v, "Div")
    return _producer(div.inputs[1], "Sqrt") if div is not None and _is_const(div.inputs[0], 1.0) else None


def is_layernorm(node: ir.Node) -> bool:
    """The final Div of ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)``, or its final Mul by
    ``1 / sqrt(...)`` (the form canonicalization writes)."""
    if node.op_type == "Div":
        sub, sqrt = _producer(node.inputs[0], "Sub"), _producer(node.inputs[1], "Sqrt")
    elif node.op_type == "Mul" and len(node.inputs) == 2:
        sub, sqrt = _producer(node.inputs[0], "Sub"), _reciprocal_sqrt(node.inputs[1])
    else:
        return False
    if sub is None or sqrt is None or _producer(sub.inputs[1], "ReduceMean") is None:
        return False
    add = _producer(sqrt.inputs[0], "Add")
    var = _producer(add.inputs[0], "ReduceMean") if add is not None else None
    square = var.inputs[0].producer() if var is not None else None
    return square is not None and square.op_type in ("Pow", "Mul") and sub.outputs[0] in square.inputs


RECOGNIZERS = {"silu": is_silu, "gelu_erf": is_gelu, "gelu_tanh": is_tanh_gelu, "layernorm_decomposed": is_layernorm}
# Fused ops counted as the patterns they stand for.
PATTERN_OPS = {
    "HardSwish": "hardswish",
    "HardSigmoid": "hardsigmoid",
    "Gelu": "gelu",
    "LayerNormalization": "layernorm",
    "Swish": "silu",
}


def count_patterns(graph: ir.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph:
        names = [name for name, match in RECOGNIZERS.items() if match(node)]
        if node.op_type in PATTERN_OPS:
            names.append(PATTERN_OPS[node.op_type])
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Composite:
    """A function written out in primitive ops that integer runtimes compute as one op (TFLite's GELU
    has an int8 kernel; ``Erf`` has none). The quantizer puts no Q/DQ inside it (the simulation rounds
    once, at ``output``, as the single kernel does) and a backend lowers it from ``input`` to ``output``."""

    kind: str  # "gelu", "rsqrt"
    input: ir.Value
    output: ir.Value
    nodes: tuple[ir.Node, ...]  # every node of it, the one producing ``output`` last


def _sole_use(v: ir.Value) -> ir.Node | None:
    uses = v.consumers()
    return uses[0] if len(uses) == 1 and not v.is_graph_output() else None


def _gelu_at(erf: ir.Node) -> Composite | None:
    """``0.5 * x * (1 + erf(x / sqrt(2)))`` around ``erf``, in the orders torch and Keras export it."""
    scaled = erf.inputs[0].producer() if erf.inputs[0] is not None else None
    if scaled is None or not is_gelu(erf) or _sole_use(scaled.outputs[0]) is not erf:
        return None
    x = next(v for v in scaled.inputs if const_array(v) is None) if scaled.op_type == "Mul" else scaled.inputs[0]
    add = _sole_use(erf.outputs[0])
    if add is None or add.op_type != "Add":
        return None
    mul = _sole_use(add.outputs[0])
    if mul is None or mul.op_type != "Mul":
        return None
    other = _other(mul, add.outputs[0])
    nodes = [scaled, erf, add]
    if other is x:  # x * (1 + erf) * 0.5
        last = _sole_use(mul.outputs[0])
        if last is None or last.op_type != "Mul" or not _is_const(_other(last, mul.outputs[0]), 0.5):
            return None
        nodes += [mul, last]
    elif (
        (half := other.producer()) is not None
        and half.op_type == "Mul"
        and x in half.inputs
        and _is_const(_other(half, x), 0.5)
        and _sole_use(other) is mul
    ):  # (x * 0.5) * (1 + erf)
        nodes += [half, mul]
    elif _is_const(other, 0.5):  # (1 + erf) * 0.5 * x
        last = _sole_use(mul.outputs[0])
        if last is None or last.op_type != "Mul" or _other(last, mul.outputs[0]) is not x:
            return None
        nodes += [mul, last]
    else:
        return None
    return Composite("gelu", x, nodes[-1].outputs[0], tuple(nodes))


def _rsqrt_at(div: ir.Node) -> Composite | None:
    """``1 / sqrt(x)`` ending in ``div``: TFLite's RSQRT, whose int8 kernel maps an input of zero to its
    largest output where a DIV by a zero SQRT has no defined result."""
    sqrt = _reciprocal_sqrt(div.outputs[0])
    if sqrt is None or _sole_use(sqrt.outputs[0]) is not div:
        return None
    return Composite("rsqrt", sqrt.inputs[0], div.outputs[0], (sqrt, div))


def composites(graph: ir.Graph) -> list[Composite]:
    """Every GELU written out with Erf and every ``1 / sqrt(x)`` in ``graph``."""
    found = (_gelu_at(n) if n.op_type == "Erf" else _rsqrt_at(n) if n.op_type == "Div" else None for n in graph)
    return [c for c in found if c is not None]

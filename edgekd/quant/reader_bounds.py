"""The range of values a quantized tensor's readers can tell apart: below its floor (above its ceiling) every
reader writes (about) the same output, so the tensor's int8 grid need not reach further.

A convolution feeding SiLU spans as far below zero as above it (measured on the people-det student at
640: [-19.6, 19.4]), yet SiLU(x) for x < -8 is within 0.003 of zero, under a tenth of the SiLU output's
own step there. Starting the grid at -8 instead of -19.6 halves its step over the values that matter
(measured results in docs/detection.md). Sigmoid readers bound both sides at ±8; ReLU (0), HardSwish (-3),
HardSigmoid (-beta/alpha, (1-beta)/alpha) and Clip (its limits) exactly. Runtimes take any range, so the
artifact keeps matching the simulation; values below the floor saturate to it in both.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable

import onnx_ir as ir

from edgekd.ir.graph import const_array

# SiLU(-8) = -0.0027; the x·sigmoid(x) written out is read by the Sigmoid and by the Mul.
SILU_FLOOR = -8.0
# sigmoid(±8) is within 3.4e-4 of 0 and 1: under the 1/256 step of a quantized sigmoid output, and under
# any detection confidence threshold when the sigmoid is a float decode's.
SIGMOID_BOUND = 8.0
Bounds = tuple[float | None, float | None]  # (floor, ceiling); None: the reader tells everything apart
UNBOUNDED: Bounds = (None, None)


def _hard_sigmoid(node: ir.Node) -> Bounds:
    alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
    return (-beta / alpha, (1 - beta) / alpha) if alpha > 0 else UNBOUNDED


def _scalar(v: ir.Value | None) -> float | None:
    a = const_array(v) if v is not None else None
    return float(a) if a is not None and a.size == 1 else None


def _clip(node: ir.Node) -> Bounds:
    if len(node.inputs) > 1:
        return _scalar(node.inputs[1]), _scalar(node.inputs[2]) if len(node.inputs) > 2 else None
    attrs = node.attributes
    return (
        attrs.get_float("min", None) if "min" in attrs else None,
        attrs.get_float("max", None) if "max" in attrs else None,
    )


def _silu_mul(node: ir.Node, v: ir.Value, readers: frozenset[str]) -> bool:
    """``node`` is the Mul of ``v * sigmoid(v)`` and the Sigmoid reads the same quantized ``v`` (``readers``).
    Where the Sigmoid reads the float ``v`` beside the Mul's int8 one (OpenVINO's placement), OpenVINO does
    not compute the pair as the simulation does once the Mul's input is clamped (measured: the conformance
    EfficientNet's artifact went past the 5 % relative-error limit, to 5.97e-2), so no floor there."""
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return False
    other = node.inputs[1] if node.inputs[0] is v else node.inputs[0]
    producer = other.producer() if other is not None else None
    return (
        producer is not None and producer.op_type == "Sigmoid" and producer.inputs[0] is v and producer.name in readers
    )


# Ops that move, pick or reorder values without changing them: their readers' bounds are their input's.
MOVING = frozenset(
    {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat", "Identity", "MaxPool"}
)


def value_bounds(v: ir.Value, depth: int = 0) -> Bounds:
    """The bounds every reader of ``v`` accepts, looking through value-moving ops; a graph output has none."""
    if v.is_graph_output() or depth > 16:
        return UNBOUNDED
    readers = frozenset(u.node.name for u in v.uses())
    return _shared(reader_bounds(u.node, v, readers, depth) for u in v.uses())


def reader_bounds(node: ir.Node, v: ir.Value, readers: frozenset[str], depth: int = 0) -> Bounds:
    """The values below and above which ``node`` reading ``v`` writes (about) the same output; ``readers``:
    the nodes that read the same (quantized) ``v``."""
    op = node.op_type
    if op == "Concat" or (op in MOVING and node.inputs and node.inputs[0] is v):
        return _shared(value_bounds(out, depth + 1) for out in node.outputs)
    if op == "Relu":
        return 0.0, None
    if op == "HardSwish":
        return -3.0, None
    if op == "HardSigmoid":
        return _hard_sigmoid(node)
    if op == "Clip" and node.inputs[0] is v:
        return _clip(node)
    if op == "Sigmoid":
        return -SIGMOID_BOUND, SIGMOID_BOUND
    if _silu_mul(node, v, readers):
        return SILU_FLOOR, None
    return UNBOUNDED


def _shared(bounds: Iterable[Bounds]) -> Bounds:
    """The bounds every reader accepts: the lowest floor and the highest ceiling, None if any lacks one (or
    there are no readers). Stops at the first unbounded reader: a walk through wide Concat fan-outs stays short."""
    floor: float | None = math.inf
    ceiling: float | None = -math.inf
    for low, high in bounds:
        floor = None if floor is None or low is None else min(floor, low)
        ceiling = None if ceiling is None or high is None else max(ceiling, high)
        if floor is None and ceiling is None:
            break
    return (None if floor == math.inf else floor, None if ceiling == -math.inf else ceiling)


def set_bounds(graph: ir.Graph, plan) -> int:
    """Gives each activation site of ``plan`` the bounds all its readers share, also across a grid copied
    downstream (``same_as``); a graph output gets none. Returns how many sites got a floor or a ceiling."""
    nodes = {n.name: n for n in graph}
    values = {v.name: v for n in graph for v in n.outputs} | {v.name: v for v in graph.inputs}
    groups: dict[str, list[Bounds]] = {}
    for name, site in plan.activations.items():
        v = values.get(name)
        readers = frozenset(c for c, _ in site.consumers)
        own = [reader_bounds(nodes[c], v, readers) for c in readers] if v is not None else [UNBOUNDED]
        if not own:
            own = [UNBOUNDED]
        groups.setdefault(site.same_as or name, []).extend([UNBOUNDED] if site.to_graph_output else own)
    count = 0
    for name, site in plan.activations.items():
        if site.same_as is None and site.fixed_range is None and name in groups:
            bounds = _shared(groups[name])
            if bounds != UNBOUNDED:
                plan.activations[name] = replace(site, bounds=bounds)
                count += 1
    return count

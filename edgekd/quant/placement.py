"""Where Q/DQ pairs go, for each activation scheme.

Two placements, both standard QDQ ONNX:

* ``outputs`` (asymmetric schemes: TFLite, OpenVINO, ONNX Runtime): the graph input and the output
  of every value-changing op are quantized, as integer-only runtimes execute them. A Conv/Gemm
  whose activation the fuse pass marked is quantized after the activation, not before it. Ops that
  only move values (pooling by max, reshapes, slicing, nearest resize) keep their input's grid and
  get no pair of their own.
* ``inputs`` (symmetric int8, TensorRT): following TensorRT's guidance on Q/DQ placement, the data
  inputs of weighted ops and both inputs of element-wise Add (the residual join) are quantized;
  outputs of weighted ops are not, so TensorRT can fuse them with what follows.

Functions written out in primitive ops that integer runtimes run as one kernel (GELU with Erf,
``edgekd.ir.patterns.composites``) get no pair inside them, only on their output.

Weights of Conv/ConvTranspose/Gemm/MatMul are always per-channel int8; layers named in ``keep_float`` keep float
weights and read float inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from edgekd.ir.dataflow import data_values, is_float_data
from edgekd.ir.graph import FUSED_ACTIVATION, FUSED_ADD, const_array, sole_consumer
from edgekd.ir.patterns import composites

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops whose outputs hold a new set of values, so their own range must be observed.
VALUE_CHANGING = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu", "PRelu",
    "Elu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Gelu", "Erf", "Exp", "Pow", "Sqrt", "Softmax", "Concat",
    "GlobalAveragePool", "ReduceMean", "ReduceSum", "BatchNormalization", "LayerNormalization",
    "LRN",
})
# Ops that only move or select values: their output stays on the input's grid, so its Q/DQ pair
# copies the input's parameters (exact) and integer runtimes see one scale on both sides. A bilinear
# Resize and a local AveragePool interpolate; they are here because their int8 TFLite kernels need the
# input's grid on the output (AVERAGE_POOL_2D refuses a scale 5e-6 off it: light DenseNet-121), and an
# average never leaves its input's range.
GRID_PRESERVING = frozenset({"MaxPool", "AveragePool", "GlobalMaxPool", "ReduceMax", "Reshape", "Flatten", "Transpose", "Squeeze",
                             "Unsqueeze", "Split", "Slice", "Gather", "DepthToSpace", "SpaceToDepth", "Tile",
                             "Resize", "Pad", "Identity"})
# Outputs whose range is fixed by the function, as integer runtimes require (TFLite: LOGISTIC and
# SOFTMAX at scale 1/256, TANH at 1/128 with zero point 0).
FIXED_RANGE = {"Sigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}


@dataclass(frozen=True)
class ActivationSite:
    tensor: str
    consumers: tuple[tuple[str, int], ...]  # (node name, input index) that read the dequantized value
    to_graph_output: bool  # the graph output becomes the dequantized value
    fixed_range: tuple[float, float] | None = None
    same_as: str | None = None  # copy this (upstream) tensor's parameters instead of observing


@dataclass(frozen=True)
class WeightSite:
    node: str
    input_index: int
    axis: int


@dataclass(frozen=True)
class ConstantSite:
    """A float constant operand of an element-wise op, quantized per tensor on the activation scheme:
    integer kernels (TFLite's ADD/SUB/MUL/DIV) take it as an int8 tensor, so the simulation must too."""

    node: str
    input_index: int


@dataclass
class QuantPlan:
    placement: str
    activations: dict[str, ActivationSite] = field(default_factory=dict)
    weights: list[WeightSite] = field(default_factory=list)
    keep_float: frozenset[str] = frozenset()
    constants: list[ConstantSite] = field(default_factory=list)

    @property
    def observed(self) -> list[str]:
        """Tensors whose range calibration must measure."""
        return [t for t, s in self.activations.items() if s.fixed_range is None and s.same_as is None]


def weight_axis(node: ir.Node) -> int | None:
    """The output-channel axis of the node's weight (input 1), or None when it is not a constant."""
    if const_array(node.inputs[1]) is None:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":  # [C_in, C_out / group, kh, kw]
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul":
        return 1 if const_array(node.inputs[1]).ndim == 2 else None
    return None


def _is_float_activation(v: ir.Value | None, data: set[ir.Value]) -> bool:
    if v is None or v.const_value is not None or v.is_initializer():
        return False
    producer = v.producer()
    if producer is not None and producer.op_type == "Constant":
        return False
    return is_float_data(v, data)  # never a shape or index tensor, even a float one


def _node_names(graph: ir.Graph) -> None:
    seen = set()
    for i, node in enumerate(graph):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _uses(v: ir.Value, keep_float: frozenset[str], only_ops: frozenset[str] | None = None) -> tuple[tuple[str, int], ...]:
    out = []
    for use in v.uses():
        node, idx = use.node, use.idx
        if node.name in keep_float or (only_ops is not None and node.op_type not in only_ops):
            continue
        if node.op_type in WEIGHTED and idx != 0:
            continue  # weights and biases are handled as weight sites
        out.append((node.name, idx))
    return tuple(out)


# Element-wise ops whose constant operand an integer kernel reads as int8 (``constant_operands``).
CONSTANT_OPERAND_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def _constant_sites(graph: ir.Graph, data: set[ir.Value], skip: set[ir.Node],
                    keep_float: frozenset[str]) -> list[ConstantSite]:
    sites = []
    for node in graph:
        if node.op_type not in CONSTANT_OPERAND_OPS or node in skip or node.name in keep_float or len(node.inputs) != 2:
            continue
        for idx, v in enumerate(node.inputs):
            c = const_array(v)
            if c is not None and c.dtype == np.float32 and _is_float_activation(node.inputs[1 - idx], data):
                sites.append(ConstantSite(node.name, idx))
    return sites


def _onto_concat_grids(graph: ir.Graph, plan: QuantPlan) -> None:
    """A value-changing producer read only by a Concat is quantized straight onto the Concat's grid."""
    for node in graph:
        if node.op_type != "Concat" or node.outputs[0].name not in plan.activations:
            continue
        out = node.outputs[0].name
        for v in node.inputs:
            site = plan.activations.get(v.name) if v is not None else None
            producer = v.producer() if v is not None else None
            if (site is not None and site.same_as is None and site.fixed_range is None and producer is not None
                    and producer.op_type in VALUE_CHANGING and sole_consumer(v) is node):
                plan.activations[v.name] = replace(site, same_as=out)


def plan_quantization(model: ir.Model, placement: str, keep_float: frozenset[str] = frozenset(),
                      constant_operands: bool = False, concat_grid: bool = False) -> QuantPlan:
    """Where the Q/DQ pairs go. Two target facts change it: ``constant_operands``, float constants read
    by element-wise ops are quantized too, as the target's integer kernels need them; ``concat_grid``,
    a producer read only by a Concat is quantized onto the Concat's grid, as the target's converter
    writes it (TFLite: its int8 CONCATENATION needs every input on the output's grid, and the
    converter moves such a producer there instead of adding a requantize op)."""
    graph = model.graph
    _node_names(graph)
    plan = QuantPlan(placement, keep_float=keep_float)
    data = data_values(graph)
    for node in graph:
        if node.op_type in WEIGHTED and node.name not in keep_float:
            axis = weight_axis(node)
            if axis is not None:
                plan.weights.append(WeightSite(node.name, 1, axis))

    if placement == "outputs":
        found = composites(graph)
        inside = {v for c in found for n in c.nodes[:-1] for v in n.outputs}
        if constant_operands:
            plan.constants = _constant_sites(graph, data, {n for c in found for n in c.nodes}, keep_float)
        for v in graph.inputs:
            if _is_float_activation(v, data):
                plan.activations[v.name] = ActivationSite(v.name, _uses(v, keep_float), v.is_graph_output())
        for node in graph:
            outs = [v for v in node.outputs if _is_float_activation(v, data) and v not in inside]
            if node.op_type in VALUE_CHANGING:
                if node.metadata_props.get(FUSED_ACTIVATION) or node.metadata_props.get(FUSED_ADD):
                    continue  # quantized after its fused activation, or summed in float into its residual Add
                fixed = FIXED_RANGE.get(node.op_type)
                for v in outs:
                    plan.activations[v.name] = ActivationSite(v.name, _uses(v, keep_float), v.is_graph_output(), fixed)
            elif node.op_type in GRID_PRESERVING and node.inputs and node.inputs[0] is not None:
                source = node.inputs[0].name
                if source in plan.activations:
                    root = plan.activations[source].same_as or source
                    for v in outs:
                        plan.activations[v.name] = ActivationSite(v.name, _uses(v, keep_float), v.is_graph_output(),
                                                                  same_as=root)
        if concat_grid:
            _onto_concat_grids(graph, plan)
    elif placement == "inputs":
        wanted: dict[str, set[tuple[str, int]]] = {}
        values: dict[str, ir.Value] = {}
        for node in graph:
            if node.name in keep_float:
                continue
            if node.op_type in WEIGHTED and weight_axis(node) is not None:
                edges = [(0, node.inputs[0])]
            elif node.op_type == "Add" and all(_is_float_activation(v, data) for v in node.inputs):
                edges = list(enumerate(node.inputs))
            else:
                continue
            for idx, v in edges:
                if _is_float_activation(v, data):
                    wanted.setdefault(v.name, set()).add((node.name, idx))
                    values[v.name] = v
        for name, consumers in wanted.items():
            plan.activations[name] = ActivationSite(name, tuple(sorted(consumers)), False, None)
    else:
        raise ValueError(f"unknown placement {placement!r}")
    return plan

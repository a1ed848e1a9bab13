"""Where Q/DQ pairs go. A target spec names its placement (``[quantization] placement``), chosen from
what its runtime turns into integer kernels; all are standard QDQ ONNX, and the QDQ graph is the
simulation, so the fidelity check follows whichever is chosen.

* ``outputs`` (integer-only runtimes: TFLite): the graph input and the output of every value-changing
  op are quantized, as integer-only runtimes execute them. A Conv/Gemm whose activation the fuse pass
  marked is quantized after the activation, not before it. Ops that only move values (pooling by max,
  reshapes, slicing, nearest resize) keep their input's grid and get no pair of their own.
* ``qlinear`` (ONNX Runtime): ``outputs``, shaped to the node units ORT's QDQ optimizer replaces by
  QLinearConv/QLinearAdd/QGemm/...: an Add/Sub/Mul whose only reader is a ReLU is quantized after the
  ReLU (ORT drops a ReLU whose Q starts at zero, so the unit becomes DQ → Add → Q), the output of a
  Gemm/MatMul that is a graph output, or read only by a Softmax/Sigmoid that is one, stays float (QGemm
  writes float), and so does that Softmax/Sigmoid; a Concat of a constant and data read only by
  element-wise arithmetic (a class token) is joined in float, as ORT does anyway. Activations must be uint8 on
  x86: ORT's x86 selectors take int8 activations only after converting a Q/DQ pair to uint8, which it
  does only for a Q with one reader, so every tensor read twice stayed float under int8.
* ``inputs`` (symmetric int8, TensorRT): following TensorRT's guidance on Q/DQ placement, the data
  inputs of weighted ops and both inputs of element-wise Add (the residual join) are quantized;
  outputs of weighted ops are not, so TensorRT can fuse them with what follows.
* ``weighted-inputs`` (Ascend): the data inputs of weighted ops only, where AMCT puts its quant layers;
  ATC computes every other op in float16.
* ``quantizable-inputs`` (OpenVINO): the data inputs of the ops OpenVINO's low-precision
  transformations run on integers (NNCF's CPU configuration: weighted ops, element-wise arithmetic,
  Concat, average pooling, ReduceMean); the CPU plugin folds each FakeQuantize into the layer that
  produces its input. Nothing is quantized only because an op wrote it: no pair on a value that only a
  float op (the SE gate's HardSigmoid, the graph output) reads, none between an Add and its ReLU.
  Measured against NNCF's ``nncf.quantize`` (``bench/openvino_placement.py``; OpenVINO 2026.4, 2
  threads): with the zero-point-free ``symmetric-by-sign`` activations the plugin compiles MobileNetV2 and
  a CIFAR ResNet-20 to NNCF's runtime graph node for node, with NNCF's oneDNN kernels and post-op chains,
  and runs them at NNCF's latency (0.98-1.00× on AVX-512 VNNI and on AMX). The graph input and the
  classifier keep their pairs: without the first, the first convolution runs in f32 behind an f32
  reorder (1.05-1.09× NNCF's latency on MobileNetV2); without the second, the fully-connected layer runs
  in f32 on i8 weights, no faster.
  A pair is not hoisted above an average pool or a linear Resize: the plugin rounds their int8 output
  onto their input's grid, so the pair on their output copies the input's parameters (``interpolates``).

Functions written out in primitive ops that integer runtimes run as one kernel (GELU with Erf,
``1 / sqrt(x)``; ``edgekd.ir.patterns.composites``) get no pair inside them, only on their output.

A channel Concat read only by per-channel scales (DenseNet's BatchNorm before each layer) keeps its
parts' grids: no pair on it (``outputs`` and ``qlinear`` unless the target needs one grid per Concat,
``concat_grid``) and none on its inputs for it (``quantizable-inputs``); :func:`keeps_part_grids`.

Weights of Conv/ConvTranspose/Gemm/MatMul are always per-channel int8; layers named in ``keep_float`` keep float
weights and read float inputs.

A detector's decode and the last head convolutions feeding it (:func:`edgekd.ir.detector.float_region`)
stay float under every placement: the head convolutions hold float weights, read their int8 input
dequantized and write the float logits and offsets the decode reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from edgekd.ir.dataflow import data_values, is_float_data
from edgekd.ir.detector import decode_tail, head_layers
from edgekd.ir.graph import FUSED_ACTIVATION, FUSED_ADD, const_array, sole_consumer
from edgekd.ir.normalize import affine_step
from edgekd.ir.patterns import composites
from edgekd.quant.reader_bounds import set_bounds
from edgekd.specs import PLACEMENTS, TargetSpec

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops whose outputs hold a new set of values, so their own range must be observed.
VALUE_CHANGING = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Relu",
        "Clip",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "HardSwish",
        "HardSigmoid",
        "Sigmoid",
        "Tanh",
        "Gelu",
        "Erf",
        "Exp",
        "Pow",
        "Sqrt",
        "Softmax",
        "Concat",
        "GlobalAveragePool",
        "ReduceMean",
        "ReduceSum",
        "BatchNormalization",
        "LayerNormalization",
        "LRN",
    }
)
# Ops that only move or select values: their output stays on the input's grid, so its Q/DQ pair
# copies the input's parameters (exact) and integer runtimes see one scale on both sides. A bilinear
# Resize and a local AveragePool interpolate; they are here because their int8 TFLite kernels need the
# input's grid on the output (AVERAGE_POOL_2D refuses a scale 5e-6 off it: light DenseNet-121), and an
# average never leaves its input's range.
GRID_PRESERVING = frozenset(
    {
        "MaxPool",
        "AveragePool",
        "GlobalMaxPool",
        "ReduceMax",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Split",
        "Slice",
        "Gather",
        "DepthToSpace",
        "SpaceToDepth",
        "Tile",
        "Resize",
        "Pad",
        "Identity",
    }
)
# Outputs whose range is fixed by the function, as integer runtimes require (TFLite: LOGISTIC and
# SOFTMAX at scale 1/256, TANH at 1/128 with zero point 0).
FIXED_RANGE = {"Sigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}


# Ops whose data inputs each consumer-driven placement quantizes (weighted ops: input 0 only).
QUANTIZED_INPUTS = {
    "weighted-inputs": WEIGHTED,
    "inputs": WEIGHTED | {"Add"},
    "quantizable-inputs": WEIGHTED | {"Add", "Sub", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "ReduceMean"},
}
ELEMENTWISE = frozenset({"Add", "Sub", "Mul"})
RELU_LIKE = frozenset({"Relu"})  # ORT's ReluQuantFusion drops these in front of a Q starting at zero


@dataclass(frozen=True)
class ActivationSite:
    tensor: str
    consumers: tuple[tuple[str, int], ...]  # (node name, input index) that read the dequantized value
    to_graph_output: bool  # the graph output becomes the dequantized value
    fixed_range: tuple[float, float] | None = None
    same_as: str | None = None  # copy this (upstream) tensor's parameters instead of observing
    # (floor, ceiling): the readers tell nothing apart beyond these (edgekd.quant.reader_bounds)
    bounds: tuple[float | None, float | None] | None = None


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
    float_tail: frozenset[str] = frozenset()  # a detector's decode and last head convolutions: no Q/DQ there
    constants: list[ConstantSite] = field(default_factory=list)
    # nodes whose inputs were quantized above a value-moving op (OpenVINO's hoisting): the sites name the
    # op they were moved to as their reader, so keeping these in float is what drops those pairs
    hoisted_for: set[str] = field(default_factory=set)

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


def _uses(
    v: ir.Value, keep_float: frozenset[str], only_ops: frozenset[str] | None = None
) -> tuple[tuple[str, int], ...]:
    out = []
    for use in v.uses():
        node, idx = use.node, use.idx
        if node.name in keep_float or (only_ops is not None and node.op_type not in only_ops):
            continue
        if node.op_type in WEIGHTED and idx != 0 and const_array(v) is not None:
            continue  # weights and biases are handled as weight sites; attention's MatMul(q, kᵀ) reads data
        out.append((node.name, idx))
    return tuple(out)


# Element-wise ops whose constant operand an integer kernel reads as int8 (``constant_operands``).
CONSTANT_OPERAND_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def _constant_sites(
    graph: ir.Graph, data: set[ir.Value], skip: set[ir.Node], keep_float: frozenset[str]
) -> list[ConstantSite]:
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
            if (
                site is not None
                and site.same_as is None
                and site.fixed_range is None
                and producer is not None
                and producer.op_type in VALUE_CHANGING
                and sole_consumer(v) is node
            ):
                plan.activations[v.name] = replace(site, same_as=out)


def plan_quantization(
    model: ir.Model,
    placement: str,
    keep_float: frozenset[str] = frozenset(),
    constant_operands: bool = False,
    concat_grid: bool = False,
) -> QuantPlan:
    """Where the Q/DQ pairs go. Two target facts change it: ``constant_operands``, float constants read
    by element-wise ops are quantized too, as the target's integer kernels need them; ``concat_grid``,
    a producer read only by a Concat is quantized onto the Concat's grid, as the target's converter
    writes it (TFLite: its int8 CONCATENATION needs every input on the output's grid, and the
    converter moves such a producer there instead of adding a requantize op)."""
    graph = model.graph
    _node_names(graph)
    decode = decode_tail(graph)
    heads = head_layers(graph, decode)
    plan = QuantPlan(placement, keep_float=keep_float, float_tail=decode | heads)
    data = data_values(graph)
    for node in graph:
        if node.op_type in WEIGHTED and node.name not in keep_float and node.name not in plan.float_tail:
            axis = weight_axis(node)
            if axis is not None:
                plan.weights.append(WeightSite(node.name, 1, axis))
    if placement in ("outputs", "qlinear"):
        _output_sites(graph, data, plan, placement == "qlinear", constant_operands, part_grids=not concat_grid)
        if concat_grid:
            _onto_concat_grids(graph, plan)
    elif placement in QUANTIZED_INPUTS:
        _input_sites(graph, data, plan, QUANTIZED_INPUTS[placement], hoist=placement == "quantizable-inputs")
    else:
        raise ValueError(f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}")
    set_bounds(graph, plan)
    return plan


def target_plan(
    model: ir.Model, spec: TargetSpec, placement: str, keep_float: frozenset[str] = frozenset()
) -> QuantPlan:
    """The plan for ``spec``'s runtime: calibration, sensitivity, the accuracy budget, QAT and quantize all
    place Q/DQ with it, so what they measure or train is what the artifact computes."""
    return plan_quantization(model, placement, keep_float, spec.constant_operands, spec.concat_grid)


def _channel_scale(node: ir.Node) -> bool:
    """A Mul of a value by a constant holding one factor per channel (axis 1): a BatchNorm that no
    convolution absorbed, written out."""
    step = affine_step(node)
    if step is None or step[1] != "mul":
        return False
    factors = step[2]
    return factors.ndim >= 2 and factors.shape[1] > 1 and all(d == 1 for i, d in enumerate(factors.shape) if i != 1)


def keeps_part_grids(node: ir.Node) -> bool:
    """A channel Concat read only by per-channel scales and by Concats read so (DenseNet's pre-activation
    BatchNorm reading its block's Concat). It gets no Q/DQ pair of its own: its parts, each on its own
    grid, pass through exactly, and the scale's output is quantized instead. One grid over the parts
    gives the narrow ones a few codes, whose error the scale multiplies (measured on the coverage
    DenseNet: the stem's 24 channels, deviation 0.08 to 0.63, share the grid of dense-layer outputs
    reaching ±20, where they keep 5 to 23 dB; the BatchNorm scales them by up to 15, and under qlinear
    its output was 17.7 dB from float where the Concat it reads was 28.0 dB; without the pair, top-1
    agreement 83.2 → 98.2 % on onnx-cpu, 85.8 → 98.2 % on openvino-cpu)."""
    out = node.outputs[0] if node.outputs else None
    if node.op_type != "Concat" or out is None or out.shape is None or out.is_graph_output() or not out.uses():
        return False
    if node.attributes.get_int("axis", 0) % len(out.shape) != 1:
        return False
    return all(_channel_scale(reader) or keeps_part_grids(reader) for reader in out.consumers())


def _skips_own_pair(node: ir.Node, ort_units: bool) -> bool:
    """Whether a value-changing node's output is quantized later (after its activation) or not at all."""
    if node.metadata_props.get(FUSED_ACTIVATION) or node.metadata_props.get(FUSED_ADD):
        return True  # quantized after its fused activation, or summed in float into its residual Add
    if not ort_units:
        return False
    out = node.outputs[0]
    if node.op_type in ELEMENTWISE:
        readers = out.consumers()
        return len(readers) == 1 and readers[0].op_type in RELU_LIKE and not out.is_graph_output()
    if node.op_type == "Concat":
        return _joins_a_constant_into_arithmetic(node)
    return node.op_type in ("Gemm", "MatMul", *FINAL_ACTIVATIONS) and _ends_the_graph(out)


def _joins_a_constant_into_arithmetic(node: ir.Node) -> bool:
    """A Concat of a constant and data read only by element-wise arithmetic (a ViT's class token joined to
    its patch tokens, then the position embedding added). ORT fuses a Concat into QLinearConcat only when
    every input is dequantized, so it joins these in float either way; a pair on the output would only
    round the constant onto the data's grid before the Add rounds the sum again. One rounding of a fixed
    vector fewer is no sure gain for a given model, so measured on eight ViTs on onnx-cpu: seven closer to
    float without the pair (six random class tokens +0.2 to +0.9 dB; the fidelity page's trained ViT +1.1 dB,
    top-1 agreement 94.0 → 96.8 %), the briefly trained coverage ViT 1.4 dB further (28.2 → 26.8 dB)."""
    out = node.outputs[0]
    readers = out.consumers()
    return (
        any(v is not None and const_array(v) is not None for v in node.inputs)
        and bool(readers)
        and all(r.op_type in ELEMENTWISE for r in readers)
        and not out.is_graph_output()
    )


FINAL_ACTIVATIONS = ("Softmax", "Sigmoid")


def _ends_the_graph(v: ir.Value) -> bool:
    """A graph output nothing else reads, or a value read only by a Softmax/Sigmoid that ends the graph.
    ORT writes it in float at no cost (QGemm's float output; a float softmax over one vector), where the
    fixed 1/256 grid of a quantized softmax rounds a 1000-class model's small probabilities to 0."""
    if v.is_graph_output():
        return not v.uses()
    readers = v.consumers()
    return len(readers) == 1 and readers[0].op_type in FINAL_ACTIVATIONS and _ends_the_graph(readers[0].outputs[0])


def _output_sites(
    graph: ir.Graph,
    data: set[ir.Value],
    plan: QuantPlan,
    ort_units: bool,
    constant_operands: bool,
    part_grids: bool = True,
) -> None:
    # A layer kept in float reads the float tensor, also under qlinear, although its producer then loses
    # its integer kernel (the tensor has a reader beside its Q): between a DQ and a Q, ONNX Runtime's
    # WeightBiasQuantization would quantize the layer's float weights itself, per tensor.
    keep_float = plan.keep_float
    found = composites(graph)
    inside = {v for c in found for n in c.nodes[:-1] for v in n.outputs}
    if constant_operands:
        tail = {n for n in graph if n.name in plan.float_tail}
        plan.constants = _constant_sites(graph, data, {n for c in found for n in c.nodes} | tail, keep_float)
    for v in graph.inputs:
        if _is_float_activation(v, data):
            plan.activations[v.name] = ActivationSite(v.name, _uses(v, keep_float), v.is_graph_output())
    for node in graph:
        if node.name in plan.float_tail:
            continue
        outs = [v for v in node.outputs if _is_float_activation(v, data) and v not in inside]
        if node.op_type in VALUE_CHANGING:
            if _skips_own_pair(node, ort_units) or (part_grids and keeps_part_grids(node)):
                continue
            fixed = FIXED_RANGE.get(node.op_type)
            for v in outs:
                # a node kept in float leaves its graph output in float too (a classifier's pooled logits)
                to_output = v.is_graph_output() and node.name not in keep_float
                plan.activations[v.name] = ActivationSite(v.name, _uses(v, keep_float), to_output, fixed)
        elif node.op_type in GRID_PRESERVING and node.inputs and node.inputs[0] is not None:
            source = node.inputs[0].name
            if source in plan.activations:
                root = plan.activations[source].same_as or source
                for v in outs:
                    to_output = v.is_graph_output() and node.name not in keep_float
                    plan.activations[v.name] = ActivationSite(v.name, _uses(v, keep_float), to_output, same_as=root)


def interpolates(node: ir.Node | None) -> bool:
    """An average pool or a non-nearest Resize: on an int8 input its output lies between the input's grid
    points, and OpenVINO's int8 kernel rounds it back onto that grid (light Inception-v2's pooled branch
    read by a 1×1 convolution: 33 dB from OpenVINO at that convolution's output while the simulation
    averaged in float, 39 dB with the pool's output on the grid)."""
    if node is None:
        return False
    return node.op_type == "AveragePool" or (
        node.op_type == "Resize" and (node.attributes.get_string("mode", "nearest") or "nearest") != "nearest"
    )


def _hoisted(node: ir.Node, idx: int, v: ir.Value, data: set[ir.Value]) -> tuple[ir.Node, int, ir.Value]:
    """The edge to quantize for ``node``'s input ``idx``: moved up through ops that only move values
    (Flatten, Reshape, MaxPool, ...) while each is the value's only reader, so the pair lands on the
    output of the op that computed the values and the runtime folds it in there (as NNCF propagates
    its quantizers). Not through an op that ``interpolates``: its output is not on its input's grid."""
    while True:
        producer = v.producer()
        if (
            producer is None
            or producer.op_type not in GRID_PRESERVING
            or interpolates(producer)
            or len(v.uses()) != 1
            or v.is_graph_output()
            or not _is_float_activation(producer.inputs[0], data)
        ):
            return node, idx, v
        node, idx, v = producer, 0, producer.inputs[0]


def _summed_in_float(v: ir.Value) -> bool:
    """The output of a convolution the runtime sums its residual Add into (``fuse_conv_add``): the sum is
    taken before that output is rounded, so a pair there would round what the runtime never rounds."""
    producer = v.producer()
    return producer is not None and bool(producer.metadata_props.get(FUSED_ADD))


def _input_sites(graph: ir.Graph, data: set[ir.Value], plan: QuantPlan, ops: frozenset[str], hoist: bool) -> None:
    """Q/DQ on the data inputs of ``ops`` only, each pair read by exactly those inputs (``hoist``: moved
    above value-moving ops, OpenVINO's placement). An element-wise op is quantized only when all its inputs
    are activations (not a bias or scale constant)."""
    wanted: dict[str, set[tuple[str, int]]] = {}
    for node in graph:
        if node.name in plan.keep_float or node.name in plan.float_tail or node.op_type not in ops:
            continue
        if keeps_part_grids(node):
            continue
        if node.op_type in WEIGHTED:
            edges = [(0, node.inputs[0])] if weight_axis(node) is not None else []
        elif node.op_type in ELEMENTWISE:
            edges = list(enumerate(node.inputs)) if all(_is_float_activation(v, data) for v in node.inputs) else []
        else:
            edges = list(enumerate(node.inputs))
        for idx, v in edges:
            if _is_float_activation(v, data):
                reader, at, v = _hoisted(node, idx, v, data) if hoist else (node, idx, v)
                wanted.setdefault(v.name, set()).add((reader.name, at))
                if reader is not node:
                    plan.hoisted_for.add(node.name)
    for name, consumers in wanted.items():
        plan.activations[name] = ActivationSite(name, tuple(sorted(consumers)), False, None)
    if not hoist:
        return
    for node in graph:  # OpenVINO rounds an interpolation's int8 output onto its input's grid
        out, source = node.outputs[0].name, node.inputs[0].name if node.inputs and node.inputs[0] else None
        if interpolates(node) and out in plan.activations and source in plan.activations:
            plan.activations[out] = replace(plan.activations[out], same_as=plan.activations[source].same_as or source)

"""Grouped 1×1 convolutions that OpenVINO's CPU plugin computes wrongly in int8, written as one
convolution per group.

Measured on OpenVINO 2026.4.1 (CPU plugin, f32 inference precision, u8 or i8 activations × i8
per-channel weights; groups 2 and 4, 4 to 156 input channels per group) on an Intel AVX-512-VNNI CPU
(on an AMD EPYC, Zen 4, every width is exact: the plugin's kernel choice depends on the CPU): a grouped 1×1 convolution
with a multiple of 4 above 64 input channels per group, other than 128 (68, 72, ..., 124, 132, ...),
comes out 50-73 output steps from the same Q/DQ graph in ONNX Runtime; 34, 64, 65-67, 69-71 and 128
per group, depthwise, 3×3 kernels and ungrouped convolutions of the same width are exact. ShuffleNet
v1's stage 3 (272 channels in 4 groups) is one: from its first such layer on, OpenVINO's activations
are uncorrelated with the simulation's (-2 dB). Every grouped 1×1 convolution above 64 channels per
group that is not a multiple of 64 is split into ungrouped convolutions over channel slices of the
same int8 input (harmless where the kernel was exact): each runs the plugin's exact kernel, and the
math is the graph's (a grouped convolution is that split). bench/openvino_grouped_conv.py repeats the scan.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

WIDE_GROUP = 64  # input channels per group above which (unless a multiple of it) the kernel is wrong


def computed_wrongly(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    per_group = weight_shape[1]  # input channels per group (above 64: never depthwise)
    pointwise = tuple(weight_shape[2:]) == (1, 1)
    return group > 1 and pointwise and per_group > WIDE_GROUP and per_group % WIDE_GROUP != 0


def split_grouped_convs(model: onnx.ModelProto) -> list[str]:
    """Rewrites, in place, every grouped convolution ``computed_wrongly`` whose weights (and bias) come
    from a DequantizeLinear of initializers; returns the rewritten nodes' names."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    rewritten, nodes = [], []
    for node in graph.node:
        parts = _quantized_parts(node, producer, inits)
        if node.op_type != "Conv" or parts is None or not computed_wrongly(node, tuple(parts["w"][0].dims)):
            nodes.append(node)
            continue
        nodes.extend(_split(node, parts, graph, opset))
        rewritten.append(node.name or node.output[0])
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def _quantized_parts(node, producer, inits) -> dict | None:
    """The initializers behind the conv's weight (values, scale, zero point of its DequantizeLinear) and
    bias (the same, or a float initializer read directly)."""
    if node.op_type != "Conv":
        return None
    parts = {}
    for key, name in zip(("w", "b"), node.input[1:3]):
        if key == "b" and name in inits:
            parts[key] = [inits[name], None]
            continue
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input):
            return None
        parts[key] = [inits[i] for i in dq.input] + [dq]
    return parts if "w" in parts else None


def _split(node, parts, graph, opset: int) -> list[onnx.NodeProto]:
    group = next(a.i for a in node.attribute if a.name == "group")
    base = node.name or node.output[0]
    x_in, y_out = node.input[0], node.output[0]
    per_group_in = parts["w"][0].dims[1]
    pieces = [f"{base}_g{i}_in" for i in range(group)]
    out = []
    if opset >= 13:
        sizes = numpy_helper.from_array(np.full(group, per_group_in, np.int64), f"{base}_group_sizes")
        graph.initializer.append(sizes)
        out.append(helper.make_node("Split", [x_in, sizes.name], pieces, name=f"{base}_split", axis=1))
    else:
        out.append(
            helper.make_node("Split", [x_in], pieces, name=f"{base}_split", axis=1, split=[per_group_in] * group)
        )
    attrs = [a for a in node.attribute if a.name != "group"]
    convs = []
    for i in range(group):
        inputs = [pieces[i]]
        for key in ("w", "b"):
            if key in parts:
                inputs.append(_sliced_dequantize(parts[key], i, group, f"{base}_g{i}_{key}", graph, out))
        conv = helper.make_node("Conv", inputs, [f"{base}_g{i}_out"], name=f"{base}_g{i}")
        conv.attribute.extend(attrs)
        out.append(conv)
        convs.append(conv.output[0])
    out.append(helper.make_node("Concat", convs, [y_out], name=f"{base}_concat", axis=1))
    return out


def _sliced_dequantize(part, i: int, group: int, name: str, graph, out: list) -> str:
    """The i-th of ``group`` equal slices (along the output channels) of a DequantizeLinear of initializers,
    or of a float initializer."""
    *tensors, dq = part
    sliced = []
    for t in tensors:
        a = numpy_helper.to_array(t)
        if a.ndim:  # per-channel values, scales and zero points; per-tensor ones are shared
            n = a.shape[0] // group
            a = a[i * n : (i + 1) * n]
        init = numpy_helper.from_array(a, f"{name}_{len(sliced)}")
        graph.initializer.append(init)
        sliced.append(init.name)
    if dq is None:  # a float initializer, read as it is
        return sliced[0]
    node = helper.make_node("DequantizeLinear", sliced, [f"{name}_dequantized"], name=f"{name}_DequantizeLinear")
    node.attribute.extend(a for a in dq.attribute)
    out.append(node)
    return node.output[0]

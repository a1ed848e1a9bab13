"""Channel equalization across concatenations: per-channel rescaling that leaves the float model's function
unchanged and gives every channel of a concatenated tensor about the same range.

A concatenation joins channels from different convolutions: in a DenseNet block the stem's 24 channels
span ±3 where the growth convolutions' span ±20, and the BatchNormalization after the concatenation (a
per-channel ``Mul``) multiplies the small ones by up to 11. One int8 grid per tensor, as full-int8
targets put on the concatenation's output, leaves those channels about 20 levels, and the BN multiplies
their rounding: the coverage DenseNet lost 13 dB there on rpi4 (concatenation output 28 dB → 15 dB at the
next BN; logits 15 dB against float).

Positive per-channel factors commute with ReLU, pooling, resizing and concatenation, so a channel can be
multiplied by ``s`` at the convolution that makes it (its weights' row and bias) and divided by ``s`` at
every per-channel ``Mul`` that reads it — when those are all its readers. ``concat_regions`` finds such
closed regions; ``equalize`` applies the factors that bring every channel's calibration range to the
region's largest (Nagel et al.'s cross-layer equalization, ICCV 2019, where the two ends of the region
are a convolution and a per-channel scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgekd.ir.graph import const_array, new_initializer
from edgekd.ir.normalize import per_channel

# Ops that act on each channel of their first input alone and commute with a positive factor per channel.
CHANNELWISE = frozenset({"Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize"})
# A channel whose calibration range is this far under the region's largest is scaled up only this much:
# a range measured on a few dozen images can be exceeded later, and a larger factor would clip more.
MAX_FACTOR = 32.0


@dataclass
class Region:
    """Tensors whose channels are rescaled together; ``producers`` make them (Conv outputs), ``readers``
    consume them (Mul by a constant, which absorbs the factors)."""

    tensors: list[ir.Value]
    producers: list[ir.Node]
    readers: list[tuple[ir.Node, int]]  # (Mul, index of the input from the region)


def _channel_axis_concat(node: ir.Node) -> bool:
    rank = len(node.outputs[0].shape) if node.outputs[0].shape is not None else None
    axis = node.attributes.get_int("axis", 0)
    return rank is not None and rank >= 3 and axis % rank == 1


def _absorbing_mul(node: ir.Node, index: int, channels: int | None) -> bool:
    """A Mul of the region's tensor by a constant that is one value or one per channel (axis 1)."""
    if node.op_type != "Mul" or len(node.inputs) != 2 or channels is None:
        return False
    other = const_array(node.inputs[1 - index])
    if other is None or node.inputs[1 - index] is node.inputs[index]:
        return False
    rank = len(node.inputs[index].shape) if node.inputs[index].shape is not None else 0
    return other.ndim <= rank and per_channel(other, rank, channels) is not None


def _channels(v: ir.Value) -> int | None:
    shape = v.shape
    if shape is None or len(shape) < 3 or not isinstance(shape[1], int):
        return None
    return shape[1]


def _region(seed: ir.Value) -> Region | None:
    """The closed region around ``seed``, or None when any of its tensors is read or made by something a
    per-channel factor cannot pass through (a graph output or input, an Add, a Conv reading it …)."""
    tensors: list[ir.Value] = []
    seen: set[ir.Value] = set()
    producers: list[ir.Node] = []
    readers: list[tuple[ir.Node, int]] = []
    queue = [seed]
    while queue:
        v = queue.pop()
        if v in seen:
            continue
        seen.add(v)
        tensors.append(v)
        node = v.producer()
        if node is None or v.is_graph_output() or _channels(v) is None or len(node.outputs) != 1:
            return None
        if node.op_type == "Concat" and _channel_axis_concat(node):
            queue.extend(node.inputs)
        elif node.op_type in CHANNELWISE and node.inputs[0] is not None:
            queue.append(node.inputs[0])
        elif (
            node.op_type == "Conv"
            and const_array(node.inputs[1]) is not None
            and (len(node.inputs) < 3 or node.inputs[2] is None or const_array(node.inputs[2]) is not None)
        ):
            producers.append(node)
        else:
            return None
        for user, index in v.uses():
            if user.op_type == "Concat" and _channel_axis_concat(user):
                queue.append(user.outputs[0])
            elif user.op_type in CHANNELWISE and index == 0:
                queue.append(user.outputs[0])
            elif _absorbing_mul(user, index, _channels(v)):
                readers.append((user, index))
            else:
                return None
    if not readers:
        return None  # nothing reads the region's values: no factor would change anything
    return Region(tensors, producers, readers)


def concat_regions(graph: ir.Graph) -> list[Region]:
    """Every closed region that holds a channel-axis concatenation, each once."""
    regions: list[Region] = []
    covered: set[ir.Value] = set()
    for node in graph:
        if node.op_type != "Concat" or node.outputs[0] in covered or not _channel_axis_concat(node):
            continue
        region = _region(node.outputs[0])
        if region is not None:
            regions.append(region)
            covered.update(region.tensors)
    return regions


def factors(regions: list[Region], ranges: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per region, per producer (by output name), the factor for each output channel: the region's largest
    channel range over the channel's own, at most ``MAX_FACTOR``; 1 for channels that never moved."""
    out = []
    for region in regions:
        names = [p.outputs[0].name for p in region.producers]
        top = max(float(ranges[n].max()) for n in names)
        per = {}
        for n in names:
            r = ranges[n].astype(np.float64)
            per[n] = np.where(r > 0, top / np.maximum(r, top / MAX_FACTOR), 1.0) if top > 0 else np.ones_like(r)
        out.append(per)
    return out


def _replace_const(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
    base = node.name or node.outputs[0].name
    node.replace_input_with(index, new_initializer(graph, f"{base}_{suffix}", array))


def _tensor_factors(region: Region, per_producer: dict[str, np.ndarray]) -> dict[ir.Value, np.ndarray]:
    """The factor vector each of the region's tensors carries, from its producers' through the graph."""
    out: dict[ir.Value, np.ndarray] = {}

    def of(v: ir.Value) -> np.ndarray:
        if v not in out:
            node = v.producer()
            if node.op_type == "Conv":
                out[v] = per_producer[v.name]
            elif node.op_type == "Concat":
                out[v] = np.concatenate([of(i) for i in node.inputs])
            else:
                out[v] = of(node.inputs[0])
        return out[v]

    for v in region.tensors:
        of(v)
    return out


def equalize(graph: ir.Graph, region: Region, per_producer: dict[str, np.ndarray]) -> None:
    """Multiplies each producer's output channels by their factors and divides them out at the readers."""
    for conv in region.producers:
        s = per_producer[conv.outputs[0].name]
        w = const_array(conv.inputs[1])
        scaled = w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
        _replace_const(graph, conv, 1, scaled.astype(w.dtype), "weight_equalized")
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            b = const_array(conv.inputs[2])
            _replace_const(graph, conv, 2, (b.astype(np.float64) * s).astype(b.dtype), "bias_equalized")
    carried = _tensor_factors(region, per_producer)
    for mul, index in region.readers:
        data = mul.inputs[index]
        rank = len(data.shape)
        c = const_array(mul.inputs[1 - index])
        divided = (per_channel(c, rank, len(carried[data])) / carried[data]).reshape((1, -1) + (1,) * (rank - 2))
        _replace_const(graph, mul, 1 - index, divided.astype(c.dtype), "scale_equalized")

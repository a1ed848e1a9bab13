"""Detectors in a graph: recognised by their outputs (the decoded pair ``boxes [N, A, 4]`` + ``scores
[N, A, C]``, or the single ``[N, 4 + C, A]`` of Ultralytics exports), and their decode tail."""

from __future__ import annotations

import onnx_ir as ir

from edgekd.errors import ConfigError

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _dims(v: ir.Value) -> tuple:
    return tuple(v.shape.dims) if v.shape is not None else ()


def decoded_outputs(graph: ir.Graph, boxes: str = "boxes", scores: str = "scores") -> tuple[ir.Value, ir.Value]:
    """The (boxes, scores) outputs: by name, else the one pair of 3-D outputs ``[N, A, 4]`` and ``[N, A, C]``
    (a TorchScript detector exports as output0/output1)."""
    named = {v.name: v for v in graph.outputs}
    if boxes in named and scores in named:
        return named[boxes], named[scores]
    dims = {v.name: _dims(v) for v in graph.outputs}
    three = [v for v in graph.outputs if len(dims[v.name]) == 3]
    if len(three) == 2:
        a, b = three
        if dims[a.name][:2] == dims[b.name][:2]:
            if dims[a.name][2] == 4:
                return a, b
            if dims[b.name][2] == 4:
                return b, a
    raise ConfigError(
        f"--nms needs the detector's decoded boxes [N, A, 4] and scores [N, A, C]; the graph's outputs are "
        f"{', '.join(f'{n} {list(d)}' for n, d in dims.items())}",
        "export the decoded detector (yolo-det with decode=True, or yolo-det-p2)",
    )


def looks_like_detector(graph: ir.Graph) -> bool:
    try:
        decoded_outputs(graph)
        return True
    except ConfigError:
        pass
    if len(graph.outputs) == 1:
        d = _dims(graph.outputs[0])
        return len(d) == 3 and all(isinstance(x, int) for x in d[1:]) and 4 < d[1] < d[2]
    return False


def decode_tail(graph: ir.Graph) -> frozenset[str]:
    """Names of the nodes of a detector's decode: every node from which no weighted op (Conv, Gemm,
    MatMul) can be reached, i.e. what runs after the last head convolutions. Empty for a graph that
    does not look like a detector. The DFL of Ultralytics-style heads (a softmax over the distance bins,
    then a fixed 1×1 convolution onto 0…15) is part of the decode, not a head convolution.

    Quantized, the decode is where full-int8 detectors lose their accuracy: one int8 grid over box
    coordinates 0…640 is 2.5 px per step, wider than a small person (measured on the people-det teacher,
    onnx-cpu: mAP50 0.175 float → 0.032 with the decode quantized). The head convolutions' outputs (raw
    offsets and logits, a few units wide) quantize well; the decode after them stays float.
    """
    if not looks_like_detector(graph):
        return frozenset()
    feeds_weighted: set[str] = set()
    for node in reversed(list(graph)):
        weighted = node.op_type in WEIGHTED and not _dfl_projection(node)
        if weighted or any(use.node.name in feeds_weighted for v in node.outputs for use in v.uses()):
            feeds_weighted.add(node.name)
    return frozenset(n.name for n in graph if n.name not in feeds_weighted)


def float_region(graph: ir.Graph) -> frozenset[str]:
    """What a quantized detector keeps in float: its decode tail and the last head convolutions feeding it.

    The head outputs are the raw class logits and box offsets the decode turns into scores and pixels; int8
    there cost the people-det student 3.5 % of its float mAP50 on onnx-cpu (60 validation images), for
    convolutions of a few output channels, a small share of the MACs. They read their int8 input
    dequantized and hold float weights."""
    tail = decode_tail(graph)
    return tail | head_layers(graph, tail)


def head_layers(graph: ir.Graph, tail: frozenset[str]) -> frozenset[str]:
    """The weighted nodes whose every reader is in the decode ``tail``: a detector's last head convolutions.
    A DFL box head (its output reshaped into a Softmax) is not one: with it in float, LiteRT's converter put a
    QUANTIZE after that softmax (measured on the conformance Ultralytics-style graph), so it stays int8."""
    return frozenset(
        n.name
        for n in graph
        if n.op_type in WEIGHTED
        and n.name not in tail
        and (uses := [u for v in n.outputs for u in v.uses()])
        and all(u.node.name in tail for u in uses)
        and not any(_reaches_softmax(v) for v in n.outputs)
    )


def _reaches_softmax(v: ir.Value, depth: int = 0) -> bool:
    """Whether ``v`` flows into a Softmax through ops that only move values."""
    for use in v.uses():
        node = use.node
        if node.op_type == "Softmax":
            return True
        if node.op_type in ("Reshape", "Transpose", "Split", "Slice", "Concat") and depth < 8:
            if any(_reaches_softmax(out, depth + 1) for out in node.outputs):
                return True
    return False


def _dfl_projection(node: ir.Node) -> bool:
    """A convolution reading a Softmax (through Reshape/Transpose): the DFL's expectation over bins."""
    if node.op_type != "Conv" or not node.inputs or node.inputs[0] is None:
        return False
    producer = node.inputs[0].producer()
    while producer is not None and producer.op_type in ("Reshape", "Transpose") and producer.inputs[0] is not None:
        producer = producer.inputs[0].producer()
    return producer is not None and producer.op_type == "Softmax"

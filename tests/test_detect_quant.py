"""A detector's decode stays float under int8: the decode tail is found in the graph and the quantization
plan puts no Q/DQ inside it, while the head convolutions feeding it are quantized."""

from __future__ import annotations

import io
import warnings

import onnx
import onnx_ir as ir
import pytest
import torch

from edgekd.ir.detector import decode_tail, float_region, head_layers, looks_like_detector
from edgekd.models import build_model
from edgekd.quant.placement import plan_quantization


def _graph(name: str, side: int = 64, **kwargs) -> ir.Model:
    model = build_model(name, **kwargs).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, side, side),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=list(getattr(model, "output_names", None) or []) or None,
        )
    return ir.from_proto(onnx.load_from_string(buf.getvalue()))


@pytest.fixture(scope="module")
def decoded():
    torch.manual_seed(0)
    return _graph("yolo-det-p2:0.125", num_classes=2)


def test_tail_is_everything_after_the_last_convolutions(decoded):
    graph = decoded.graph
    plan = plan_quantization(decoded, "outputs")  # names every node first
    tail = decode_tail(graph)
    assert tail and tail < plan.float_tail  # the plan's float region adds the head convolutions
    ops = {n.op_type for n in graph if n.name in tail}
    assert "Conv" not in ops and {"Sigmoid", "Mul", "Concat"} <= ops
    # every graph output is produced inside the tail; every head convolution is outside it
    assert all(v.producer().name in tail for v in graph.outputs)
    heads = [n for n in graph if n.op_type == "Conv" and any(u.node.name in tail for v in n.outputs for u in v.uses())]
    assert len(heads) == 6  # box and cls of three levels


@pytest.mark.parametrize("placement", ["outputs", "inputs"])
def test_plan_quantizes_nothing_in_the_float_region(decoded, placement):
    plan = plan_quantization(decoded, placement)
    by_tensor = {v.name: n for n in decoded.graph for v in n.outputs}
    inside = [t for t in plan.activations if t in by_tensor and by_tensor[t].name in plan.float_tail]
    assert inside == []
    consumers = {c for site in plan.activations.values() for c, _ in site.consumers}
    assert not any(site.to_graph_output for site in plan.activations.values())
    if placement == "outputs":  # the head branches' outputs are quantized and read, dequantized, by the heads
        assert consumers & plan.float_tail


def test_raw_heads_and_classifiers_have_no_tail():
    raw = _graph("yolo-det:0.25")
    assert not looks_like_detector(raw.graph) and decode_tail(raw.graph) == frozenset()
    clf = _graph("resnet20", side=32)
    assert decode_tail(clf.graph) == frozenset()


@pytest.mark.parametrize("placement", ["outputs", "qlinear", "inputs", "quantizable-inputs"])
def test_the_last_head_convolutions_stay_float_with_float_weights(decoded, placement):
    """Every placement keeps the decode and the last head convolutions float (edgekd.ir.detector.float_region):
    int8 head outputs cost the people-det student 3.5 % of its float mAP50 on onnx-cpu and the teacher 3 % on
    rpi4. The heads read their int8 input dequantized; their outputs and weights are not quantized."""
    graph = decoded.graph
    tail = decode_tail(graph)
    heads = head_layers(graph, tail)
    assert len(heads) == 6 and float_region(graph) == tail | heads
    plan = plan_quantization(decoded, placement)
    head_outputs = {v.name for n in graph if n.name in heads for v in n.outputs}
    assert not head_outputs & set(plan.activations)
    assert not heads & {w.node for w in plan.weights}
    if placement == "outputs":  # the heads read a quantized tensor (the branch's SiLU output)
        assert heads & {c for site in plan.activations.values() for c, _ in site.consumers}

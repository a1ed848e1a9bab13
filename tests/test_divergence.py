"""Verify names the layer where an artifact departs from its QDQ simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from conftest import ROOT, compile_quick, realistic
from edgekd.backends import get_backend
from edgekd.errors import PassFailedError
from edgekd.runtime.divergence import activation_sites, amplified, departures, simulate_sites, sqnr_by_site

CALIB = ROOT / "calibration" / "cifar10"


def chain() -> onnx.ModelProto:
    """x → Q/DQ → Conv a → Relu → Q/DQ (s1) → Conv b → Q/DQ (s2) → Conv c → Q/DQ (s3)."""
    nodes, inits = [], [numpy_helper.from_array(np.array(0.1, np.float32), "scale")]
    inits.append(numpy_helper.from_array(np.array(0, np.int8), "zero"))

    def pair(t: str) -> str:
        nodes.append(helper.make_node("QuantizeLinear", [t, "scale", "zero"], [f"{t}_q"], name=f"{t}_Q"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{t}_q", "scale", "zero"], [f"{t}_dq"], name=f"{t}_DQ"))
        return f"{t}_dq"

    x = pair("x")
    for conv, out in (("a", "s1"), ("b", "s2"), ("c", "s3")):
        inits.append(numpy_helper.from_array(np.full((2, 2, 1, 1), 0.5, np.float32), f"w_{conv}"))
        nodes.append(helper.make_node("Conv", [x, f"w_{conv}"], [f"{conv}_out"], name=conv))
        if conv == "a":
            nodes.append(helper.make_node("Relu", ["a_out"], [out], name="a_relu"))
        else:
            nodes.append(helper.make_node("Identity", [f"{conv}_out"], [out], name=f"{conv}_id"))
        x = pair(out)
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_layer_losing_tens_of_db_at_once_is_named_with_the_nodes_before_it():
    model = chain()
    sites = activation_sites(model)
    assert [s.tensor for s in sites] == ["x", "s1", "s2", "s3"]
    found = departures(model, sites, {"x": np.inf, "s1": 50.0, "s2": 3.0, "s3": 1.0})
    assert [(d.site, d.nodes, d.ops) for d in found] == [("s2", ("b", "b_id"), ("Conv", "Identity"))]
    assert "50.0 dB on its inputs, 3.0 dB at 's2'" in found[0].describe()


def test_rounding_that_adds_up_layer_by_layer_is_no_departure():
    model = chain()
    assert departures(model, activation_sites(model), {"x": np.inf, "s1": 70.0, "s2": 58.0, "s3": 46.0}) == []


def reciprocal() -> onnx.ModelProto:
    """x → Q/DQ → 1 / x → Q/DQ (r): a layer that turns one step of its input into many of its output."""
    inits = [
        numpy_helper.from_array(np.array(0.01, np.float32), "xs"),
        numpy_helper.from_array(np.array(0.8, np.float32), "rs"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "zero"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "xs", "zero"], ["x_dq"], name="x_DQ"),
        helper.make_node("Div", ["one", "x_dq"], ["r"], name="reciprocal"),
        helper.make_node("QuantizeLinear", ["r", "rs", "zero"], ["r_q"], name="r_Q"),
        helper.make_node("DequantizeLinear", ["r_q", "rs", "zero"], ["r_dq"], name="r_DQ"),
    ]
    graph = helper.make_graph(
        nodes,
        "reciprocal",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("r_dq", TensorProto.FLOAT, [1, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("kernel", ["right", "wrong"])
def test_a_layer_that_only_amplifies_its_inputs_difference_is_no_departure(kernel):
    """Its input one step off where it is smallest (as TFLite's int8 MEAN rounds a LayerNorm's variance), a
    reciprocal is 21 steps off: re-run on the artifact's own input, the simulation gives the artifact's output,
    so the layer computes its function. A kernel that computes something else stays a departure."""
    model, x = reciprocal(), np.array([[0.02, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]], np.float32)
    sites = activation_sites(model)
    simulation = simulate_sites(model, sites, x)
    off = x.copy()
    off[0, 0] += 0.01
    artifact = simulate_sites(model, sites, off)
    if kernel == "wrong":
        artifact["r"] = artifact["r"][:, ::-1].copy()
    found = {d.site: d for d in departures(model, sites, sqnr_by_site(artifact, simulation))}
    assert found["r"].upstream_db > 30 and found["r"].db < 15  # past the input's one step, as verify sees it
    assert amplified(model, sites, found["r"], artifact, simulation) == (kernel == "right")


class WideGroups(nn.Module):
    """A grouped 1×1 convolution with 68 input channels per group, as in ShuffleNet v1's stage 3."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 272, 3, padding=1), nn.BatchNorm2d(272), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(272, 272, 1, groups=4), nn.BatchNorm2d(272), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(272, 10))

    def forward(self, x):
        return self.head(self.grouped(self.stem(x)))


@pytest.fixture(scope="module")
def wide_groups(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wide") / "wide_groups.onnx"
    torch.manual_seed(0)
    torch.onnx.export(realistic(WideGroups()), torch.zeros(1, 3, 16, 16), str(path), opset_version=17, dynamo=False)
    return path


def _negate_grouped_int8_weights(model: onnx.ModelProto) -> list[str]:
    """A kernel that computes the grouped convolution wrongly, as OpenVINO 2026.4's did on the Intel CPU of
    earlier runs (tens of output steps; exact on an AMD EPYC): its int8 weights negated in the graph handed
    to OpenVINO, never in the simulation. Stands in for the per-group split the backend runs at that point."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        grouped = any(a.name == "group" and 1 < a.i for a in node.attribute)
        dq = producers.get(node.input[1]) if node.op_type == "Conv" and grouped else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            w = numpy_helper.to_array(inits[dq.input[0]])
            negated = np.clip(-w.astype(np.int16), -127, 127).astype(w.dtype)
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(negated, dq.input[0]))
    return []


def test_openvino_refusal_names_the_layer_its_kernel_computes_wrongly(wide_groups, tmp_path, monkeypatch):
    """A runtime that computes one int8 layer wrongly: the refusal names that convolution and the flag that
    keeps it float, and the artifact with it kept float passes."""
    import edgekd.backends.openvino.grouped_conv as grouped_conv

    compiled = compile_quick(wide_groups, "openvino-cpu", tmp_path / "split", (1, 3, 16, 16), CALIB)
    assert compiled.manifest["backend_report"]["convert"]["grouped_convs_split"]
    monkeypatch.setattr(grouped_conv, "split_grouped_convs", _negate_grouped_int8_weights)
    with pytest.raises(PassFailedError, match=r"departs from the simulation at (\S+) \(Conv\)") as e:
        compile_quick(wide_groups, "openvino-cpu", tmp_path / "whole", (1, 3, 16, 16), CALIB)
    layer = e.value.message.split("departs from the simulation at ")[1].split(" ")[0]
    assert f"--keep-float {layer}" in e.value.hint
    kept = compile_quick(wide_groups, "openvino-cpu", tmp_path / "kept", (1, 3, 16, 16), CALIB, keep_float=(layer,))
    assert kept.manifest["fidelity"]["relative_error"] < 0.05


def test_onnxruntime_tap_reads_every_integer_tensor(wide_groups, tmp_path):
    out = compile_quick(wide_groups, "onnx-cpu", tmp_path / "ort", (1, 3, 16, 16), CALIB).output
    backend = get_backend("onnxruntime")
    model = onnx.load(str(out / "model.onnx"))
    sites = activation_sites(model)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    tapped = backend.tap(out / "model.onnx", sites, model)(x)
    assert set(tapped) == {s.tensor for s in sites}
    db = sqnr_by_site(tapped, simulate_sites(model, sites, x))
    assert min(db.values()) > 25 and departures(model, sites, db) == []


def test_litert_tap_finds_the_sites_in_the_converters_fused_tensor_names(wide_groups, tmp_path, monkeypatch):
    """The converter names tensors after the TF ops it fused; the lowering's name scopes in those names lead
    back to the Q/DQ sites (the grouped convolution lowered in four parts: their concatenation)."""
    monkeypatch.setenv("EDGEKD_DUMP_IR", str(tmp_path / "ir"))
    out = compile_quick(wide_groups, "rpi4", tmp_path / "tflite", (1, 3, 16, 16), CALIB).output
    model = onnx.load(str(next((tmp_path / "ir").glob("*_quantize.onnx"))))  # the graph emit lowered
    sites = activation_sites(model)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    tapped = get_backend("tflite").tap(out / "model.tflite", sites, model)(x)
    # every site but the Flatten before the classifier, which FULLY_CONNECTED does itself
    assert {s.tensor for s in sites} - set(tapped) == {"/head/head.1/Flatten_output_0"}
    db = sqnr_by_site(tapped, simulate_sites(model, sites, x))
    assert min(db.values()) > 25 and departures(model, sites, db) == []


class WindowPartition(nn.Module):
    """MaxViT's window partition: [B, C, H, W] → [B, windows, pixels, C], a 4-D tensor that is not an image."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mix = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // 4) * (w // 4), 16, c)
        return self.head(self.mix(x).mean((1, 2)))


def test_litert_tap_reads_a_4d_tensor_held_in_the_onnx_layout_as_it_is(tmp_path, monkeypatch):
    """A Reshape's 4-D output is no image: the lowering keeps it in the ONNX layout, and the tap must not
    transpose it as if channels last (it named MaxViT's partition Reshape as a departure, at -3 dB)."""
    path = tmp_path / "windows.onnx"
    torch.manual_seed(0)
    torch.onnx.export(
        realistic(WindowPartition()), torch.zeros(1, 3, 16, 16), str(path), opset_version=17, dynamo=False
    )
    monkeypatch.setenv("EDGEKD_DUMP_IR", str(tmp_path / "ir"))
    out = compile_quick(path, "rpi4", tmp_path / "tflite", (1, 3, 16, 16), CALIB).output
    model = onnx.load(str(next((tmp_path / "ir").glob("*_quantize.onnx"))))
    sites = activation_sites(model)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    tapped = get_backend("tflite").tap(out / "model.tflite", sites, model)(x)
    assert any(a.shape == (1, 16, 16, 8) for a in tapped.values())  # the partitioned windows were read
    db = sqnr_by_site(tapped, simulate_sites(model, sites, x))
    assert min(db.values()) > 25 and departures(model, sites, db) == []


def test_a_refusal_without_a_departing_layer_says_how_the_difference_grew():
    from edgekd.passes.verify import _located

    db = {"x": np.inf, "a": 80.0, "b": 55.0, "c": 30.0}
    message, hint = _located("disagrees", [], db, float_layers=True, quantized=True)
    assert message.endswith("80 dB at the first activation read to 30 dB at the last (the runtime's rounding adds up)")
    assert "--keep-float N" in hint
    _, full_int8 = _located("disagrees", [], db, float_layers=False, quantized=True)
    assert "--keep-float" not in full_int8 and "mixes precisions" in full_int8
    message, fp32 = _located("disagrees", [], db, float_layers=True, quantized=False)
    assert "from the source model at once" in message and "--keep-float" not in fp32


def test_a_refusal_whose_read_out_matches_the_reference_says_the_difference_is_elsewhere():
    """OpenVINO with zero points on the conformance MobileNetV3: every one of 40 tapped activations within float
    rounding of the simulation (138 dB to exact) while the logits are 0.39 off: nothing "adds up" layer by layer."""
    from edgekd.passes.verify import _located

    message, hint = _located("disagrees", [], {"x": np.inf, "a": 140.0, "b": np.inf, "c": 138.6}, True, True)
    assert "every activation read out of the runtime matches the simulation (139 dB or closer)" in message
    assert "adds up" not in message and "--keep-failed" in hint and "--keep-float" not in hint

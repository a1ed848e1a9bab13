"""OpenVINO IR for the CPU plugin: the shared template, plus what the IR and the compiled CPU model hold.

The IR is read here as XML (layers and edges), not through the backend, so the checks on weights
do not trust the code they check.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from backend_template import BackendTemplate
from conftest import realistic
from edgekd import api
from edgekd.backends.openvino.backend import OpenVINOBackend
from edgekd.bench.session import BenchSettings
from edgekd.errors import FidelityError, PassFailedError
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.specs import load_target
from qdq_graphs import grouped_pointwise_qdq, openvino_steps, pointwise_input, simulate

pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'edgekd[openvino]')")


def read_ir(xml: Path) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """Layers by id (type, data attributes) and, per layer id, the ids of its inputs in port order."""
    root = ET.parse(xml).getroot()
    layers = {}
    for layer in root.iter("layer"):
        data = layer.find("data")
        layers[layer.get("id")] = {
            "type": layer.get("type"),
            "name": layer.get("name"),
            **(dict(data.attrib) if data is not None else {}),
        }
    edges = sorted(root.iter("edge"), key=lambda e: (e.get("to-layer"), int(e.get("to-port"))))
    inputs: dict[str, list[str]] = {}
    for e in edges:
        inputs.setdefault(e.get("to-layer"), []).append(e.get("from-layer"))
    return layers, inputs


def per_channel_int8_weights(xml: Path) -> int:
    """Dequantized weights: Multiply(Convert(Const i8), Const f32 of shape [C, 1, ...]) with C > 1."""
    layers, inputs = read_ir(xml)

    def is_i8_const(i):
        return layers[i]["type"] == "Const" and layers[i].get("element_type") == "i8"

    def is_channel_scale(i):
        shape = [int(s) for s in layers[i].get("shape", "").split(",") if s]
        return (
            layers[i]["type"] == "Const"
            and layers[i].get("element_type") == "f32"
            and len(shape) >= 2
            and shape[0] > 1
            and all(s == 1 for s in shape[1:])
        )

    count = 0
    for lid, layer in layers.items():
        if layer["type"] != "Multiply" or len(inputs.get(lid, [])) != 2:
            continue
        a, b = inputs[lid]
        if layers[a]["type"] == "Convert" and is_i8_const(inputs[a][0]) and is_channel_scale(b):
            count += 1
    return count


class TestOpenVINOBackend(BackendTemplate):
    target = "openvino-cpu"

    def per_channel_weight_tensors(self, artifact, manifest):
        return per_channel_int8_weights(artifact / manifest["artifact"]["model_file"])

    def test_every_weighted_layer_runs_int8_x_i8(self, compiled):
        _, manifest, _ = compiled
        report = manifest["backend_report"]
        assert report["int8_layers"] > 0 and report["float_layers"] == 0 and report["unexpected_float"] == []
        # u8 activations mostly; on VNNI/AMX CPUs the plugin reads a layer after a signed activation
        # (SiLU, HardSwish) as i8 — still an integer kernel
        assert all(p in ("u8xi8", "i8xi8") for per_type in report["runtime_precisions"].values() for p in per_type)
        assert all(layer["kernel"].upper().endswith("_I8") for layer in report["layers"])  # e.g. brgconv_avx512_amx_i8
        assert report["openvino"].startswith(manifest["toolchain"]["openvino"])
        assert manifest["artifact"]["runtime"] == "openvino"
        assert manifest["quantization"]["activation_scheme"] == "symmetric-by-sign"

    def test_no_activation_carries_a_zero_point(self, compiled):
        """NNCF's CPU preset: u8 over [0, max] or symmetric i8; a zero point would cost the plugin a
        compensation term per convolution."""
        _, manifest, _ = compiled
        tensors = manifest["quantization"]["tensors"]
        activations = [q for q in tensors.values() if q["axis"] is None]
        assert activations and all(q["zero_point"] == 0 for q in activations)
        assert {q["scheme"]["dtype"] for q in activations} == {"uint8", "int8"}  # ReLU outputs and signed ones

    def test_ir_weights_stay_fp32_and_int8(self, compiled):
        out, manifest, _ = compiled
        layers, _ = read_ir(out / "model.xml")
        consts = [la for la in layers.values() if la["type"] == "Const"]
        assert not [c for c in consts if c.get("element_type") == "f16"]
        assert {c["element_type"] for c in consts} <= {"f32", "i8", "i32", "i64"}
        # model.bin holds exactly the constants the XML names, nothing compressed beside them
        assert (out / "model.bin").stat().st_size == max(int(c["offset"]) + int(c["size"]) for c in consts)
        assert "f16" not in manifest["backend_report"]["ir"]["constants"]
        assert {f["path"] for f in manifest["files"]} >= {"model.xml", "model.bin"}

    def test_session_splits_a_batch_into_the_models_batch(self, compiled):
        out, manifest, calib = compiled
        run = OpenVINOBackend().session(out / "model.xml", threads=2)
        x = np.load(calib)[:3]
        whole = run(x)
        singles = [run(x[i : i + 1]) for i in range(3)]
        for k, y in enumerate(whole):
            assert y.shape[0] == 3
            np.testing.assert_array_equal(y, np.concatenate([s[k] for s in singles]))


@pytest.fixture(scope="module")
def fp32_artifact(zoo_models, tmp_path_factory):
    path, calib, shape = zoo_models["mobilenetv2-cifar:0.5"]
    out = tmp_path_factory.mktemp("openvino-fp32") / "mobilenetv2"
    config = api.make_config(
        str(path), "openvino-cpu", out, input_shape=shape, precision="fp32", calib=calib, verify_samples=16
    )
    result = api.compile(config)
    return result.output, json.loads((result.output / "manifest.json").read_text()), path


def test_fp32_matches_the_pytorch_model(fp32_artifact):
    out, manifest, source = fp32_artifact
    fid = manifest["fidelity"]
    assert manifest["status"] == "ok" and manifest["artifact"]["precision"] == "fp32"
    assert fid["reference"] == "PyTorch model" and fid["samples"] == 16
    assert fid["relative_error"] <= 1e-3 and fid["top1_agreement"] == 1.0
    report = manifest["backend_report"]
    assert report["int8_layers"] == 0 and report["float_layers"] > 0
    assert set(report["runtime_precisions"]["Convolution"]) == {"f32xf32"}
    # fp32 weights, 4 bytes each: model.bin is no smaller than the source's parameters
    n_params = sum(p.numel() for p in torch.jit.load(str(source)).parameters())
    assert (out / "model.bin").stat().st_size >= 4 * n_params * 0.95  # BN folded away a few


def test_bench_runs_the_ir_with_the_openvino_runner(fp32_artifact):
    out, _, _ = fp32_artifact
    r = api.bench(out, "local", BenchSettings(iterations=5, warmup=1, threads=1))
    assert r["runtime"]["name"] == "openvino" and r["runtime"]["version"]
    assert r["latency"]["iterations"] == 5 and r["latency"]["mean_ms"] > 0
    assert r["input"]["shape"] == [1, 3, 32, 32] and r["input"]["dtype"] == "float32"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


def test_int8_compile_that_runs_no_layer_in_int8_fails(tmp_path):
    """Every weighted layer kept in float: the plugin runs them all in f32, and an artifact labelled
    int8 must not come out of that."""
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(realistic(Tiny()), torch.zeros(1, 3, 16, 16)), str(path))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))

    def config(out, **kw):
        return api.make_config(
            str(path),
            "openvino-cpu",
            tmp_path / out,
            input_shape=(1, 3, 16, 16),
            calib=calib,
            skip=("sensitivity",),
            verify_samples=4,
            **kw,
        )

    fp32 = api.compile(config("fp32", precision="fp32")).manifest["backend_report"]
    names = [layer["name"] for layer in fp32["layers"]]
    assert len(names) == 2 and fp32["int8_layers"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        assert api.compile(config("int8", precision="int8")).manifest["backend_report"]["int8_layers"] == 2
        with pytest.raises(PassFailedError) as e:
            api.compile(config("none", precision="int8", keep_float=tuple(names)))
    assert e.value.pass_name == "emit" and isinstance(e.value.cause, FidelityError)
    assert "none of the weighted layers in int8" in e.value.message and "Convolution" in e.value.message


def test_nodes_without_a_conversion_rule_are_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Frobnicate", ["a"], ["y"], name="frob", domain="com.example"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    bad = OpenVINOBackend().unsupported(model, load_target("openvino-cpu"))
    assert [(u.node, u.op) for u in bad] == [("frob", "Frobnicate")]
    assert "com.example.Frobnicate" in bad[0].reason


def test_target_spec():
    spec = load_target("openvino-cpu")
    assert spec.backend == "openvino" and spec.device_class == "cpu-server"
    assert spec.precisions == ("fp32", "int8") and spec.activation_scheme == "symmetric-by-sign"
    assert spec.opset == 17 and spec.opset_range == (13, 21) and spec.bench.threads == 2
    assert spec.passes == load_target("onnx-cpu").passes and spec.pipeline_why


def test_shufflenet_v2_keeps_its_channel_shuffle_for_openvino(tmp_path, monkeypatch):
    """OpenVINO's CPU plugin computed ShuffleNetV2 wrongly once canonicalize wrote its channel shuffle as
    a Gather of channels (relative error ~1); the exporter's Reshape → Transpose → Reshape runs right. If
    this test's first half stops failing, OpenVINO fixed it and ``wrong_after`` can go."""
    from conformance_models import ARCHITECTURES, calibration_images, export, realistic_weights

    shape = (1, 3, 64, 64)
    torch.manual_seed(0)
    model = realistic_weights(ARCHITECTURES["shufflenetv2"](), calibration_images(shape, 16))
    path = export(model, tmp_path / "shufflenetv2.onnx", shape, 17, False)

    def compile_fp32(out: str) -> dict:
        config = api.make_config(str(path), "openvino-cpu", tmp_path / out, input_shape=shape, precision="fp32")
        return api.compile(config).manifest

    m = compile_fp32("kept")
    canon = next(p["metrics"] for p in m["passes"] if p["name"] == "canonicalize")
    assert "channel_shuffle_to_gather" not in canon["rewrites"] and m["fidelity"]["relative_error"] < 1e-5
    monkeypatch.setattr(OpenVINOBackend, "wrong_after", frozenset())
    # verify's read-out names the layer: the shuffle's Gather, exact on its input
    departs = r"departs from the source model at \S+ \(Gather\): SQNR vs the source model exact on its inputs"
    with pytest.raises(PassFailedError, match=r"disagrees with the source ONNX model.*" + departs):
        compile_fp32("gathered")


@pytest.mark.parametrize("channels, groups, float_bias", [(272, 4, False), (272, 2, False), (272, 4, True)])
def test_wide_grouped_pointwise_convs_are_split_for_openvino(channels, groups, float_bias):
    """OpenVINO 2026.4's int8 kernel for grouped 1×1 convolutions with 68-124, 132-... input channels per
    group computed something else (tens of output steps) on the Intel AVX-512-VNNI CPU of earlier runs; on
    an AMD EPYC (Zen 4) the same kernel is exact. Whole, the IR is either that wrong or exact, nothing
    between; split per group, it matches the simulation on both. Where it stays exact on Intel CPUs too,
    OpenVINO fixed it and grouped_conv.py can go."""
    from edgekd.backends.openvino.grouped_conv import split_grouped_convs

    model = grouped_pointwise_qdq(channels, groups, float_bias)
    x = pointwise_input(channels)
    simulation = simulate(model, x)

    whole = openvino_steps(model, x, simulation)
    assert whole > 20 or whole <= 1.001, whole
    assert split_grouped_convs(model) == ["gconv"]
    assert [n.op_type for n in model.graph.node].count("Conv") == groups
    assert simulate(model, x) == pytest.approx(simulation)
    assert openvino_steps(model, x, simulation) <= 1.001  # a rounding tie may land one step apart


@pytest.mark.parametrize("channels, groups", [(136, 4), (256, 4), (272, 272), (272, 1)])
def test_grouped_convs_the_kernel_computes_right_stay_whole(channels, groups):
    from edgekd.backends.openvino.grouped_conv import split_grouped_convs

    assert split_grouped_convs(grouped_pointwise_qdq(channels, groups)) == []

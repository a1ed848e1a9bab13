"""Ultralytics-style detector graphs (DFL, dist2bbox, one [N, 4 + C, A] output) compile int8 with a
float decode: boxes and class scores never share one int8 grid."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from conformance_models import UltralyticsStyleDetector, calibration_images, export, realistic_weights
from edgekd import api
from edgekd.ir.detector import decode_tail
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.quant.placement import plan_quantization

SIZE = 160
SHAPE = (1, 3, SIZE, SIZE)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    d = tmp_path_factory.mktemp("ultralytics-style")
    images = calibration_images(SHAPE, 32)
    np.save(d / "calib.npy", images)
    torch.manual_seed(0)
    model = realistic_weights(UltralyticsStyleDetector(size=SIZE), images[:16])
    return export(model, d / "detector.onnx", SHAPE, 17, False), d / "calib.npy"


def test_the_dfl_and_everything_after_the_head_convolutions_is_the_decode(detector):
    graph = ir.from_proto(onnx.load(detector[0])).graph
    tail = decode_tail(graph)
    ops = {n.op_type for n in graph if n.name in tail}
    assert {"Softmax", "Conv", "Sigmoid", "Concat"} <= ops  # the DFL's projection is decode, not a head
    head_convs = [n for n in graph if n.op_type == "Conv" and n.name not in tail]
    assert len(head_convs) == 17  # backbone and heads quantize


def test_the_decode_convolution_keeps_float_weights(detector):
    """The DFL projection (weights 0..15) is decode: int8 weights would round it (15/127 steps), and
    OpenVINO computed a float Conv on int8-dequantized weights after the opset-11 layout wrongly."""
    graph = ir.from_proto(onnx.load(detector[0])).graph
    plan = plan_quantization(ir.from_proto(onnx.load(detector[0])), "quantizable-inputs")
    assert {w.node for w in plan.weights}.isdisjoint(decode_tail(graph)) and len(plan.weights) == 17


def test_an_opset_11_dynamic_export_compiles_for_openvino_like_opset_17(detector, tmp_path):
    path, calib = detector
    torch.manual_seed(0)
    model = realistic_weights(UltralyticsStyleDetector(size=SIZE), calibration_images(SHAPE, 16))
    old = export(model, tmp_path / "opset11.onnx", SHAPE, 11, True)
    config = api.make_config(
        str(old), "openvino-cpu", tmp_path / "ov", input_shape=SHAPE, precision="int8", calib=calib,
        skip=("sensitivity", "speed-check"), verify_samples=8,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        m = api.compile(config).manifest
    canon = next(p["metrics"] for p in m["passes"] if p["name"] == "canonicalize")
    assert m["status"] == "ok" and canon["rewrites"].get("softmax_unflattened") == 1
    assert m["fidelity"]["relative_error"] < 0.05


@pytest.mark.parametrize("target", ["rpi4", "onnx-cpu"])
def test_compiles_int8_with_a_float_decode(detector, tmp_path, target):
    path, calib = detector
    config = api.make_config(
        str(path), target, tmp_path / target, input_shape=SHAPE, precision="int8", calib=calib,
        skip=("sensitivity", "speed-check"), verify_samples=8,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        m = api.compile(config).manifest
    assert m["status"] == "ok" and m["outputs"][0]["dtype"] == "float32"
    assert m["quantization"]["error_vs_float"]["sqnr_db"] > 20
    if target == "rpi4":  # LiteRT runs the decode in float: no int8 grid shared by boxes and scores
        report = m["backend_report"]
        assert report["float_decode_nodes"] > 10
        assert any("into the float decode" in edge for edge in report["io_conversions"])
        assert not any(edge.startswith("QUANTIZE float32") for edge in report["io_conversions"])  # boxes stay float

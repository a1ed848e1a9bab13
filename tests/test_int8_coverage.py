"""What really runs in int8: the int8-coverage record read back from each runtime's compiled graph."""

from __future__ import annotations

import pytest

from conftest import compile_zoo_int8
from edgekd.backends.base import ExecutedLayer
from edgekd.passes.int8_coverage import Int8CoverageOutput


def layer(name, integer, macs=0, op="Conv"):
    return ExecutedLayer(name, op, integer, "k", macs)


def test_coverage_weighs_layers_by_their_macs_and_groups_float_runs():
    out = Int8CoverageOutput(
        "x",
        True,
        (
            layer("a", True, 60),
            layer("b", False, 30),
            layer("act", False, op="Tanh"),
            layer("c", True, 10),
            layer("d", False, 0, "Sigmoid"),
        ),
    )
    assert out.coverage == pytest.approx(0.7)
    assert [[x.name for x in run] for run in out.float_islands()] == [["b", "act"], ["d"]]
    m = out.to_manifest()
    assert (
        m["int8_layers"] == 2
        and m["layers"] == 5
        and m["float_islands"][0] == {"layers": ["b", "act"], "ops": ["Conv", "Tanh"], "macs": 30}
    )


def test_a_runtime_that_cannot_be_read_here_says_so():
    out = Int8CoverageOutput("tensorrt", False, note="built on the board")
    assert out.coverage is None and out.to_manifest() == {
        "measured": False,
        "backend": "tensorrt",
        "note": "built on the board",
    }


def test_onnxruntime_coverage_names_a_layer_kept_in_float(tmp_path, zoo_models):
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "onnx-cpu", keep_float=("/layers/1/conv1/Conv",))
    cov = result.manifest["int8_coverage"]
    assert cov["measured"] and cov["backend"] == "onnxruntime"
    convs = {x["name"]: x for x in cov["per_layer"] if x["op"] == "Conv"}
    assert len(convs) == 21 and sum(not x["integer"] for x in convs.values()) == 1
    kept = convs["/layers/1/conv1/Conv"]
    assert not kept["integer"] and kept["kernel"] in ("Conv", "FusedConv") and kept["macs"] > 0
    assert cov["coverage_macs"] == pytest.approx(1 - kept["macs"] / cov["macs"])
    # the kept layer reads the float block output, so the Add and ReLU writing it lose their QLinearAdd too
    # (between a DQ and a Q, ONNX Runtime would quantize the kept layer's weights itself)
    assert [i["layers"] for i in cov["float_islands"]] == [["/layers/0/Add", "/layers/0/Relu", "/layers/1/conv1/Conv"]]
    report = (result.output / "report.md").read_text()
    assert "## What runs in int8" in report and "/layers/1/conv1/Conv" in report.split("## What runs in int8")[1]


def test_onnxruntime_with_int8_activations_shows_its_float_islands(tmp_path, zoo_models):
    """The old placement's problem, seen by the record: shared int8 tensors keep convolutions in float."""
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "onnx-cpu", activation_scheme="asymmetric-int8")
    cov = result.manifest["int8_coverage"]
    assert cov["coverage_macs"] < 0.9 and cov["float_islands"]


def test_openvino_coverage_reads_the_cpu_plugins_runtime_precisions(tmp_path, zoo_models):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    result = compile_zoo_int8(tmp_path, zoo_models, "mobilenetv3-small-cifar:0.5", "openvino-cpu")
    cov = result.manifest["int8_coverage"]
    assert cov["coverage_macs"] == 1.0 and cov["int8_layers"] >= result.manifest["backend_report"]["int8_layers"]
    # the squeeze-excitation gates (HardSigmoid) run in f32 between integer layers
    assert cov["float_islands"] and all(set(i["ops"]) == {"HardSigmoid"} for i in cov["float_islands"])


def test_tflite_full_int8_has_no_float_island(tmp_path, zoo_models):
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "rpi4")
    cov = result.manifest["int8_coverage"]
    assert cov["coverage_macs"] == 1.0 and cov["float_islands"] == []
    kinds = {x["op"] for x in cov["per_layer"]}
    assert {"CONV_2D", "ADD", "MEAN"} <= kinds and cov["macs"] > 0 and cov["int8_layers"] == cov["layers"]

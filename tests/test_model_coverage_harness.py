"""bench/model_coverage.py's resume rule: a recorded cell is reused only if it was made the way a new one
would be (the same weights; for int8, the same default calibration and the target's activation scheme); the
command its report names."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import model_coverage as mc  # noqa: E402

ENTRY = {"m": mc.Entry(Path("m.onnx"), (1, 3, 8, 8), True, weights="w")}


def left(results: dict, precision: str = "int8") -> int:
    """Cells still to compile (a deadline already past returns before compiling any)."""
    return mc.run_cells([(precision, "m", "t")], ENTRY, results, None, deadline=0)


@pytest.fixture(autouse=True)
def scheme(monkeypatch):
    monkeypatch.setattr(mc, "activation_scheme", lambda target: "by-sign-skewed-asymmetric")


def test_a_cell_of_the_same_weights_and_calibration_is_reused(monkeypatch):
    monkeypatch.setattr(mc, "calibration_method", lambda: "ema")
    assert left({"m|t|int8": {"weights": "w", "calibration": "ema"}}) == 0
    assert left({"m|t|int8": {"weights": "w"}}) == 0  # recorded before the key: EMA, the default then


def test_a_cell_of_a_scheme_the_target_no_longer_uses_compiles_again(monkeypatch):
    monkeypatch.setattr(mc, "calibration_method", lambda: "ema")
    cell = {"weights": "w", "calibration": "ema"}
    assert left({"m|t|int8": {**cell, "scheme": "by-sign-skewed-asymmetric"}}) == 0
    assert left({"m|t|int8": {**cell, "scheme": "symmetric-by-sign"}}) == 1
    assert left({"m|t|int8": cell}) == 0  # recorded before the key, under the schemes the targets have now


@pytest.mark.parametrize(
    "cell", [{"weights": "old", "calibration": "ema"}, {"weights": "w", "calibration": "minmax"}, None]
)
def test_other_weights_another_calibration_or_no_record_compile_again(monkeypatch, cell):
    monkeypatch.setattr(mc, "calibration_method", lambda: "ema")
    assert left({} if cell is None else {"m|t|int8": cell}) == 1


def test_fp32_cells_ignore_the_calibration(monkeypatch):
    monkeypatch.setattr(mc, "calibration_method", lambda: "mse")
    assert left({"m|t|fp32": {"weights": "w"}}, "fp32") == 0


@pytest.mark.parametrize(
    "given",
    [
        ["--json", "c.json", "--only", "cifar10-teacher", "--markdown", "c.md"],
        ["--json", "c.json", "--only=cifar10-teacher", "--stop-after", "30", "--markdown", "c.md"],
        ["--report-only", "--json", "c.json", "--markdown", "c.md"],
        ["--json", "c.json", "--targets", "openvino-cpu", "--precisions=int8", "--markdown", "c.md"],
    ],
)
def test_the_report_names_the_command_for_the_whole_matrix(given):
    assert mc._report_arguments(given) == ["--json", "c.json", "--markdown", "c.md"]


def _torchvision_folder(tmp_path: Path) -> Path:
    (tmp_path / "resnet18_dynamo.onnx").write_bytes(b"one")
    (tmp_path / "lraspp_torchscript.onnx").write_bytes(b"two")
    record = {"opset": 20, "params": 11_689_512, "torch": "2.14.1", "torchvision": "0.29.1"}
    manifest = {
        "resnet18/dynamo": {**record, "file": "resnet18_dynamo.onnx", "shape": [1, 3, 224, 224], "task": "classify"},
        "lraspp/torchscript": {**record, "file": "lraspp_torchscript.onnx", "shape": [1, 3, 96, 96], "task": "segment"},
    }
    for name, r in manifest.items():
        r["exporter"] = name.split("/")[1]
        r["sha256"] = hashlib.sha256((tmp_path / r["file"]).read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_torchvision_exports_are_read_from_their_manifest_with_their_file_digest_as_weights(tmp_path):
    folder = _torchvision_folder(tmp_path)
    models = mc._torchvision_models(folder, lambda name: True)
    assert set(models) == {"torchvision/resnet18/dynamo", "torchvision/lraspp/torchscript"}
    seg = models["torchvision/lraspp/torchscript"]
    assert seg.shape == (1, 3, 96, 96) and not seg.classifier and seg.path == folder / "lraspp_torchscript.onnx"
    assert models["torchvision/resnet18/dynamo"].weights != seg.weights  # a new export compiles its cells again
    assert set(mc._torchvision_models(folder, lambda name: "resnet" in name)) == {"torchvision/resnet18/dynamo"}


def test_without_torchvision_exports_the_harness_says_how_to_make_them(tmp_path):
    with pytest.raises(SystemExit, match="export torchvision's models first"):
        mc._torchvision_models(tmp_path, lambda name: True)


def test_the_torchvision_report_judges_sqnr_only_and_sets_edgekd_beside_the_peer(tmp_path):
    from coverage_report import torchvision_markdown

    manifest = json.loads((_torchvision_folder(tmp_path) / "manifest.json").read_text())
    flat = {"images": 100, "sqnr_db": 31.0, "top1_agreement": 0.7, "flips": {}}
    results = {
        "torchvision/lraspp/torchscript|onnx-cpu|int8": {"status": "ok", "seconds": 3.0, "vs_float": flat},
        "torchvision/lraspp/torchscript|rpi4|int8": {"status": "ok", "seconds": 3.0, "vs_float": {"sqnr_db": 12.0}},
        "torchvision/resnet18/dynamo|rpi4|int8": {"status": "refused", "seconds": 1.0, "reason": "no kernel"},
    }
    peer = {"torchvision/lraspp/torchscript": {"nncf": {"sqnr_db": 7.5, "top1_agreement": 0.5}}}
    text = torchvision_markdown(results, ["onnx-cpu", "rpi4"], ["int8"], "cmd", manifest, 0, peer)
    assert "**int8: 2 of 3 cells (67 %) compile with verify passing**" in text
    assert "fidelity target met (top-1 ≥ 99 % / SQNR ≥ 20 dB) in 1 of 2 compiled cells" in text
    assert "| torchvision/lraspp/torchscript | ✓ 31 dB · 3 s | ✓ᶠ 12 dB · 3 s |" in text and "70.0 %" not in text
    assert "| lraspp | 31.0 dB | – | 12.0 dB | 7.5 dB |" in text
    assert "| resnet18 | dynamo | 20 | 224×224 | 11.7 M |" in text and "no kernel" in text


def test_the_fidelity_report_sets_each_classifiers_accuracy_beside_its_int8_cells_and_the_peer():
    from coverage_report import fidelity_markdown

    def cell(agreement: float, sqnr: float) -> dict:
        return {
            "status": "ok",
            "seconds": 1.0,
            "vs_float": {"images": 500, "sqnr_db": sqnr, "top1_agreement": agreement},
        }

    results = {
        "resnet18 (trained longer)/opset17|onnx-cpu|int8": cell(0.994, 31.9)
        | {"weights_alone": cell(0.998, 37.6)["vs_float"]},
        "resnet18 (trained longer)/opset17|rpi4|int8": cell(0.986, 27.2),
        "vit (trained longer)/opset17|onnx-cpu|int8": {"status": "refused", "seconds": 1.0, "reason": "no kernel"},
        "resnet18/opset17|onnx-cpu|int8": cell(0.9, 20.0),  # briefly trained: another page's
    }
    context = {
        "resnet18 (trained longer)/opset17": {
            "confidence": 0.83,
            "float_top1": 0.786,
            "nncf": cell(0.99, 30.2)["vs_float"],
        },
        "vit (trained longer)/opset17": {"confidence": 0.7},
    }
    text = fidelity_markdown(results, ["onnx-cpu", "rpi4"], ["int8"], "cmd", "trained", 0, context)
    assert "**int8: 2 of 3 cells (67 %) compile with verify passing**" in text
    assert "fidelity target met (top-1 ≥ 99 % / SQNR ≥ 20 dB) in 1 of 2 compiled cells" in text
    assert "| resnet18 | 78.6 % | 0.83 | 99.4 % · 32 dB | ⚠ 98.6 % · 27 dB | 99.8 % · 38 dB | 99.0 % · 30 dB |" in text
    assert "| vit | – | 0.70 | ✗ | – | – | – |" in text and "resnet18/opset17" not in text
    assert text.index("| resnet18 |") < text.index("| vit |")  # the more confident float model first
    assert "above NNCF's on 1 of 1 classifiers, equal on 0, below on 0." in text  # 99.4 % (of two, the upper)


def test_training_on_fewer_images_per_class_than_asked_is_refused_naming_the_folder(tmp_path):
    from PIL import Image

    from edgekd.data.preprocess import Preprocess

    for cls, count in (("cat", 12), ("dog", 4)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / cls / f"{i:02d}.png")
    pre = Preprocess(size=(8, 8))
    images, labels = mc._training_images(mc.Training(tmp_path, 4, 1), pre)  # cat's tenth image is held out
    assert images.shape[0] == 8 and sorted(labels.tolist()) == [0] * 4 + [1] * 4
    with pytest.raises(SystemExit, match=rf"--train-data {tmp_path} has fewer than 5 .*: dog 4\); .*--train-per-class"):
        mc._training_images(mc.Training(tmp_path, 5, 1), pre)


def test_weights_alone_removes_every_activation_pair_and_keeps_the_int8_weights():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekd.runtime import onnx_run_fn, ort_session

    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (4, 3, 1, 1)).astype(np.int8)
    scale = np.float32(0.01)
    inits = [
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(4, scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(np.float32(0.05), "a_scale"),
        numpy_helper.from_array(np.int8(0), "a_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "a_scale", "a_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "a_scale", "a_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 2, 2])],
        inits,
    )
    model = mc.weights_alone(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "Conv", "Identity"]
    x = rng.standard_normal((1, 3, 2, 2)).astype(np.float32)
    got = onnx_run_fn(ort_session(model.SerializeToString()))(x)[0]
    want = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0].astype(np.float32) * scale, x)  # x not rounded
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    onnx.checker.check_model(model)

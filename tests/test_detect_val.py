"""``edgekd val``: a small detector trained here on a generated set, compiled for onnx-cpu, scored in ONNX
Runtime through the CLI; its mAP equals the torch model's under the same preprocessing."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detection_data import make_scenes, write_yolo
from edgekd import api
from edgekd.data.detection import load_detection_set
from edgekd.data.detection.letterbox import read_letterboxed
from edgekd.data.preprocess import Preprocess
from edgekd.detect.evaluate import evaluate
from edgekd.detect.loss import DetectionLoss
from edgekd.models.yolo import YoloDet
from edgekd.models.yolo_decode import DecodedYolo
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.runtime import torch_reference

SIZE = (64, 64)
PRE = Preprocess(size=SIZE, resize="letterbox")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data.yaml, TorchScript file of the decoded detector, the module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("det")
    data = write_yolo(root, {"train": make_scenes(16, seed=0), "val": make_scenes(6, seed=1)})
    train = load_detection_set(data, "train")
    xs, targets = [], []
    for i, im in enumerate(train.images):
        rgb, fit = read_letterboxed(im.path, SIZE)
        xs.append(torch.from_numpy(PRE.apply(rgb)))
        b = fit.to_input(im.boxes)
        targets.append(np.concatenate([np.full((len(b), 1), i), im.classes[:, None], b], 1))
    x, t = torch.stack(xs), torch.from_numpy(np.concatenate(targets).astype(np.float32))
    torch.manual_seed(0)
    model = YoloDet(2, width=0.125, strides=(4, 8, 16), head_channels=(16, 16))
    loss_fn = DetectionLoss(model.strides)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(120):
        loss, _ = loss_fn(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    decoded = DecodedYolo(model).eval()
    path = root / "det.pt"
    torch.jit.save(torch.jit.trace(decoded, torch.zeros(1, 3, *SIZE)), str(path))
    torch.set_num_threads(before)
    return data, path, decoded


def test_val_scores_the_artifact_like_the_torch_model(trained, tmp_path):
    data, model_file, decoded = trained
    card = tmp_path / "det.toml"
    card.write_text(
        f'[model]\nsource = "{model_file}"\n[input]\nshape = [1, 3, {SIZE[0]}, {SIZE[1]}]\n'
        f'resize = "letterbox"\n[labels]\nnames = ["cat", "ship"]\n'
    )
    out = tmp_path / "art"
    api.compile(api.make_config(str(card), "onnx-cpu", out, precision="fp32"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["preprocessing"]["resize"] == "letterbox"
    cells = sum((SIZE[0] // s) * (SIZE[1] // s) for s in (4, 8, 16))
    assert [o["shape"] for o in manifest["outputs"]] == [[1, cells, 4], [1, cells, 2]]  # two outputs, two scales

    proc = subprocess.run(
        [sys.executable, "-m", "edgekd", "val", str(out), "--data", str(data), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["metrics"]
    ref = evaluate(torch_reference(decoded), load_detection_set(data, "val"), PRE)
    assert ref.map50 > 0.1  # it learned something (an untrained one scores ~0), so the equality below means something
    assert got["map50"] == pytest.approx(ref.map50, abs=0.01)
    assert got["map50_95"] == pytest.approx(ref.map50_95, abs=0.01)
    assert got["objects"] == ref.objects


def test_val_refuses_a_classifier_artifact_with_a_named_error(resnet_artifact, trained):
    data, _, _ = trained
    proc = subprocess.run(
        [sys.executable, "-m", "edgekd", "val", str(resnet_artifact), "--data", str(data)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "neither (boxes" in proc.stderr and "Traceback" not in proc.stderr


def test_decoded_zoo_detector_exports_named_outputs(tmp_path):
    out = tmp_path / "p2"
    api.compile(api.make_config("yolo-det-p2:0.125", "onnx-cpu", out, input_shape=(1, 3, 32, 32), precision="fp32"))
    outputs = json.loads((out / "manifest.json").read_text())["outputs"]
    assert [(o["name"], o["shape"]) for o in outputs] == [("boxes", [1, 84, 4]), ("scores", [1, 84, 80])]


def test_int8_detector_compile_eval_reports_map_per_stage(trained, tmp_path):
    data, model_file, decoded = trained
    card = tmp_path / "det.toml"
    card.write_text(
        f'[model]\nsource = "{model_file}"\n[input]\nshape = [1, 3, {SIZE[0]}, {SIZE[1]}]\nresize = "letterbox"\n'
    )
    out = tmp_path / "int8"
    with pytest.warns(CalibrationWarning, match="calibrating a detector on 16 samples; use at least 300"):
        result = api.compile(
            api.make_config(
                str(card), "onnx-cpu", out, precision="int8", calib=data.parent / "train" / "images", eval=data
            )
        )
    acc = result.manifest["accuracy"]
    assert [o.get("quantization") for o in result.manifest["outputs"]] == [None, None]  # the decode stays float
    ref = evaluate(torch_reference(decoded), load_detection_set(data, "val"), PRE)
    assert acc["kind"] == "detection" and acc["images"] == 6 and acc["objects"] == ref.objects
    assert acc["float"]["map50"] == pytest.approx(ref.map50, abs=1e-3)
    assert acc["artifact"]["map50"] >= ref.map50 - 0.1 and acc["simulation"]["map50"] >= ref.map50 - 0.1
    assert acc["drop_map50_pt"] == pytest.approx(100 * (acc["float"]["map50"] - acc["artifact"]["map50"]))
    report = (out / "report.md").read_text()
    assert "## Accuracy (detection)" in report and "![detections](detections.jpg)" in report
    with Image.open(out / "detections.jpg") as picture:  # four images, two per row
        assert picture.size[0] == 2 * 640 and picture.size[1] > 0
    assert "detections.jpg" in {f["path"] for f in result.manifest["files"]}
    assert api.val(out, data).metrics.map50 == pytest.approx(acc["artifact"]["map50"], abs=1e-6)


def test_max_drop_on_a_detector_counts_map50_points(trained, tmp_path, monkeypatch):
    import edgekd.passes.accuracy_budget as ab
    from edgekd.errors import AccuracyBudgetError, PassFailedError

    data, model_file, _ = trained
    card = tmp_path / "det.toml"
    card.write_text(
        f'[model]\nsource = "{model_file}"\n[input]\nshape = [1, 3, {SIZE[0]}, {SIZE[1]}]\nresize = "letterbox"\n'
    )

    def compile_with(max_drop, out):
        config = api.make_config(
            str(card), "onnx-cpu", tmp_path / out, precision="int8", calib=data.parent / "train" / "images",
            eval=data, max_drop=max_drop, skip=("speed-check",), sensitivity_samples=4, verify_samples=4,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            return api.compile(config).manifest

    m = compile_with(100.0, "loose")
    budget = m["quantization"]["accuracy_budget"]
    assert budget["metric"] == "mAP50" and budget["samples"] == 6
    assert budget["float_top1"] == pytest.approx(m["accuracy"]["float"]["map50"], abs=1e-6)
    scores = itertools.chain([0.5], itertools.repeat(0.25))  # float, then every int8 variant the search tries
    scorer = ab.AccuracyBudgetPass._scorer

    def far_below(self, state):
        metric, _, n = scorer(self, state)
        return metric, lambda run: next(scores), n

    monkeypatch.setattr(ab.AccuracyBudgetPass, "_scorer", far_below)
    with pytest.raises(PassFailedError) as e:
        compile_with(1.0, "tight")
    assert isinstance(e.value.cause, AccuracyBudgetError)
    assert "int8 mAP50 stays 25.00 pt below float" in e.value.message and not (tmp_path / "tight").exists()

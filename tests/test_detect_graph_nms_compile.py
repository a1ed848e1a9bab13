"""``compile --nms``: NonMaxSuppression inside the artifact on targets whose runtime has the op, verified
against numpy NMS of the artifact's own boxes and scores; refused up front elsewhere; the manifest says
where NMS runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekd import api
from edgekd.backends import get_backend
from edgekd.detect.graph_nms import SELECTED, expected_selection, selection_mismatch
from edgekd.errors import ConfigError
from edgekd.report import plot_sensitivity

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "examples" / "people-det" / "student-kd.toml"  # trained: its scores spread, unlike random weights
CALIB = ROOT / "calibration" / "cifar10"
SHAPE = (1, 3, 96, 96)
FAST = ("sensitivity", "int8-coverage", "speed-check")


def _compile(target: str, out: Path, precision: str = "int8", **options):
    return api.compile(
        api.make_config(
            str(STUDENT),
            target,
            out,
            input_shape=SHAPE,
            precision=precision,
            calib=CALIB,
            calib_samples=16,
            verify_samples=8,
            skip=FAST,
            **options,
        )
    )


@pytest.mark.parametrize("target", ["onnx-cpu", "openvino-cpu", "jetson-xavier"])
def test_nms_in_the_artifact_matches_numpy_nms_of_its_outputs(tmp_path, target):
    result = _compile(target, tmp_path / "out", nms=True, nms_conf=0.05, nms_iou=0.6, nms_max_det=50)
    m = result.manifest
    assert m["nms"] == {
        "where": "graph",
        "op": "NonMaxSuppression",
        "conf": 0.05,
        "iou": 0.6,
        "max_per_class": 50,
        "output": SELECTED,
    }
    checked = m["fidelity"]["graph_nms"]
    assert checked["selected_expected"] > 0 and checked["selected_differing"] == 0
    assert [o["name"] for o in m["outputs"]][-1] == SELECTED
    # the runtime's op, once more outside the pipeline, on an image verify did not see
    run = get_backend(m["artifact"]["backend"]).session(result.output / m["artifact"]["model_file"])
    x = np.random.default_rng(1).uniform(0, 1, SHAPE).astype(np.float32)
    boxes, scores, selected = run(x)
    want = expected_selection(boxes, scores, 0.6, 0.05, 50)
    assert {tuple(r) for r in selected.tolist()} == want


def test_without_nms_the_manifest_says_the_runner_does_it(tmp_path):
    m = _compile("onnx-cpu", tmp_path / "out", precision="fp32").manifest
    assert m["nms"]["where"] == "runner" and m["nms"]["module"] == "edgekd.detect.nms"
    assert m["nms"]["graph_nms_available"] is True
    assert SELECTED not in [o["name"] for o in m["outputs"]]


@pytest.mark.parametrize("target", ["rpi4", "ascend310"])
def test_nms_is_refused_before_any_work_where_the_runtime_lacks_it(tmp_path, target):
    with pytest.raises(ConfigError, match="the runner does NMS") as e:
        _compile(target, tmp_path / "out", nms=True)
    assert target in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [{"nms_conf": 1.5}, {"nms_iou": -0.1}, {"nms_max_det": 0}])
def test_bad_nms_settings_are_named(tmp_path, value):
    with pytest.raises(ConfigError, match="--nms-"):
        _compile("onnx-cpu", tmp_path / "out", nms=True, **value)


def test_a_selection_unlike_nms_of_the_outputs_is_counted():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (1, 40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 20, (1, 40, 2))], -1)
    scores = rng.uniform(0, 1, (1, 40, 2))
    settings = {"conf": 0.3, "iou": 0.5, "max_per_class": 100}
    right = np.asarray(sorted(expected_selection(boxes, scores, 0.5, 0.3, 100)))
    assert selection_mismatch(boxes, scores, right, settings) == (0, len(right))
    wrong = right.copy()
    wrong[0, 2] = 39 if wrong[0, 2] != 39 else 38  # one kept box swapped for another
    assert selection_mismatch(boxes, scores, wrong, settings)[0] in (1, 2)


def test_sensitivity_plot_draws_non_finite_entries(tmp_path):
    rows = [{"layer": "conv_a", "sqnr_db": 31.5}, {"layer": "conv_b", "sqnr_db": None}]
    assert plot_sensitivity(rows, tmp_path / "s.png").stat().st_size > 0

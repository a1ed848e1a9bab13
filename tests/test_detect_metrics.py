"""COCO mAP and precision/recall against hand-computed cases, and the evaluation loop end to end."""

from __future__ import annotations

import numpy as np
import pytest

from detection_data import make_scenes, write_yolo
from edgekd.data.detection import load_detection_set
from edgekd.data.detection.letterbox import read_letterboxed
from edgekd.data.preprocess import Preprocess
from edgekd.detect.evaluate import evaluate
from edgekd.detect.metrics import GroundTruth, evaluate_detections, match_at_iou
from edgekd.detect.postprocess import Detections


def _det(boxes, scores, classes=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(
        boxes, np.asarray(scores, np.float32), np.asarray(classes if classes is not None else [0] * len(boxes))
    )


GT = [GroundTruth(np.asarray([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.asarray([0, 0]))]


def test_hand_computed_map():
    """Scores 0.9 (exact hit), 0.8 (a miss), 0.7 (IoU 100/160 = 0.625 with the second object).

    At IoU thresholds 0.50, 0.55, 0.60 both objects are found: precision 1, ½, ⅔ at recall ½, ½, 1; COCO's
    101-point interpolated precision is 1 for recall ≤ 0.50 (51 points) and ⅔ above (50 points):
    AP = (51 + 50·⅔)/101 = 0.83498. At 0.65 … 0.95 (7 thresholds) the third detection is a miss too:
    AP = 51/101 = 0.50495. mAP50-95 = (3·0.83498 + 7·0.50495)/10 = 0.60396.
    """
    preds = [_det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 36]], [0.9, 0.8, 0.7])]
    m = evaluate_detections(GT, preds, num_classes=1, conf=0.75)
    assert m.map50 == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)
    assert m.map50_95 == pytest.approx((3 * (51 + 50 * 2 / 3) / 101 + 7 * 51 / 101) / 10, abs=1e-6)
    # at conf 0.75: two detections, one hit → P ½, R ½; the best F1 (0.8) is at conf 0.7 (P ⅔, R 1)
    assert (m.precision, m.recall, m.detections) == (0.5, 0.5, 2)
    assert m.best_f1 == pytest.approx(0.8) and m.best_f1_conf == pytest.approx(0.7)


def test_perfect_and_empty_predictions():
    perfect = [_det(GT[0].boxes, [0.9, 0.8])]
    m = evaluate_detections(GT, perfect, 1)
    assert (m.map50_95, m.map50, m.precision, m.recall) == (pytest.approx(1.0), pytest.approx(1.0), 1.0, 1.0)
    m = evaluate_detections(GT, [_det([], [])], 1)
    assert (m.map50_95, m.map50, m.precision, m.recall, m.best_f1) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_wrong_class_is_a_miss_and_classes_average():
    gt = [GroundTruth(np.asarray([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.asarray([0, 1]))]
    # class 0 found; class 1's only detection has class 0's label: AP(0) = 1, AP(1) = 0
    preds = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0])]
    m = evaluate_detections(gt, preds, 2)
    assert m.map50 == pytest.approx(0.5) and m.recall == 0.5


def test_one_object_matches_one_detection():
    scores, hits, objects = match_at_iou(
        [GroundTruth(np.asarray([[0, 0, 10, 10]], np.float32), np.asarray([0]))],
        [_det([[0, 0, 10, 10], [0, 0, 10, 11]], [0.9, 0.95])],
    )
    assert hits.tolist() == [True, False] and scores.tolist() == pytest.approx([0.95, 0.9]) and objects == 1


def test_max_dets_caps_detections_per_image():
    gt = [GroundTruth(np.asarray([[i * 20, 0, i * 20 + 10, 10] for i in range(5)], np.float32), np.zeros(5, int))]
    preds = [_det(gt[0].boxes, np.linspace(0.9, 0.5, 5))]
    assert evaluate_detections(gt, preds, 1, max_dets=5).map50 == pytest.approx(1.0)
    assert evaluate_detections(gt, preds, 1, max_dets=3).map50 == pytest.approx(0.6, abs=0.01)  # recall stops at 3/5


def test_evaluate_maps_boxes_back_through_the_letterbox(tmp_path):
    """A "model" that outputs the true boxes in model-input pixels scores 1.0: the letterbox mapping,
    the output split and NMS agree with the reader's pixels."""
    scenes = make_scenes(5, size=(96, 128), seed=3)
    ds = load_detection_set(write_yolo(tmp_path, {"val": scenes}), "val")
    pre = Preprocess(size=(64, 64), resize="letterbox")
    queue = []

    def oracle(x):
        im = ds.images[len(queue)]
        queue.append(im)
        _, fit = read_letterboxed(im.path, pre.size)
        boxes = fit.to_input(im.boxes)[None]
        scores = np.eye(len(ds.names), dtype=np.float32)[im.classes][None] * 0.9
        return [boxes, scores]

    m = evaluate(oracle, ds, pre, batch=1)
    assert m.map50_95 == pytest.approx(1.0, abs=1e-3) and m.objects == ds.num_objects


def test_drawn_boxes_land_on_the_box_edges(tmp_path):
    from PIL import Image

    from edgekd.detect.draw import LABELLED, PREDICTED, draw, sheet

    rgb = np.zeros((40, 60, 3), np.uint8)
    det = _det([[10, 5, 20, 15], [30, 30, 40, 38]], [0.9, 0.1])
    im = np.asarray(draw(rgb, det, GroundTruth(np.asarray([[2, 2, 8, 30]], np.float32), np.asarray([0])), conf=0.25))
    assert tuple(im[5, 15]) == PREDICTED and tuple(im[10, 10]) == PREDICTED  # top and left edge of the kept box
    assert tuple(im[30, 35]) == (0, 0, 0)  # the 0.1 detection is below conf: not drawn
    assert tuple(im[2, 5]) == LABELLED
    zoomed = np.asarray(draw(rgb, det, zoom=3))
    assert zoomed.shape == (120, 180, 3) and tuple(zoomed[15, 45]) == PREDICTED
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = sheet([tmp_path / "a.png"] * 3, [det] * 3, None, tmp_path / "s.jpg", columns=2, width=120)
    assert Image.open(out).size == (240, 160)

"""NMS inside the graph: ONNX ``NonMaxSuppression`` appended after a decoded detector's outputs.

Where the runtime has the op (ONNX Runtime; OpenVINO; TensorRT ≥ 8.5 through its INMSLayer) ``--nms``
puts it in the artifact: the graph gains a third output ``selected [K, 3]`` (batch, class, box index),
sorted by score within each image and class, and keeps ``boxes`` and ``scores`` so the caller gathers
the kept rows and the artifact can still be verified against its simulation output by output. TFLite
(rpi4/rpi5, edgekd's own lowering) and Ascend get no graph NMS: their runner does it in numpy
(:mod:`edgekd.detect.nms`), which has the same semantics (a box is dropped when its IoU with a kept box
of its class is greater than the threshold).

The op runs after the float decode and is never quantized (its inputs are the float ``boxes`` and
``scores``; indices are int64).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgekd.detect.nms import nms
from edgekd.errors import ConfigError
from edgekd.ir.detector import decoded_outputs
from edgekd.ir.graph import new_initializer

SELECTED = "selected"


def add_nms(
    model: ir.Model,
    iou_threshold: float = 0.7,
    score_threshold: float = 0.001,
    max_per_class: int = 300,
    boxes: str = "boxes",
    scores: str = "scores",
) -> ir.Model:
    """Appends NonMaxSuppression to ``model`` in place (and returns it); ``selected`` becomes its last output."""
    graph = model.graph
    if any(v.name == SELECTED for v in graph.outputs):
        raise ConfigError(f"the graph already has a {SELECTED!r} output (NMS was added before)")
    if model.opset_imports.get("", 0) < 11:
        raise ConfigError("NonMaxSuppression in the graph needs ONNX opset ≥ 11", "compile at a newer opset")
    box_v, score_v = decoded_outputs(graph, boxes, scores)
    per_class = ir.Node(
        "", "Transpose", [score_v], attributes=[ir.AttrInt64s("perm", [0, 2, 1])], name="nms_scores_per_class"
    )
    consts = [
        new_initializer(graph, f"nms_{k}", np.asarray([v], dtype))
        for k, v, dtype in (
            ("max_per_class", max_per_class, np.int64),
            ("iou_threshold", iou_threshold, np.float32),
            ("score_threshold", score_threshold, np.float32),
        )
    ]
    nms = ir.Node(
        "",
        "NonMaxSuppression",
        [box_v, per_class.outputs[0], *consts],
        attributes=[ir.AttrInt64("center_point_box", 0)],
        name="nms",
    )
    out = nms.outputs[0]
    out.name = SELECTED
    out.type = ir.TensorType(ir.DataType.INT64)
    out.shape = ir.Shape([None, 3])
    graph.extend([per_class, nms])
    graph.outputs.append(out)
    return model


def expected_selection(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, score_threshold: float, max_per_class: int
) -> set[tuple[int, int, int]]:
    """What ONNX NonMaxSuppression returns for ``boxes [N, A, 4]`` and ``scores [N, A, C]``, as the set of
    (batch, class, box) triples, computed with the numpy NMS: per image and class, boxes scoring above the
    threshold, greedy suppression, at most ``max_per_class`` kept."""
    out: set[tuple[int, int, int]] = set()
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[2]):
            idx = np.flatnonzero(scores[b, :, c] > score_threshold)
            kept = idx[nms(boxes[b, idx], scores[b, idx, c], iou_threshold, None, max_per_class)]
            out.update((b, c, int(i)) for i in kept)
    return out


def selection_mismatch(boxes: np.ndarray, scores: np.ndarray, selected: np.ndarray, settings: dict) -> tuple[int, int]:
    """(triples that differ, triples expected): an artifact's ``selected`` output against
    :func:`expected_selection` of its own ``boxes`` and ``scores``. Equal scores may be taken in either
    order, so a few differences can be legitimate."""
    want = expected_selection(boxes, scores, settings["iou"], settings["conf"], settings["max_per_class"])
    got = {tuple(int(v) for v in row) for row in np.asarray(selected).reshape(-1, 3)}
    return len(got ^ want), len(want)

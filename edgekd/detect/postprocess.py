"""A detector's outputs → detections per image: score threshold, best class per box, top candidates, NMS,
and boxes mapped back from the model input to the source image.

Outputs are understood in two layouts: edgekd's decoded pair ``boxes [N, A, 4]`` (xyxy) + ``scores [N, A, C]``
(in either order), and the single ``[N, 4 + C, A]`` tensor of Ultralytics exports (cx, cy, w, h, then a
score per class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd.detect.nms import from_single_output, select_indices
from edgekd.errors import DataError


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # [K, 4] xyxy float32
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int64


@dataclass(frozen=True)
class NmsSettings:
    conf: float = 0.001  # COCO evaluation wants low-confidence detections too (they extend the PR curve)
    iou: float = 0.7
    max_det: int = 300
    max_candidates: int = 30000  # best-scoring boxes that enter NMS


DEFAULT_NMS = NmsSettings()


def split_outputs(outputs: list[np.ndarray], num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N, A, 4] xyxy, scores [N, A, C]) from the model's outputs; a graph NMS's integer ``selected``
    output is passed over (evaluation runs its own NMS at its own thresholds)."""
    outputs = [o for o in outputs if not np.issubdtype(o.dtype, np.integer)]
    if len(outputs) == 2:
        a, b = outputs
        if a.ndim == 3 and b.ndim == 3 and a.shape[:2] == b.shape[:2]:
            if a.shape[2] == 4 and (num_classes is None or b.shape[2] == num_classes):
                return a, b
            if b.shape[2] == 4:
                return b, a
    if len(outputs) == 1 and outputs[0].ndim == 3 and outputs[0].shape[1] > 4:
        return from_single_output(outputs[0])
    shapes = [tuple(o.shape) for o in outputs]
    raise DataError(
        f"detector outputs {shapes} are neither (boxes [N, A, 4], scores [N, A, C]) nor [N, 4 + C, A]",
        "compile the detector with its decode (edgekd.models.yolo_decode.DecodedYolo for zoo yolo-det)",
    )


def select(boxes: np.ndarray, scores: np.ndarray, settings: NmsSettings = DEFAULT_NMS) -> Detections:
    """One image: ``boxes [A, 4]``, ``scores [A, C]`` → its detections (model-input pixels), best first."""
    s = settings
    keep, cls, best = select_indices(boxes, scores, s.conf, s.iou, s.max_det, s.max_candidates)
    return Detections(boxes[keep].astype(np.float32), best.astype(np.float32), cls.astype(np.int64))

"""Non-maximum suppression in numpy, and the per-image selection around it, with nothing else imported: the
benchmark runner ships this file to a board as is, and :mod:`edgekd.detect.postprocess` calls the same
functions on the host.

Greedy NMS (the ONNX ``NonMaxSuppression`` and torchvision semantics): take the highest-scoring box, drop
every remaining box of the same class whose IoU with it exceeds ``iou_threshold``, repeat. Boxes are xyxy.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a [N, 4]`` with every box in ``b [M, 4]`` → ``[N, M]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    classes: np.ndarray | None = None,
    max_keep: int | None = None,
) -> np.ndarray:
    """Indices of the kept boxes, highest score first. With ``classes``, boxes of different classes never
    suppress each other. Stops after ``max_keep`` kept boxes."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    boxes = boxes.astype(np.float64)
    if classes is not None:  # shift each class to its own region of the plane: one pass serves all classes
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (classes.astype(np.float64) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def select_indices(
    boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float, max_det: int, max_candidates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, ``boxes [A, 4]`` and ``scores [A, C]`` → (indices of its kept boxes, their class, their score),
    best first: each box's best class above ``conf``, the ``max_candidates`` best into per-class NMS, at most
    ``max_det`` kept."""
    cls = scores.argmax(1)
    best = scores[np.arange(len(scores)), cls]
    idx = np.flatnonzero(best > conf)
    if len(idx) > max_candidates:
        idx = idx[np.argpartition(-best[idx], max_candidates)[:max_candidates]]
    keep = idx[nms(boxes[idx], best[idx], iou, cls[idx], max_det)]
    return keep, cls[keep], best[keep]


def select_from_graph(
    selected: np.ndarray, scores: np.ndarray, image: int, conf: float, max_det: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same triple from a graph ``NonMaxSuppression``'s ``selected [K, 3]`` (image, class, box) and the
    graph's ``scores [N, A, C]``: the rows of ``image`` scoring above ``conf``, best first (ties by box index,
    as :func:`nms` orders them), at most ``max_det``."""
    rows = selected[selected[:, 0] == image]
    box, cls = rows[:, 2].astype(np.int64), rows[:, 1].astype(np.int64)
    score = scores[image][box, cls]
    above = np.flatnonzero(score > conf)
    order = above[np.lexsort((box[above], -score[above]))][:max_det]
    return box[order], cls[order], score[order]


def from_single_output(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N, A, 4] xyxy, scores [N, A, C]) from the single ``[N, 4 + C, A]`` output of Ultralytics
    exports (cx, cy, w, h, then a score per class)."""
    y = y.transpose(0, 2, 1)
    cxcy, wh = y[..., :2], y[..., 2:4]
    return np.concatenate([cxcy - wh / 2, cxcy + wh / 2], -1), y[..., 4:]

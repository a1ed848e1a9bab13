"""Detection accuracy: COCO mAP (IoU 0.50:0.95 and 0.50) computed by faster-coco-eval, the maintained
C++ port of pycocotools, and precision/recall at a chosen confidence.

``max_dets`` is the COCO limit on detections per image (COCO's default is 100; 300 here, as Ultralytics'
validation uses, because crowded images hold hundreds of objects). Precision and recall count a detection
as correct when it overlaps an unmatched object of its class with IoU ≥ 0.5, matching greedily from the
highest score, per image (the rule COCO uses at that threshold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgekd.detect.nms import iou_matrix
from edgekd.detect.postprocess import Detections
from edgekd.errors import ToolchainMissingError


@dataclass(frozen=True)
class GroundTruth:
    boxes: np.ndarray  # [K, 4] xyxy
    classes: np.ndarray  # [K]


@dataclass(frozen=True)
class DetectionMetrics:
    map50_95: float
    map50: float
    precision: float  # at ``conf``
    recall: float
    conf: float
    best_f1: float  # over every confidence threshold
    best_f1_conf: float
    images: int
    objects: int
    detections: int  # at ``conf``

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"mAP50-95 {self.map50_95:.4f}  mAP50 {self.map50:.4f}  P {self.precision:.3f} R {self.recall:.3f} "
            f"@conf {self.conf:g}  (best F1 {self.best_f1:.3f} @conf {self.best_f1_conf:.3f}; "
            f"{self.images} images, {self.objects} objects)"
        )


def coco_map(
    truth: list[GroundTruth], preds: list[Detections], num_classes: int, max_dets: int = 300
) -> tuple[float, float]:
    """(mAP@[.50:.95], mAP@.50), averaged over the classes that have objects."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ToolchainMissingError(
            "mAP needs faster-coco-eval", "pip install 'edgekd[detect]' (or faster-coco-eval)"
        ) from e
    images, annotations, results = [], [], []
    for i, (gt, det) in enumerate(zip(truth, preds)):
        images.append({"id": i})
        for box, cls in zip(gt.boxes.tolist(), gt.classes.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(cls),
                    "iscrowd": 0,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                }
            )
        top = np.argsort(-det.scores, kind="stable")[:max_dets]  # COCO keeps the best max_dets per image
        for box, score, cls in zip(det.boxes[top].tolist(), det.scores[top].tolist(), det.classes[top].tolist()):
            results.append(
                {
                    "image_id": i,
                    "category_id": int(cls),
                    "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    if not annotations or not results:
        return 0.0, 0.0
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in range(num_classes)],
    }
    gt.createIndex()
    ev = COCOeval_faster(gt, gt.loadRes(results), "bbox")
    ev.params.maxDets = sorted({1, 10, max_dets})  # summarize() reads AP at the last (largest) entry
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def match_at_iou(
    truth: list[GroundTruth], preds: list[Detections], iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, true-positive flags) of every detection, sorted by score descending, and the object count."""
    scores, hits = [], []
    for gt, det in zip(truth, preds):
        order = np.argsort(-det.scores, kind="stable")
        ious = iou_matrix(det.boxes[order], gt.boxes) if len(gt.boxes) and len(order) else np.zeros((len(order), 0))
        taken = np.zeros(len(gt.boxes), bool)
        for k, j in enumerate(order):
            cand = ious[k] * ((gt.classes == det.classes[j]) & ~taken)
            hit = cand.size > 0 and cand.max() >= iou
            if hit:
                taken[cand.argmax()] = True
            hits.append(hit)
            scores.append(det.scores[j])
    scores, hits = np.asarray(scores, np.float64), np.asarray(hits, bool)
    order = np.argsort(-scores, kind="stable")
    return scores[order], hits[order], sum(len(g.boxes) for g in truth)


def evaluate_detections(
    truth: list[GroundTruth], preds: list[Detections], num_classes: int, conf: float = 0.25, max_dets: int = 300
) -> DetectionMetrics:
    map50_95, map50 = coco_map(truth, preds, num_classes, max_dets)
    scores, hits, objects = match_at_iou(truth, preds)
    tp = np.cumsum(hits)
    precision_curve = tp / np.arange(1, len(tp) + 1) if len(tp) else np.zeros(0)
    recall_curve = tp / max(objects, 1)
    n = int((scores >= conf).sum())
    precision = float(precision_curve[n - 1]) if n else 0.0
    recall = float(recall_curve[n - 1]) if n else 0.0
    f1 = 2 * precision_curve * recall_curve / np.maximum(precision_curve + recall_curve, 1e-12)
    best = int(f1.argmax()) if len(f1) else -1
    return DetectionMetrics(
        map50_95,
        map50,
        precision,
        recall,
        conf,
        float(f1[best]) if best >= 0 else 0.0,
        float(scores[best]) if best >= 0 else 0.0,
        len(truth),
        objects,
        n,
    )

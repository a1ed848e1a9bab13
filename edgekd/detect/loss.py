"""The training loss of :class:`~edgekd.models.yolo.YoloDet`: CIoU on the assigned cells' decoded boxes,
and binary cross-entropy on every cell's class logits with an IoU-aware target.

A positive cell's target for its object's class is the (detached) IoU of its own predicted box with the
object (YOLOv5's objectness target, here folded into the class score as in YOLOv8): the score then ranks
detections by how well they are placed, which is what mAP at IoU 0.5–0.95 rewards. Both terms are sums
divided by the number of positive cells, so an image crop with few objects weighs as much per object as a
crowded one. Boxes are decoded with :func:`edgekd.models.yolo_decode.decode_boxes`, as in the exported graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.detect.assign import assign
from edgekd.detect.boxes import complete_iou
from edgekd.models.yolo_decode import cells_last, decode_boxes


class DetectionLoss:
    def __init__(
        self, strides: tuple[int, ...], box_weight: float = 7.5, cls_weight: float = 1.0, size_factor: float = 4.0
    ):
        self.strides = tuple(strides)
        self.box_weight, self.cls_weight, self.size_factor = box_weight, cls_weight, size_factor

    def __call__(self, raw: tuple[torch.Tensor, ...], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``raw``: the model's ``(box, cls)`` per level; ``targets [M, 6]`` = (image, class, x1, y1, x2, y2) in
        input pixels. Returns (loss, {box, cls, iou, positives})."""
        shapes = [tuple(raw[2 * i].shape[-2:]) for i in range(len(self.strides))]
        positives = assign(targets, shapes, self.strides, self.size_factor)
        box_sum = raw[0].new_zeros(())
        cls_sum = raw[0].new_zeros(())
        iou_sum, count = 0.0, 0
        for i, (s, (h, w), pos) in enumerate(zip(self.strides, shapes, positives)):
            box, cls = raw[2 * i], raw[2 * i + 1]
            cls_t = cells_last(cls, h * w)  # [N, HW, C]
            target = torch.zeros_like(cls_t)
            if len(pos.cell):
                t = cells_last(box, h * w)[pos.image, pos.cell]  # [P, 4]
                grid = torch.stack([pos.cell % w, pos.cell // w], 1).to(t.dtype)
                pred = decode_boxes(t, grid, s)
                ciou = complete_iou(pred, targets[pos.target, 2:6])
                box_sum = box_sum + (1.0 - ciou).sum()
                iou = ciou.detach().clamp(min=0)
                target[pos.image, pos.cell, targets[pos.target, 1].long()] = iou.to(target.dtype)
                iou_sum += float(iou.sum())
                count += len(pos.cell)
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(cls_t, target, reduction="sum")
        n = max(count, 1)
        box_loss, cls_loss = box_sum / n, cls_sum / n
        loss = self.box_weight * box_loss + self.cls_weight * cls_loss
        return loss, {
            "box": float(box_loss.detach()),
            "cls": float(cls_loss.detach()),
            "iou": iou_sum / n,
            "positives": count,
        }

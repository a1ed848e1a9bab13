"""Distillation losses for detectors with per-cell heads (zoo yolo-det): class maps with temperature, box
regression towards the teacher's decoded boxes, and imitation of the neck features.

Student and teacher must have the same strides (the same cells); widths and depths may differ.

- ``class_map_kd``: per cell and class, the binary KL divergence between σ(t/T) and σ(s/T), times T²
  (Hinton's scaling, here for independent sigmoid scores). Cells are weighted by the teacher's top
  score: on a crowded-small-object image more than 99 % of cells are plain background, and an
  unweighted mean would teach mostly "background" — which the labels already do.
- ``box_kd``: 1 − CIoU between the student's and the teacher's decoded boxes, weighted the same way, so
  the student copies where the teacher puts boxes (also on objects the labels missed).
- neck imitation: the FitNets hint and attention-transfer terms of :mod:`edgekd.distill.features`, on
  the feature map each head level reads (:func:`neck_layers`), with 1×1 adapters where widths differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.detect.boxes import complete_iou
from edgekd.detect.loss import DetectionLoss
from edgekd.distill.features import FeatureLosses, pair_layers
from edgekd.errors import ConfigError
from edgekd.models.yolo_decode import cell_grid, cells_last, decode_boxes


def _check_levels(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> None:
    s_shapes = [tuple(t.shape[-2:]) for t in student[0::2]]
    t_shapes = [tuple(t.shape[-2:]) for t in teacher[0::2]]
    if s_shapes != t_shapes:
        raise ConfigError(
            f"student head levels {s_shapes} differ from the teacher's {t_shapes}",
            "distil between detectors with the same strides (e.g. both yolo-det-p2)",
        )


def teacher_weights(teacher_cls: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` teacher logits → ``[N, H, W]`` cell weights: the teacher's top score, detached."""
    return torch.sigmoid(teacher_cls.detach()).amax(1)


def class_map_kd(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], temperature: float = 2.0
) -> torch.Tensor:
    """Binary KL(σ(t/T) ‖ σ(s/T)) · T² over the class maps of every level, teacher-score-weighted mean over cells."""
    _check_levels(student, teacher)
    num, den = student[1].new_zeros(()), student[1].new_zeros(())
    T = temperature
    for s, t in zip(student[1::2], teacher[1::2]):
        p_t = torch.sigmoid(t.detach() / T)
        cross = F.binary_cross_entropy_with_logits(s / T, p_t, reduction="none")
        entropy = F.binary_cross_entropy(p_t, p_t, reduction="none")  # KL = cross-entropy − teacher entropy
        w = teacher_weights(t)
        num = num + ((cross - entropy).sum(1) * w).sum()
        den = den + w.sum()
    return num / den.clamp(min=1e-6) * T * T


def box_kd(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], strides: tuple[int, ...]
) -> torch.Tensor:
    """1 − CIoU between the decoded student and teacher boxes of every cell, teacher-score-weighted mean."""
    _check_levels(student, teacher)
    num, den = student[0].new_zeros(()), student[0].new_zeros(())
    for s_box, t_box, t_cls, stride in zip(student[0::2], teacher[0::2], teacher[1::2], strides):
        h, w = s_box.shape[-2:]
        grid = torch.from_numpy(cell_grid(h, w)).to(s_box.device)
        sb = decode_boxes(cells_last(s_box, h * w), grid, stride)
        tb = decode_boxes(cells_last(t_box.detach(), h * w), grid, stride)
        weight = teacher_weights(t_cls).flatten(1)  # [N, HW], row-major like the cells
        num = num + ((1.0 - complete_iou(sb, tb)) * weight).sum()
        den = den + weight.sum()
    return num / den.clamp(min=1e-6)


def neck_layers(model: nn.Module) -> tuple[str, ...]:
    """Names of the modules whose outputs the head levels read, smallest stride first (zoo yolo-det)."""
    if not hasattr(model, "top_down") or not hasattr(model, "bottom_up"):
        raise ConfigError(f"{type(model).__name__} is not a zoo yolo-det; name the feature pairs yourself")
    return ("top_down.0",) + tuple(f"bottom_up.{i}" for i in range(len(model.bottom_up)))


class DetectionDistillLoss(nn.Module):
    """labels · DetectionLoss + kd · class_map_kd + box_kd · box_kd + hint · FitNets + attention · AT.

    The returned parts name the terms ``labels``, ``kd``, ``box_kd``, ``hint``, ``attention`` (and the labels
    loss's own ``box``, ``cls``, ``iou``, ``positives``).

    Its only parameters are the neck adapters (train them with the student). ``forward`` takes both
    models' raw head outputs, the targets, and the neck features captured by name
    (:func:`edgekd.distill.features.capture` with ``self.student_layers`` / ``self.teacher_layers``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        example: torch.Tensor,
        temperature: float = 2.0,
        labels: float = 1.0,
        kd: float = 1.0,
        box_kd: float = 1.0,
        hint: float = 1.0,
        attention: float = 0.0,
    ):
        super().__init__()
        if tuple(student.strides) != tuple(teacher.strides):
            raise ConfigError(f"student strides {student.strides} differ from the teacher's {teacher.strides}")
        self.strides = tuple(student.strides)
        self.labels_loss = DetectionLoss(self.strides)
        self.temperature = temperature
        self.weights = {"labels": labels, "kd": kd, "box_kd": box_kd, "hint": hint, "attention": attention}
        pairs = pair_layers(student, teacher, example, tuple(zip(neck_layers(student), neck_layers(teacher))))
        self.features = FeatureLosses(pairs)
        self.student_layers = [s for s, _, _, _ in pairs]
        self.teacher_layers = [t for _, t, _, _ in pairs]

    def forward(self, s_raw, t_raw, targets: torch.Tensor, s_feats: dict, t_feats: dict) -> tuple[torch.Tensor, dict]:
        terms = {}
        parts = {}
        if self.weights["labels"]:
            terms["labels"], parts = self.labels_loss(s_raw, targets)
        terms["kd"] = class_map_kd(s_raw, t_raw, self.temperature)
        terms["box_kd"] = box_kd(s_raw, t_raw, self.strides)
        if self.weights["hint"] or self.weights["attention"]:
            terms["hint"], terms["attention"] = self.features(s_feats, t_feats)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        return loss, {**parts, **{k: float(v.detach()) for k, v in terms.items()}}

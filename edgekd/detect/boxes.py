"""Box overlap in torch (training): IoU and Complete-IoU of aligned xyxy pairs."""

from __future__ import annotations

import math

import torch


def aligned_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]``, both ``[..., 4]`` xyxy."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter + eps)


def complete_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """CIoU (Zheng et al. 2020): IoU − centre distance² / enclosing diagonal² − α·v (aspect-ratio term).

    Unlike plain IoU it still has a gradient when the boxes do not overlap, which for boxes a few pixels
    wide is most of early training.
    """
    iou = aligned_iou(a, b, eps)
    enclose = torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])
    diag2 = enclose.pow(2).sum(-1) + eps
    centre2 = ((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])).pow(2).sum(-1) / 4
    wa, ha = a[..., 2] - a[..., 0], (a[..., 3] - a[..., 1]).clamp(min=eps)
    wb, hb = b[..., 2] - b[..., 0], (b[..., 3] - b[..., 1]).clamp(min=eps)
    v = (4 / math.pi**2) * (torch.atan(wb / hb) - torch.atan(wa / ha)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + 1).clamp(min=1e-7)  # identical boxes: v = 0 and 1 − IoU = 0
    return iou - centre2 / diag2 - alpha * v

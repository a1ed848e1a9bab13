"""The float box decode of :class:`~edgekd.models.yolo.YoloDet`, as a module that exports to ONNX with it.

Per cell ``(gx, gy)`` of a level with stride ``s`` the box branch predicts ``(tx, ty, tw, th)``:

    cx = (gx + 2·σ(tx) − 0.5) · s      cy = (gy + 2·σ(ty) − 0.5) · s     (centre within ±1 cell)
    w  = (2·σ(tw))² · 4s               h  = (2·σ(th))² · 4s              (0 … 16 cells)

(YOLOv5's bounded form, with a per-level anchor of 4 strides instead of learned anchors). No Exp: every
op is Sigmoid, Mul, Add, Sub, Concat, Reshape, Transpose or Slice, which every target lowers (edgekd's
TFLite lowering has no Exp), and each intermediate has a bounded range, which int8 needs. The price: a
box can be at most 16 strides wide (256 px at stride 16, 512 at stride 32).

The class branch predicts a logit per class (score = σ). :class:`DecodedYolo` returns **two outputs**:
``boxes [N, A, 4]`` (xyxy, input pixels) and ``scores [N, A, C]`` (A = cells over all levels, smallest
stride first). They are never concatenated into one tensor: quantized, one tensor has one scale, and
scores in [0, 1] beside coordinates up to the image size would round to a handful of levels.

Training (:mod:`edgekd.detect.loss`) decodes with the same :func:`decode_level`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DECODED_OUTPUTS = ("boxes", "scores")
ANCHOR_STRIDES = 4.0  # the size at σ = 0.5 is 4 strides; the largest box is 4× that


def cell_grid(h: int, w: int) -> np.ndarray:
    """[h·w, 2] (gx, gy) of every cell, row-major: a constant, so the exported graph holds no Range/Shape ops."""
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], 1)


def decode_boxes(t: torch.Tensor, grid: torch.Tensor, stride: int) -> torch.Tensor:
    """Raw ``(tx, ty, tw, th)`` ``[..., 4]`` at cells ``grid [..., 2]`` (gx, gy) → xyxy in input pixels."""
    centre = (grid + 2.0 * torch.sigmoid(t[..., :2]) - 0.5) * stride
    g = 2.0 * torch.sigmoid(t[..., 2:])
    half = (0.5 * ANCHOR_STRIDES * stride) * (g * g)  # g·g, not g**2: Pow is not lowered everywhere
    return torch.cat([centre - half, centre + half], -1)


def decode_level(box: torch.Tensor, stride: int, grid: torch.Tensor) -> torch.Tensor:
    """Raw box map ``[N, 4, H, W]`` → xyxy boxes ``[N, H·W, 4]`` in input pixels; ``grid`` from :func:`cell_grid`."""
    return decode_boxes(cells_last(box, grid.shape[0]), grid, stride)


def cells_last(x: torch.Tensor, cells: int) -> torch.Tensor:
    """``[N, C, H, W]`` → ``[N, H·W, C]`` with a constant target shape (``flatten`` would export Shape ops)."""
    return x.permute(0, 2, 3, 1).reshape(-1, int(cells), int(x.shape[1]))


class DecodedYolo(nn.Module):
    """A raw-head YOLO model plus the float decode: ``x → (boxes [N, A, 4], scores [N, A, C])``.

    ``strides`` default to the wrapped model's ``strides``; the raw model must return ``(box, cls)`` per
    stride, smallest stride first. The grids are cached per input size.
    """

    output_names = DECODED_OUTPUTS

    def __init__(self, model: nn.Module, strides: tuple[int, ...] | None = None):
        super().__init__()
        self.model = model
        self.strides = tuple(strides or model.strides)

    @staticmethod
    def grid(h: int, w: int, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(cell_grid(int(h), int(w))).to(device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_outputs(self.model(x), self.strides, self.grid)


def decode_outputs(raw, strides: tuple[int, ...], grid_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(box_s, cls_s, …)`` → (boxes ``[N, A, 4]``, scores ``[N, A, C]``)."""
    if len(raw) != 2 * len(strides):
        raise ValueError(f"expected a (box, cls) pair per stride {strides}, got {len(raw)} outputs")
    boxes, scores = [], []
    for i, s in enumerate(strides):
        box, cls = raw[2 * i], raw[2 * i + 1]
        h, w = box.shape[-2:]
        grid = grid_fn(h, w, box.device)
        boxes.append(decode_level(box, s, grid))
        scores.append(torch.sigmoid(cells_last(cls, grid.shape[0])))
    return torch.cat(boxes, 1), torch.cat(scores, 1)

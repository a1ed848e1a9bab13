"""Which cells learn which object: a level by object size, then the object's centre cell and its two
nearest neighbours on that level (YOLOv5's rule; the decode reaches ±1 cell), one object per cell.

Objects are sized to levels by their longer side: level ``i`` takes objects up to ``size_factor ·
stride_i`` pixels (the last level takes the rest). With strides 4/8/16 and factor 4 that is ≤ 16 px,
16–32 px and > 32 px. Where objects crowd, two may claim a cell: the one whose centre is nearer the cell
centre keeps it (distance in cells), so a cell never learns two boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Positives:
    """The positive cells of one level: image index, cell index (row-major), object index into the targets."""

    image: torch.Tensor  # [P] long
    cell: torch.Tensor  # [P] long
    target: torch.Tensor  # [P] long


def level_of(boxes: torch.Tensor, strides: tuple[int, ...], size_factor: float = 4.0) -> torch.Tensor:
    """Level index of each xyxy box by its longer side."""
    side = (boxes[:, 2:] - boxes[:, :2]).max(1).values
    level = torch.full_like(side, len(strides) - 1, dtype=torch.long)
    for i in reversed(range(len(strides) - 1)):
        level[side <= size_factor * strides[i]] = i
    return level


def assign(
    targets: torch.Tensor, shapes: list[tuple[int, int]], strides: tuple[int, ...], size_factor: float = 4.0
) -> list[Positives]:
    """``targets [M, 6]`` = (image index, class, x1, y1, x2, y2) in input pixels → a :class:`Positives` per level."""
    level = level_of(targets[:, 2:], strides, size_factor) if len(targets) else targets.new_zeros(0, dtype=torch.long)
    out = []
    for i, (s, (h, w)) in enumerate(zip(strides, shapes)):
        idx = torch.nonzero(level == i).flatten()
        t = targets[idx]
        centre = (t[:, 2:4] + t[:, 4:6]) / 2 / s  # in cells
        cell = centre.floor()
        frac = centre - cell
        step = torch.where(frac < 0.5, -1.0, 1.0)
        zero = torch.zeros_like(step[:, :1])
        offsets = [torch.zeros_like(step), torch.cat([step[:, :1], zero], 1), torch.cat([zero, step[:, 1:]], 1)]
        cand = torch.cat([cell + o for o in offsets])  # [3K, 2] (gx, gy)
        who = idx.repeat(3)
        dist = (cand + 0.5 - centre.repeat(3, 1)).pow(2).sum(1)
        ok = (cand[:, 0] >= 0) & (cand[:, 0] < w) & (cand[:, 1] >= 0) & (cand[:, 1] < h)
        cand, who, dist = cand[ok].long(), who[ok], dist[ok]
        image = targets[who, 0].long()
        key = (image * h + cand[:, 1]) * w + cand[:, 0]
        # nearest claim wins: order by distance, keep the first claim of each cell
        order = torch.argsort(dist, stable=True)
        key, who, image, cand = key[order], who[order], image[order], cand[order]
        uniq, inverse = torch.unique(key, return_inverse=True)
        first = torch.full((len(uniq),), len(key), dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(len(key)), "amin"
        )
        out.append(Positives(image[first], cand[first, 1] * w + cand[first, 0], who[first]))
    return out

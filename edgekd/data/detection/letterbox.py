"""Fitting an image to the model's input, and mapping boxes between the two: the one function that
calibration, evaluation, training and the runner side all use, so a detector sees the same pixels everywhere.

``letterbox``: scale by one factor so the image fits, centre it, fill the rest with grey 114 (as YOLO
exporters expect); ``stretch``: scale each axis on its own (what ``read_rgb`` does for classifiers).
Resizing is PIL bilinear, as in :func:`edgekd.data.preprocess.read_rgb`. The geometry and the box mapping
are :mod:`edgekd.data.frames`' (numpy alone), which the benchmark runner carries to a board.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd.data.frames import PAD_VALUE, RESIZE_MODES, boxes_to_source, fit_geometry, place, resized_shape
from edgekd.errors import ConfigError

__all__ = ["PAD_VALUE", "RESIZE_MODES", "Letterbox", "fit", "letterbox", "read_letterboxed"]


@dataclass(frozen=True)
class Letterbox:
    """How one image was fitted: ``input = source · scale + pad`` per axis (x, y)."""

    source: tuple[int, int]  # (H, W) of the image before fitting
    size: tuple[int, int]  # (H, W) of the model input
    scale: tuple[float, float]  # (sx, sy)
    pad: tuple[int, int]  # (left, top)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in source pixels → model-input pixels."""
        sx, sy = self.scale
        return boxes * np.asarray([sx, sy, sx, sy], np.float32) + np.asarray([*self.pad, *self.pad], np.float32)

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in model-input pixels → source pixels, clipped to the source image."""
        return boxes_to_source(boxes, self.scale, self.pad, self.source)


def fit(source: tuple[int, int], size: tuple[int, int], mode: str = "letterbox") -> Letterbox:
    """The transform alone (no pixels): for mapping boxes of an image whose pixels are not needed."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    scale, pad = fit_geometry(source, size, mode)
    return Letterbox(source, size, scale, pad)


def letterbox(rgb: np.ndarray, size: tuple[int, int], mode: str = "letterbox") -> tuple[np.ndarray, Letterbox]:
    """HWC uint8 RGB image → (HWC uint8 image of ``size``, the transform)."""
    from PIL import Image

    t = fit(rgb.shape[:2], size, mode)
    nh, nw = resized_shape(rgb.shape[:2], t.scale)
    resized = (
        rgb
        if (nh, nw) == rgb.shape[:2]
        else np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
    )
    return place(resized, size, t.pad), t


def read_letterboxed(path, size: tuple[int, int], mode: str = "letterbox") -> tuple[np.ndarray, Letterbox]:
    """Decode an image file and fit it to ``size``."""
    from edgekd.data.preprocess import read_rgb

    return letterbox(read_rgb(path, None), size, mode)

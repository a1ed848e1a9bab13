"""A camera frame → the model's input, in numpy alone: the letterbox geometry, Pillow's bilinear resize,
normalisation, layout, input quantization, and boxes mapped back to the frame.

Nothing but numpy is imported, so the benchmark runner ships this file to a board as is (beside
``edgekd/detect/nms.py``). The host uses the same geometry and arithmetic
(:mod:`edgekd.data.detection.letterbox`, :class:`edgekd.data.preprocess.Preprocess`) but resizes with Pillow;
:func:`resize_bilinear` computes what Pillow's ``BILINEAR`` computes — a triangle filter widened by the
downscale factor (so a shrunk frame is averaged, not sampled), 22-bit fixed-point weights, horizontal pass
first — bit for bit. Pillow ≥ 13 runs the vertical pass first when the height loses more than twice as many
pixels as the width (never for a letterbox of a frame at most twice as tall as wide); there a pixel may
differ by one.
"""

from __future__ import annotations

import numpy as np

RESIZE_MODES = ("letterbox", "stretch")
PAD_VALUE = 114
_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 255 · 2²² and the rounding half still fit an int32


def fit_geometry(source, size, mode="letterbox"):
    """``(scale (sx, sy), pad (left, top))`` fitting an image of ``source`` (H, W) to ``size`` (H, W), with
    ``input = source · scale + pad`` per axis. ``letterbox``: one factor, centred; ``stretch``: one per axis."""
    (h, w), (H, W) = source, size
    if mode == "stretch":
        return (W / w, H / h), (0, 0)
    r = min(H / h, W / w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    # the scale actually applied per axis, after rounding to whole pixels
    return (nw / w, nh / h), ((W - nw) // 2, (H - nh) // 2)


def resized_shape(source, scale):
    """(H, W) of an image of ``source`` (H, W) scaled by ``scale`` (sx, sy), before any padding."""
    return round(source[0] * scale[1]), round(source[1] * scale[0])


def place(resized, size, pad):
    """``resized`` (HWC uint8) on a ``size`` canvas of grey PAD_VALUE, its top-left corner at ``pad`` (left, top)."""
    H, W = size
    if resized.shape[:2] == (H, W):
        return np.ascontiguousarray(resized)
    out = np.full((H, W, resized.shape[2]), PAD_VALUE, np.uint8)
    left, top = pad
    out[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return out


def _weights(in_size, out_size):
    """Per output pixel along one axis: the input pixels it reads ``[out, taps]`` and their fixed-point weights."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)  # shrinking widens the filter: every input pixel contributes
    centers = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centers - filterscale + 0.5).astype(np.int64), 0)
    last = np.minimum((centers + filterscale + 0.5).astype(np.int64), in_size)
    taps = np.arange(int(np.ceil(filterscale)) * 2 + 1)[None, :]
    w = np.clip(1.0 - np.abs((taps + first[:, None] - centers[:, None] + 0.5) * (1.0 / filterscale)), 0.0, None)
    w = np.where(taps < (last - first)[:, None], w, 0.0)
    total = w[:, 0].copy()
    for t in range(1, w.shape[1]):  # summed left to right, as Pillow does: the last bit decides some roundings
        total += w[:, t]
    w = w / np.where(total == 0.0, 1.0, total)[:, None]
    fixed = np.floor(0.5 + w * (1 << _BITS)).astype(np.int32)
    return np.minimum(first[:, None] + taps, in_size - 1), fixed


def _resample(img, axis, out_size):
    index, fixed = _weights(img.shape[axis], out_size)
    shape = list(img.shape)
    shape[axis] = out_size
    acc = np.full(shape, 1 << (_BITS - 1), np.int32)
    weight_shape = [1] * img.ndim
    weight_shape[axis] = out_size
    for t in range(index.shape[1]):
        if fixed[:, t].any():
            acc += np.take(img, index[:, t], axis=axis).astype(np.int32) * fixed[:, t].reshape(weight_shape)
    return np.clip(acc >> _BITS, 0, 255).astype(np.uint8)


def resize_bilinear(rgb, size):
    """HWC uint8 image → ``size`` (H, W), as Pillow's ``Image.resize(..., BILINEAR)``."""
    out = rgb
    if size[1] != out.shape[1]:
        out = _resample(out, 1, size[1])
    if size[0] != out.shape[0]:
        out = _resample(out, 0, size[0])
    return out


def letterbox_frame(rgb, size, mode="letterbox"):
    """HWC uint8 frame → (HWC uint8 image of ``size``, scale (sx, sy), pad (left, top))."""
    scale, pad = fit_geometry(rgb.shape[:2], size, mode)
    resized = resize_bilinear(rgb, resized_shape(rgb.shape[:2], scale))
    return place(resized, size, pad), scale, pad


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights of R, G, B, as Pillow's "L" conversion: channel order GRAY


def normalize(rgb, scale, mean, std, channel_order="RGB", layout="NCHW"):
    """HWC image on the 0..255 scale → float32 ``(pixel · scale − mean) / std`` in ``layout``, no batch axis."""
    x = rgb.astype(np.float32)
    if channel_order == "GRAY":
        x = x @ np.asarray(LUMA, np.float32)[:, None]
    x = x * scale
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    if channel_order == "BGR":
        x = x[..., ::-1]
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x)


def quantize_input(x, scale, zero_point, dtype):
    """A float input → the integer input of a quantized model: ``rint(x / scale) + zero_point``, saturated."""
    info = np.iinfo(dtype)
    with np.errstate(over="ignore"):
        q = np.clip(np.rint(x / np.float32(scale)) + zero_point, info.min, info.max)
    return np.ascontiguousarray(q, dtype=dtype)


def boxes_to_source(boxes, scale, pad, source):
    """xyxy boxes in model-input pixels → pixels of the ``source`` (H, W) frame, clipped to it."""
    sx, sy = scale
    out = (np.asarray(boxes, np.float32) - np.asarray([*pad, *pad], np.float32)) / np.asarray(
        [sx, sy, sx, sy], np.float32
    )
    h, w = source
    return out.clip(0, np.asarray([w, h, w, h], np.float32)).astype(np.float32)

"""Preprocessing an input image the way the model was trained: size, scale, mean/std, order, layout."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekd.data.frames import normalize
from edgekd.errors import ConfigError, DataError

CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int] = (224, 224)  # (H, W)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # applied after ``scale``; one value per channel
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0  # pixel (0..255) → scale · pixel
    channel_order: str = "RGB"  # or BGR, or GRAY: one channel, the image's luma
    layout: str = "NCHW"
    resize: str = "stretch"  # or "letterbox" (detectors): see edgekd.data.detection.letterbox

    def __post_init__(self):
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel order must be {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.channel_order == "GRAY":
            for name in ("mean", "std"):  # one grey channel: a uniform triple (the defaults) is its one value
                values = tuple(getattr(self, name))
                if len(values) == 3 and len(set(values)) == 1:
                    object.__setattr__(self, name, values[:1])
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            example = "--mean 0.5 --std 0.25" if self.channels == 1 else "--mean 0.485,0.456,0.406"
            raise ConfigError(
                f"mean and std take {self.channels} value(s) with channel order {self.channel_order}, one per channel, "
                f"got mean {list(self.mean)}, std {list(self.std)}",
                f"e.g. {example}",
            )
        values = {"mean": self.mean, "std": self.std, "scale": (self.scale,)}
        bad = [f"{k} {list(v)}" for k, v in values.items() if not all(math.isfinite(float(x)) for x in v)]
        if bad:
            raise ConfigError(
                f"preprocessing holds NaN or Inf: {', '.join(bad)}",
                "pass finite numbers, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225",
            )
        if any(s <= 0 for s in self.std) or self.scale <= 0:
            raise ConfigError(
                f"std and scale must be positive, got std {list(self.std)}, scale {self.scale}",
                "e.g. --std 0.229,0.224,0.225; the default scale 1/255 maps pixels to [0, 1]",
            )
        if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
            raise ConfigError(f"image size must be two positive numbers (H, W), got {self.size}")
        if self.resize not in ("stretch", "letterbox"):
            raise ConfigError(f"resize must be stretch or letterbox, got {self.resize!r}")

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "GRAY" else 3

    def check_channels(self, shape: tuple) -> None:
        """The model's input (``shape``, in this layout) takes as many channels as this preprocessing makes of an
        image: checked where images are read (preprocessed arrays are the model's already)."""
        channels = shape[1] if self.layout == "NCHW" else shape[-1]
        if channels == self.channels:
            return
        if channels not in (1, 3):
            raise ConfigError(
                f"the model's input {tuple(shape)} takes {channels} channels; an image gives 1 (GRAY) or 3",
                "give preprocessed arrays (.npy of shape [N, *input_shape[1:]]) instead of images",
            )
        order = "GRAY" if channels == 1 else "RGB"
        luma = " (images become their luma, 0.299 R + 0.587 G + 0.114 B)" if channels == 1 else ""
        raise ConfigError(
            f"the model's input {tuple(shape)} takes {channels} channel(s); channel order {self.channel_order} "
            f"makes {self.channels} of an image",
            f'pass --channel-order {order}{luma} or [input] channel_order = "{order}" in the model card; '
            "or give preprocessed arrays (.npy) instead of images",
        )

    def check_raw_pixels(self, input_name: str, dtype: str) -> None:
        """An integer image input takes the pixels themselves: no scaling, no mean, no std."""
        if self.scale == 1.0 and not any(self.mean) and all(s == 1.0 for s in self.std):
            return
        raise ConfigError(
            f"the model's input {input_name!r} is {dtype}: it takes the pixels 0..255 as they are, but the "
            f"preprocessing scales them by {self.scale:g}, mean {list(self.mean)}, std {list(self.std)}",
            "pass --scale 1 and no --mean/--std (the model normalizes inside); the artifact takes the same "
            "values as float",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, rgb_uint8_hwc: np.ndarray) -> np.ndarray:
        """HWC RGB image on the 0..255 scale (uint8, or float32 from a 16-bit file), already at ``size``
        → float32 in this layout, no batch axis."""
        return normalize(rgb_uint8_hwc, self.scale, self.mean, self.std, self.channel_order, self.layout)


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")  # Pillow's modes for 16-bit (and 32-bit int) grey images


def read_rgb(path: str | Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode an image to HWC RGB at (H, W) = ``size`` (bilinear resize when it differs; None: as stored), on
    the 0..255 scale: uint8, or float32 for 16-bit images, whose extra precision would otherwise be lost (and
    whose values Pillow's RGB conversion clips at 255)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in SIXTEEN_BIT:
                grey = Image.fromarray(np.asarray(im, dtype=np.float32) / 257.0, mode="F")
                if size is not None and grey.size != (size[1], size[0]):
                    grey = grey.resize((size[1], size[0]), Image.BILINEAR)
                return np.repeat(np.asarray(grey, dtype=np.float32)[..., None], 3, axis=2)
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}", "remove or replace the file") from e


def load_image(path: str | Path, pre: Preprocess) -> np.ndarray:
    if pre.resize == "letterbox":
        from edgekd.data.detection.letterbox import read_letterboxed

        return pre.apply(read_letterboxed(path, pre.size)[0])
    return pre.apply(read_rgb(path, pre.size))

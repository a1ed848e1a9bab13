"""Names → model factories. ``name[:width]`` selects a width multiplier, e.g. ``mobilenetv2:0.5``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from edgekd.errors import UnknownNameError
from edgekd.models import mobilenetv2, mobilenetv3, resnet_cifar, yolo

ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet_cifar.resnet8,
    "resnet14": resnet_cifar.resnet14,
    "resnet20": resnet_cifar.resnet20,
    "resnet32": resnet_cifar.resnet32,
    "resnet56": resnet_cifar.resnet56,
    "mobilenetv2": mobilenetv2.mobilenetv2,
    "mobilenetv2-cifar": mobilenetv2.mobilenetv2_cifar,
    "mobilenetv3-small": mobilenetv3.mobilenetv3_small,
    "mobilenetv3-small-cifar": mobilenetv3.mobilenetv3_small_cifar,
    "yolo-det": yolo.yolo_det,
    "yolo-det-p2": yolo.yolo_det_p2,
}


def parse_zoo_name(name: str) -> tuple[str, float | None]:
    """``"mobilenetv2:0.5"`` → ("mobilenetv2", 0.5); no width → None (the factory's default)."""
    base, _, width = name.partition(":")
    if base not in ZOO:
        raise UnknownNameError("zoo model", base, list(ZOO))
    try:
        return base, float(width) if width else None
    except ValueError:
        raise UnknownNameError(
            "zoo model", name, list(ZOO), hint="width must be a number, e.g. mobilenetv2:0.5"
        ) from None


def build_model(name: str, **kwargs) -> nn.Module:
    base, width = parse_zoo_name(name)
    if width is not None:
        kwargs["width"] = width
    return ZOO[base](**kwargs)

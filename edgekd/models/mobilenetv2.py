"""MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks, ReLU6, width multiplier.

Follows the reference implementation's layout, so at width 1.0 with 1000 classes it has the same
3,504,872 parameters as torchvision's ``mobilenet_v2``. ``cifar=True`` keeps stride 1 in the stem and
in the first stride-2 stage: a 32×32 input then reaches the classifier at 4×4 (stride 8, not 32).
"""

from __future__ import annotations

import torch
from torch import nn

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% below ``v`` (reference code)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_act(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU6
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_residual = stride == 1 and cin == cout
        layers = [conv_bn_act(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden), conv_bn_act(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, cifar: bool = False, dropout: float = 0.2):
        super().__init__()
        self.input_size = (3, 32, 32) if cifar else (3, 224, 224)
        cin = make_divisible(32 * width)
        # The last layer is never made narrower than 1280: the paper found it helps small models.
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn_act(3, cin, 3, 1 if cifar else 2)]
        first_downsample = True
        for t, c, n, s in SETTINGS:
            if cifar and s == 2 and first_downsample:
                s, first_downsample = 1, False
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_act(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenetv2(num_classes: int = 1000, width: float = 1.0, cifar: bool = False) -> MobileNetV2:
    return MobileNetV2(num_classes, width, cifar)


def mobilenetv2_cifar(num_classes: int = 10, width: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes, width, cifar=True)

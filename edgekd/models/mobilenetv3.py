"""MobileNetV3-Small (Howard et al. 2019): hard-swish, squeeze-excite with hard-sigmoid, NAS block table.

Follows the reference implementation's layout, so at width 1.0 with 1000 classes it has the same
2,542,856 parameters as torchvision's ``mobilenet_v3_small``. ``cifar=True`` keeps stride 1 in the stem
and in the first stride-2 block: a 32×32 input then reaches the classifier at 4×4 (stride 8, not 32).
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models.mobilenetv2 import init_weights, make_divisible

# Table 2 of the paper: kernel, expanded channels, output channels, squeeze-excite, hard-swish, stride
SMALL = [
    (3, 16, 16, True, False, 2),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
]


def conv_bn_act(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.Hardswish
) -> nn.Sequential:
    # eps/momentum as in the reference implementation (TF defaults), which the published weights use.
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        squeeze = make_divisible(channels // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool, hswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [conv_bn_act(cin, expanded, 1, act=act)] if expanded != cin else []
        layers.append(conv_bn_act(expanded, expanded, k, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(expanded))
        layers.append(conv_bn_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, cifar: bool = False, dropout: float = 0.2):
        super().__init__()
        self.input_size = (3, 32, 32) if cifar else (3, 224, 224)
        cin = make_divisible(16 * width)
        layers: list[nn.Module] = [conv_bn_act(3, cin, 3, 1 if cifar else 2)]
        first_downsample = True
        for k, exp, c, se, hs, s in SMALL:
            if cifar and s == 2 and first_downsample:
                s, first_downsample = 1, False
            cout = make_divisible(c * width)
            layers.append(InvertedResidual(cin, k, make_divisible(exp * width), cout, se, hs, s))
            cin = cout
        layers.append(conv_bn_act(cin, 6 * cin, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = make_divisible(1024 * width)
        self.classifier = nn.Sequential(
            nn.Linear(6 * cin, last),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(last, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv3_small(num_classes: int = 1000, width: float = 1.0, cifar: bool = False) -> MobileNetV3Small:
    return MobileNetV3Small(num_classes, width, cifar)


def mobilenetv3_small_cifar(num_classes: int = 10, width: float = 1.0) -> MobileNetV3Small:
    return MobileNetV3Small(num_classes, width, cifar=True)

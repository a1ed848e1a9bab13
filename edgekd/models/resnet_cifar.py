"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of 2n basic blocks, 16/32/64 channels × width."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        channels = [max(8, int(round(c * width))) for c in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        layers, cin = [], channels[0]
        for stage, cout in enumerate(channels):
            for i in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def resnet8(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """One block per stage: the student size for a ResNet-20 teacher (width 0.625 → 1/8.8 of its params, 1/8.2 of
    its MACs)."""
    return CifarResNet(8, width, num_classes)


def resnet14(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """Two blocks per stage: at width 0.375 (8/12/24 channels) 1/10 of ResNet-20's params and 1/8 of its MACs."""
    return CifarResNet(14, width, num_classes)


def resnet20(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(20, width, num_classes)


def resnet32(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(32, width, num_classes)


def resnet56(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(56, width, num_classes)

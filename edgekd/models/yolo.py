"""A YOLOv8-style anchor-free detector: C2f backbone, SPPF, FPN/PAN neck, decoupled head at strides 8/16/32.

The network returns raw head outputs only, so it exports to plain ONNX (Conv, Sigmoid, Mul, Add,
Concat, Split, MaxPool, Resize) and stays quantizable end to end; decoding and NMS are left to the
caller. Unlike YOLOv8 the box branch predicts 4 values per cell directly instead of a DFL histogram.

``width``/``depth`` scale channels and block repeats as YOLOv8's ``width_multiple``/``depth_multiple``:
0.25/0.33 is the "n" size. Input height and width must be multiples of 32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STRIDES = (8, 16, 32)


def _ch(c: int, width: float) -> int:
    return max(8, math.ceil(c * width / 8) * 8)


def _n(n: int, depth: float) -> int:
    return max(1, round(n * depth))


class ConvBnSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block: split the 1×1 projection in two halves, chain bottlenecks on one, concat every stage's output."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBnSiLU(cin, 2 * self.c)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(torch.split(self.cv1(x), self.c, dim=1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5×5 max-pools equal 5/9/13 pooling at a third of the cost."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        c = cin // 2
        self.cv1, self.cv2 = ConvBnSiLU(cin, c), ConvBnSiLU(4 * c, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.pool(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class DetectHead(nn.Module):
    """Decoupled head: separate box and class conv branches per scale."""

    def __init__(self, channels: tuple[int, ...], num_classes: int):
        super().__init__()
        cb, cc = max(64, channels[0] // 4), max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(ConvBnSiLU(c, cb, 3), ConvBnSiLU(cb, cb, 3), nn.Conv2d(cb, 4, 1)) for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(ConvBnSiLU(c, cc, 3), ConvBnSiLU(cc, cc, 3), nn.Conv2d(cc, num_classes, 1)) for c in channels
        )
        for branch in self.cls:
            # Start every class at p≈0.01 so the loss of the many background cells doesn't swamp early training.
            nn.init.constant_(branch[-1].bias, -math.log(99.0))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for x, box, cls in zip(feats, self.box, self.cls):
            out += [box(x), cls(x)]
        return tuple(out)


class YoloDet(nn.Module):
    """Returns ``(box_s8, cls_s8, box_s16, cls_s16, box_s32, cls_s32)``: box ``[N, 4, H/s, W/s]``, cls ``[N, num_classes, H/s, W/s]``."""

    strides = STRIDES

    def __init__(self, num_classes: int = 80, width: float = 0.25, depth: float = 0.33):
        super().__init__()
        self.input_size = (3, 320, 320)
        c1, c2, c3, c4, c5 = (_ch(c, width) for c in (64, 128, 256, 512, 1024))
        self.stem = nn.Sequential(ConvBnSiLU(3, c1, 3, 2), ConvBnSiLU(c1, c2, 3, 2), C2f(c2, c2, _n(3, depth), True))
        self.dark3 = nn.Sequential(ConvBnSiLU(c2, c3, 3, 2), C2f(c3, c3, _n(6, depth), True))
        self.dark4 = nn.Sequential(ConvBnSiLU(c3, c4, 3, 2), C2f(c4, c4, _n(6, depth), True))
        self.dark5 = nn.Sequential(ConvBnSiLU(c4, c5, 3, 2), C2f(c5, c5, _n(3, depth), True), SPPF(c5, c5))
        n = _n(3, depth)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(c5 + c4, c4, n, False)
        self.top_down3 = C2f(c4 + c3, c3, n, False)
        self.down3 = ConvBnSiLU(c3, c3, 3, 2)
        self.bottom_up4 = C2f(c3 + c4, c4, n, False)
        self.down4 = ConvBnSiLU(c4, c4, 3, 2)
        self.bottom_up5 = C2f(c4 + c5, c5, n, False)
        self.head = DetectHead((c3, c4, c5), num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.dark3(self.stem(x))
        p4 = self.dark4(p3)
        p5 = self.dark5(p4)
        t4 = self.top_down4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top_down3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], 1))
        return self.head([n3, n4, n5])


def yolo_det(num_classes: int = 80, width: float = 0.25, depth: float = 0.33) -> YoloDet:
    return YoloDet(num_classes, width, depth)

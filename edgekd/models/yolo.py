"""A YOLOv8-style anchor-free detector: C2f backbone, SPPF, FPN/PAN neck, decoupled head at strides 8/16/32
(or any consecutive run of 4/8/16/32: ``strides=(4, 8, 16)`` adds a stride-4 level for tiny objects).

The network returns raw head outputs, so it exports to plain ONNX (Conv, Sigmoid, Mul, Add, Concat,
Split, MaxPool, Resize) and stays quantizable end to end; :mod:`edgekd.models.yolo_decode` wraps it with
the float box decode (boxes and scores as separate outputs). Unlike YOLOv8 the box branch predicts 4
values per cell directly instead of a DFL histogram: a centre offset and a log size per cell, see
:func:`edgekd.models.yolo_decode.decode_level`.

``width``/``depth`` scale channels and block repeats as YOLOv8's ``width_multiple``/``depth_multiple``:
0.25/0.33 is the "n" size. Input height and width must be multiples of the largest stride.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgekd.models.yolo_decode import DECODED_OUTPUTS, DecodedYolo, decode_outputs

STRIDES = (8, 16, 32)
# Backbone channels (before ``width``) at each stride the neck can tap.
_STAGE_CHANNELS = {4: 128, 8: 256, 16: 512, 32: 1024}


def _ch(c: int, width: float) -> int:
    return max(8, math.ceil(c * width / 8) * 8)


def _n(n: int, depth: float) -> int:
    return max(1, round(n * depth))


class ConvBnSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True)
        )


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
    """Decoupled head: separate box and class conv branches per scale, ``box_ch``/``cls_ch`` channels wide."""

    def __init__(self, channels: tuple[int, ...], num_classes: int, box_ch: int, cls_ch: int):
        super().__init__()
        self.box = nn.ModuleList(
            nn.Sequential(ConvBnSiLU(c, box_ch, 3), ConvBnSiLU(box_ch, box_ch, 3), nn.Conv2d(box_ch, 4, 1))
            for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(ConvBnSiLU(c, cls_ch, 3), ConvBnSiLU(cls_ch, cls_ch, 3), nn.Conv2d(cls_ch, num_classes, 1))
            for c in channels
        )
        for branch in self.cls:
            # Start every class at p≈0.01 so the loss of the many background cells doesn't swamp early training.
            nn.init.constant_(branch[-1].bias, -math.log(99.0))
        with torch.no_grad():
            for branch in self.box:
                # Start boxes about one stride wide: (2σ(b))² · 4 = 1 at σ(b) = 1/4 (yolo_decode.decode_boxes).
                # Added to the random init rather than set, so the levels' biases differ: the ONNX exporter
                # shares identical initializers, and a shared bias is one the quantizer leaves float.
                branch[-1].bias[2:] -= math.log(3.0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for x, box, cls in zip(feats, self.box, self.cls):
            out += [box(x), cls(x)]
        return tuple(out)


def _check_strides(strides: tuple[int, ...]) -> tuple[int, ...]:
    strides = tuple(int(s) for s in strides)
    known = sorted(_STAGE_CHANNELS)
    if (
        not strides
        or any(s not in _STAGE_CHANNELS for s in strides)
        or list(strides) != sorted(set(strides))
        or known.index(strides[-1]) - known.index(strides[0]) != len(strides) - 1
    ):
        raise ValueError(f"strides must be consecutive, increasing values of {known}, got {strides}")
    return strides


class YoloDet(nn.Module):
    """Returns ``(box_s, cls_s)`` per stride, smallest stride first: box ``[N, 4, H/s, W/s]``, cls
    ``[N, num_classes, H/s, W/s]`` (six outputs with the default strides 8/16/32).

    ``head_channels=(box, cls)`` sets the head branch widths; by default YOLOv8's rule on the first
    level's channels. The backbone runs down to the largest stride, with SPPF at its end.

    ``decode=True`` (or setting ``model.decode``) returns ``(boxes [N, A, 4], scores [N, A, C])`` instead,
    decoded in float by :func:`edgekd.models.yolo_decode.decode_outputs`; the weights are the same either way.
    """

    def __init__(
        self,
        num_classes: int = 80,
        width: float = 0.25,
        depth: float = 0.33,
        strides: tuple[int, ...] = STRIDES,
        head_channels: tuple[int, int] | None = None,
        decode: bool = False,
    ):
        super().__init__()
        self.decode = decode
        self.strides = _check_strides(strides)
        self.num_classes = num_classes
        self.input_size = (3, 320, 320)
        ch = {s: _ch(c, width) for s, c in _STAGE_CHANNELS.items()}
        c1 = _ch(64, width)
        deepest = self.strides[-1]
        stages = [
            nn.Sequential(ConvBnSiLU(3, c1, 3, 2), ConvBnSiLU(c1, ch[4], 3, 2), C2f(ch[4], ch[4], _n(3, depth), True))
        ]
        for s, repeats in ((8, 6), (16, 6), (32, 3)):
            if s <= deepest:
                stages.append(
                    nn.Sequential(ConvBnSiLU(ch[s // 2], ch[s], 3, 2), C2f(ch[s], ch[s], _n(repeats, depth), True))
                )
        stages[-1].append(SPPF(ch[deepest], ch[deepest]))
        self.backbone = nn.ModuleList(stages)
        n = _n(3, depth)
        levels = self.strides
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        # top-down: every level but the deepest fuses the upsampled level below it
        self.top_down = nn.ModuleList(C2f(ch[2 * s] + ch[s], ch[s], n, False) for s in levels[:-1])
        # bottom-up: every level but the shallowest fuses the strided-down level above it
        self.down = nn.ModuleList(ConvBnSiLU(ch[s // 2], ch[s // 2], 3, 2) for s in levels[1:])
        self.bottom_up = nn.ModuleList(C2f(ch[s // 2] + ch[s], ch[s], n, False) for s in levels[1:])
        c0 = ch[levels[0]]
        box_ch, cls_ch = head_channels or (max(64, c0 // 4), max(c0, min(num_classes, 100)))
        self.head = DetectHead(tuple(ch[s] for s in levels), num_classes, box_ch, cls_ch)

    def neck(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map at every head level, smallest stride first."""
        feats: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.backbone):
            x = stage(x)
            feats[4 << i] = x
        levels = self.strides
        top = [feats[levels[-1]]]
        for s, block in zip(reversed(levels[:-1]), reversed(self.top_down)):
            top.insert(0, block(torch.cat([self.up(top[0]), feats[s]], 1)))
        out = [top[0]]
        for i, (down, block) in enumerate(zip(self.down, self.bottom_up)):
            out.append(block(torch.cat([down(out[-1]), top[i + 1]], 1)))
        return out

    @property
    def output_names(self) -> tuple[str, ...] | None:
        """Names for the exported graph's outputs (the export pass reads them)."""
        return DECODED_OUTPUTS if self.decode else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.head(self.neck(x))
        return decode_outputs(raw, self.strides, DecodedYolo.grid) if self.decode else raw


def yolo_det(
    num_classes: int = 80,
    width: float = 0.25,
    depth: float = 0.33,
    strides: tuple[int, ...] = STRIDES,
    head_channels: tuple[int, int] | None = None,
    decode: bool = False,
) -> YoloDet:
    return YoloDet(num_classes, width, depth, strides, head_channels, decode)


def yolo_det_p2(num_classes: int = 80, width: float = 0.25, depth: float = 0.33, decode: bool = True) -> YoloDet:
    """For small objects: levels at strides 4/8/16 (no 32), head branches as wide as the stride-4 level
    (YOLOv8's 64-channel minimum would triple the cost at stride 4), decoded outputs."""
    c = _ch(_STAGE_CHANNELS[4], width)
    return YoloDet(num_classes, width, depth, (4, 8, 16), (c, c), decode)


def person_detector() -> YoloDet:
    """The architecture of the people-det teacher (examples/people-det): one class, ``yolo_det_p2``."""
    return yolo_det_p2(num_classes=1)


def person_detector_student() -> YoloDet:
    """The people-det student: ``yolo_det_p2`` at width 0.125, depth 0.2 (23.6 % of the teacher's MACs)."""
    return yolo_det_p2(num_classes=1, width=0.125, depth=0.2)

"""Stock architectures as other people write them, for the conformance suite and `make coverage`.

Small versions of ResNet-18, MobileNetV3 (hard-swish written ``x * relu6(x + 3) / 6``), EfficientNet
(SiLU, squeeze-excite), ShuffleNetV2 (channel split and shuffle through ``x.size()``), a ConvNeXt
stage (7×7 depthwise, channels-last LayerNorm, GELU, layer scale), SqueezeNet 1.1, DenseNet blocks, a
ViT-Tiny (patch embedding, attention with MatMul and Softmax, LayerNorm, GELU), a U-Net segmenter
(ConvTranspose, bilinear Resize, Concat) and the zoo's YOLO at 320; exported by torch at a chosen
opset with or without dynamic axes. Weights are random with BatchNorm statistics recalibrated on real
images, so activations keep a trained network's scale. The onnx wheel's light Caffe2 models get
random weights of the same kind (``realistic_light_model``).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout)
        self.skip = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18's layout (stem, four stages of two basic blocks) at a quarter of the width."""

    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, width, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        chans = [width, width * 2, width * 4, width * 8]
        blocks, cin = [], width
        for i, c in enumerate(chans):
            blocks += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def hswish(x):
    return x * F.relu6(x + 3) / 6


def hsigmoid(x):
    return F.relu6(x + 3) / 6


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, gate):
        super().__init__()
        self.reduce, self.expand, self.gate = nn.Conv2d(c, max(4, c // 4), 1), nn.Conv2d(max(4, c // 4), c, 1), gate

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


class MobileBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, act, se_gate=None):
        super().__init__()
        self.act = act
        self.expand, self.dw, self.project = (
            conv_bn(cin, mid, 1),
            conv_bn(mid, mid, k, stride, mid),
            conv_bn(mid, cout, 1),
        )
        self.se = SqueezeExcite(mid, se_gate) if se_gate is not None else None
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.act(self.dw(self.act(self.expand(x))))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3-Large's first stages, hard-swish and hard-sigmoid written out as the paper does."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.blocks = nn.Sequential(
            MobileBlock(16, 16, 16, 3, 1, F.relu),
            MobileBlock(16, 64, 24, 3, 2, F.relu),
            MobileBlock(24, 72, 40, 5, 2, F.relu, hsigmoid),
            MobileBlock(40, 120, 40, 5, 1, F.relu, hsigmoid),
            MobileBlock(40, 240, 80, 3, 2, hswish),
            MobileBlock(80, 200, 80, 3, 1, hswish),
            MobileBlock(80, 480, 112, 3, 1, hswish, hsigmoid),
        )
        self.head = nn.Conv2d(112, 256, 1)
        self.fc = nn.Linear(256, classes)

    def forward(self, x):
        x = self.blocks(hswish(self.stem(x)))
        x = hswish(self.head(x)).mean((2, 3))
        return self.fc(x)


def silu(x):
    return x * torch.sigmoid(x)


class EfficientNet(nn.Module):
    """EfficientNet-B0-style MBConv blocks: SiLU written as x * sigmoid(x), squeeze-excite with sigmoid."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.blocks = nn.Sequential(
            MobileBlock(16, 16, 16, 3, 1, silu, torch.sigmoid),
            MobileBlock(16, 64, 24, 3, 2, silu, torch.sigmoid),
            MobileBlock(24, 96, 24, 3, 1, silu, torch.sigmoid),
            MobileBlock(24, 96, 40, 5, 2, silu, torch.sigmoid),
            MobileBlock(40, 160, 80, 3, 2, silu, torch.sigmoid),
        )
        self.head = conv_bn(80, 192, 1)
        self.fc = nn.Linear(192, classes)

    def forward(self, x):
        x = self.blocks(silu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(silu(self.head(x)), 1), 1))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        self.branch = nn.Sequential(
            conv_bn(cin if stride == 2 else half, half, 1),
            nn.ReLU(),
            conv_bn(half, half, 3, stride, half),
            conv_bn(half, half, 1),
            nn.ReLU(),
        )
        self.shortcut = (
            nn.Sequential(conv_bn(cin, cin, 3, 2, cin), conv_bn(cin, half, 1), nn.ReLU()) if stride == 2 else None
        )

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch(b)), 1)
        else:
            out = torch.cat((self.shortcut(x), self.branch(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.Sequential(
            ShuffleUnit(24, 48, 2),
            ShuffleUnit(48, 48, 1),
            ShuffleUnit(48, 96, 2),
            ShuffleUnit(96, 96, 1),
            ShuffleUnit(96, 192, 2),
        )
        self.fc = nn.Linear(192, classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(x.mean([2, 3]))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """A ConvNeXt-T-style network: patchify stem, blocks with 7×7 depthwise, LayerNorm, GELU."""

    def __init__(self, classes: int = 10, c: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.down = nn.Conv2d(c, 2 * c, 2, 2)
        self.blocks2 = nn.Sequential(ConvNeXtBlock(2 * c))
        self.norm = nn.LayerNorm(2 * c)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.blocks2(self.down(self.blocks(self.stem(x))))
        return self.fc(self.norm(x.mean((2, 3))))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.squeeze(x))
        return torch.cat((F.relu(self.e1(s)), F.relu(self.e3(s))), 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 as torchvision writes it (no BatchNorm, ceil-mode max pools, a conv classifier)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 16, 32),
            Fire(64, 16, 32),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 24, 48),
            Fire(96, 24, 48),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(96, classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.n1, self.c1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.n2, self.c2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat((x, self.c2(F.relu(self.n2(self.c1(F.relu(self.n1(x))))))), 1)


class DenseNet(nn.Module):
    """DenseNet-121's pieces (pre-activation BN-ReLU-conv, concatenating dense blocks, transitions)."""

    def __init__(self, classes: int = 10, growth: int = 12):
        super().__init__()
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False)]
        for block in range(2):
            for _ in range(4):
                layers.append(DenseLayer(c, growth))
                c += growth
            if block == 0:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU())
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.n1, self.attn, self.n2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class ViT(nn.Module):
    """ViT-Tiny's layout, small: 8×8 patch embedding, class token, position embedding, pre-norm blocks
    (multi-head attention with MatMul and Softmax, GELU MLP), LayerNorm, the class token's logits."""

    def __init__(
        self, classes: int = 10, dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 8, tokens: int = 64
    ):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), nn.ReLU(), conv_bn(cout, cout), nn.ReLU())


class UNet(nn.Module):
    """A U-Net segmenter: two down steps, a ConvTranspose and a bilinear Resize up, skip Concats,
    per-pixel class logits."""

    def __init__(self, classes: int = 4, c: int = 16):
        super().__init__()
        self.e1, self.e2, self.mid = double_conv(3, c), double_conv(c, 2 * c), double_conv(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2)
        self.d2, self.d1 = double_conv(4 * c, 2 * c), double_conv(3 * c, c)
        self.out = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        s1 = self.e1(x)
        s2 = self.e2(F.max_pool2d(s1, 2))
        m = self.mid(F.max_pool2d(s2, 2))
        y = self.d2(torch.cat((self.up2(m), s2), 1))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(self.d1(torch.cat((y, s1), 1)))


def yolo320():
    """The zoo's YOLO detector (CSP backbone, SiLU, PAN neck, six raw head outputs), exported at 320."""
    from edgekd.models.zoo import build_model

    return build_model("yolo-det:0.25", num_classes=4)


def silu_conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout, 3, stride), nn.SiLU())


class UltralyticsStyleDetector(nn.Module):
    """A YOLOv8-style graph as Ultralytics exports it (written here: its code is AGPL): strides 8/16/32,
    per level a box branch of 4 × 16 DFL bins and a class branch, concatenated over levels into
    ``[N, 64 + C, A]``, split, the DFL (softmax over the bins, a fixed 1×1 projection onto 0…15),
    dist2bbox against constant anchors, times the strides, and one output ``[N, 4 + C, A]`` with the
    boxes (cx, cy, w, h in pixels) beside the class sigmoids."""

    def __init__(self, classes: int = 3, size: int = 320, c: int = 16, bins: int = 16):
        super().__init__()
        self.stem = nn.Sequential(silu_conv(3, c, 2), silu_conv(c, c, 2), silu_conv(c, 2 * c, 2))
        self.down = nn.ModuleList([silu_conv(2 * c, 2 * c, 2), silu_conv(2 * c, 4 * c, 2)])
        widths = (2 * c, 2 * c, 4 * c)
        self.box = nn.ModuleList([nn.Sequential(silu_conv(w, c), nn.Conv2d(c, 4 * bins, 1)) for w in widths])
        self.cls = nn.ModuleList([nn.Sequential(silu_conv(w, c), nn.Conv2d(c, classes, 1)) for w in widths])
        self.bins, self.classes = bins, classes
        anchors, strides = [], []
        for stride in (8, 16, 32):
            n = size // stride
            ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            anchors.append(torch.stack((xs.flatten(), ys.flatten())))
            strides.append(torch.full((1, n * n), float(stride)))
        self.register_buffer("anchors", torch.cat(anchors, 1).unsqueeze(0))
        self.register_buffer("strides", torch.cat(strides, 1))
        self.register_buffer("project", torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1))

    def forward(self, x):
        p3 = self.stem(x)
        levels = [p3, self.down[0](p3)]
        levels.append(self.down[1](levels[-1]))
        n = x.shape[0]
        heads = [torch.cat((b(f), c(f)), 1).view(n, 4 * self.bins + self.classes, -1) for f, b, c in
                 zip(levels, self.box, self.cls)]  # fmt: skip
        box, cls = torch.cat(heads, 2).split((4 * self.bins, self.classes), 1)
        a = box.shape[2]
        dist = F.conv2d(box.view(n, 4, self.bins, a).transpose(2, 1).softmax(1), self.project).view(n, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((boxes, cls.sigmoid()), 1)


ARCHITECTURES = {
    "resnet18": ResNet18,
    "mobilenetv3": MobileNetV3,
    "efficientnet": EfficientNet,
    "shufflenetv2": ShuffleNetV2,
    "convnext": ConvNeXt,
    "squeezenet": SqueezeNet,
    "densenet": DenseNet,
    "vit": ViT,
    "unet": UNet,
    "yolo": yolo320,
    "ultralytics-style": UltralyticsStyleDetector,
}
# Input shape per architecture, where not (1, 3, 64, 64).
SHAPES = {"yolo": (1, 3, 320, 320), "ultralytics-style": (1, 3, 320, 320)}
# Architectures whose output is not class logits (fidelity: SQNR, not top-1 agreement).
DENSE_OUTPUTS = ("unet", "yolo", "ultralytics-style")


CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "cifar10"


def calibration_images(shape: tuple[int, ...], limit: int, source: Path = CALIBRATION) -> np.ndarray:
    """``limit`` images of ``source`` (the repository's CIFAR-10 calibration set) resized to ``shape``."""
    from edgekd.data.preprocess import Preprocess
    from edgekd.data.samples import iter_batches

    batches = iter_batches(source, Preprocess(size=tuple(shape[2:])), (1,) + tuple(shape[1:]), limit=limit)
    return np.concatenate(list(batches))


def realistic_weights(model: nn.Module, images: np.ndarray, seed: int = 0) -> nn.Module:
    """Kaiming-normal convolutions, a readable classifier scale, and BatchNorm statistics measured on
    ``images`` (as a trained network's are), so activations neither vanish nor blow up."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * np.sqrt(2.0 / fan_in))
        elif isinstance(m, nn.Linear):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * np.sqrt(1.0 / m.weight.shape[1]))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
    model.train()
    with torch.no_grad():
        for batch in np.array_split(images, max(1, len(images) // 16)):
            model(torch.from_numpy(batch))
    return model.eval()


def trained_weights(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 8,
    seed: int = 0,
    batch: int = 32,
    progress=None,
) -> nn.Module:
    """``realistic_weights``, then supervised training (AdamW with a cosine schedule, random flips and
    4-pixel shifts) on ``images``; ``progress(epoch, epochs, mean loss, training top-1)`` after each epoch.

    Why: BatchNorm recalibrated per channel on a random network gives every channel unit variance, so
    channels that carried almost nothing are amplified like the rest; such a network is chaotic (Yang
    et al., "A Mean Field Theory of Batch Normalization", ICLR 2019): measured on the conformance
    ResNet-18, a one-step rounding difference early on grows to 11 output steps, and its logits sit so
    close together that a third of the top-1 decisions flip under int8 noise. Training gives a trained
    network's structure: the same ResNet-18 then keeps its integer artifacts within one output step of
    the simulation."""
    realistic_weights(model, images, seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            # realistic_weights' cumulative average would keep the first steps' statistics forever;
            # running statistics that lag the trained weights make int8 noise grow layer by layer.
            m.momentum = 0.1
    x, y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=5e-4)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=max(steps, 1), pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb = x[idx].flip(3) if torch.rand((), generator=g) < 0.5 else x[idx]
            dy, dx = torch.randint(-4, 5, (2,), generator=g).tolist()
            xb = torch.roll(xb, (dy, dx), (2, 3))
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        if progress is not None:
            progress(epoch + 1, epochs, loss_sum / len(x), correct / len(x))
    return model.eval()


def export(model: nn.Module, path: Path, shape: tuple[int, ...], opset: int, dynamic: bool) -> Path:
    """torch.onnx (TorchScript exporter) at ``opset``; ``dynamic`` makes N, H and W symbolic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}} if dynamic else None,
        )
    return path


def light_model_dir() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


LIGHT_MODELS = (
    "resnet50",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "bvlc_alexnet",
    "zfnet512",
)


def realistic_light_model(name: str, path: Path, images: np.ndarray | None = None, seed: int = 0) -> Path:
    """The light Caffe2 model with its ConstantOfShape weight generators replaced by random weights of
    the same shapes (Kaiming-normal conv/FC weights, near-identity BatchNorm): the graph stays what the
    exporter wrote (opset 9, initializers listed as inputs, Sum, Dropout, LRN), the activations become
    those of a trained-like network instead of constants."""
    model = onnx.load(str(light_model_dir() / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in model.graph.initializer}
    role = {}  # generated tensor → (consumer op, input index), looking through Unsqueeze
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            src = producers.get(name)
            if src is not None and src.op_type == "Unsqueeze":
                name = src.input[0]
            role.setdefault(name, (node.op_type, k))
    keep = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in onnx.numpy_helper.to_array(inits[node.input[0]]))
        out = node.output[0]
        op, k = role.get(out, ("", 0))
        if len(shape) >= 2:  # conv [O, I, kh, kw] / fc [O, I] weights
            value = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
        elif (op, k) in (("BatchNormalization", 1), ("Mul", 1)):  # scales
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif (op, k) == ("BatchNormalization", 4):  # variances
            value = 1.0 + 0.2 * rng.random(shape)
        else:  # biases, shifts, means
            value = 0.05 * rng.standard_normal(shape)
        model.graph.initializer.append(onnx.numpy_helper.from_array(value.astype(np.float32), out))
        model.graph.input.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, list(shape)))
    del model.graph.node[:]
    model.graph.node.extend(keep)
    _small_residual_branches(model)
    used = {i for n in model.graph.node for i in n.input}
    for container in (model.graph.initializer, model.graph.input):
        for item in [t for t in container if t.name not in used and t.name in inits]:
            container.remove(item)
    if images is not None:
        model = normalize_activations(model, images)
    onnx.save(model, str(path))
    return path


# Residual branches that join the skip path small, as "zero-init residual" training starts them (at 0).
# With unit-scale branches a random BatchNorm network is chaotic: measured on light ResNet-50, input noise at
# -40 dB came out of the logits at 20 dB, so no quantized copy of it could track float; at 0.2, 38 dB.
RESIDUAL_BRANCH_GAIN = 0.2


def _small_residual_branches(model: onnx.ModelProto) -> None:
    """Scales the BatchNormalization ending each residual branch (the deeper input of a Sum/Add join)
    by ``RESIDUAL_BRANCH_GAIN``."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    depth: dict[str, int] = {}
    for node in model.graph.node:
        d = 1 + max((depth.get(i, 0) for i in node.input), default=0)
        depth.update((o, d) for o in node.output)
    for node in model.graph.node:
        if node.op_type not in ("Sum", "Add") or len(node.input) != 2:
            continue
        branch = max(node.input, key=lambda t: depth.get(t, 0))
        bn = producer.get(branch)
        if bn is None or bn.op_type != "BatchNormalization" or not all(i in inits for i in bn.input[1:3]):
            continue
        for name in bn.input[1:3]:
            t = inits[name]
            t.CopyFrom(
                onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * np.float32(RESIDUAL_BRANCH_GAIN), name)
            )


def _session(model: onnx.ModelProto, outputs: list[str]):
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def normalize_activations(model: onnx.ModelProto, images: np.ndarray, logit_std: float = 3.0) -> onnx.ModelProto:
    """Data-dependent init, layer by layer as LSUV does: in graph order, every BatchNormalization gets
    the statistics of its input on ``images`` and every Conv/Gemm output is rescaled to unit standard
    deviation (the last one to ``logit_std``), so each layer sees a trained network's scale."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def initializer(name: str) -> str | None:  # through a Reshape (Caffe2's GoogLeNet classifier)
        node = producer.get(name)
        return (
            node.input[0]
            if node is not None and node.op_type == "Reshape" and node.input[0] in inits
            else (name if name in inits else None)
        )

    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and initializer(n.input[1])]
    last = layers[-1] if layers else None
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and all(i in inits for i in node.input[1:5]):
            x = _values(model, node.input[0], images)
            axes = (0,) + tuple(range(2, x.ndim))
            for idx, stat in ((node.input[3], x.mean(axes)), (node.input[4], x.var(axes) + 1e-3)):
                inits[idx].CopyFrom(onnx.numpy_helper.from_array(stat.astype(np.float32), idx))
        elif node in layers:
            y = _values(model, node.output[0], images)
            factor = (logit_std if node is last else 1.0) / max(float(y.std()), 1e-6)
            for idx in filter(None, map(initializer, node.input[1:3])):
                t = inits[idx]
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * np.float32(factor), idx))
    return model


def _values(model: onnx.ModelProto, tensor: str, images: np.ndarray) -> np.ndarray:
    sess = _session(model, [tensor])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run([tensor], {name: images[i : i + 1]})[0] for i in range(len(images))]).astype(
        np.float64
    )


def onnx_bytes(model: nn.Module, shape, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(shape),), buf, dynamo=False, opset_version=opset)
    return buf.getvalue()

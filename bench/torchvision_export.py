"""torchvision's own model definitions, exported to ONNX the way their users export them, for the coverage
matrix (bench/model_coverage.py ``--kinds torchvision``).

Runs in its own venv, never edgekd's: torchvision does not import beside edgekd's torch 2.13.0 CPU wheel
(bench/README.md has the two commands). Reads nothing of edgekd; writes ``OUT/<name>_<exporter>.onnx`` and
``OUT/manifest.json`` (name, file and its sha256, input shape, task, exporter, opset, parameter count, torch
and torchvision versions).

No pretrained weights here (no network): each model keeps torchvision's own initialisation, its
BatchNorm statistics recalibrated on real images (``--images``, a folder of image files) so that
activations keep the scale a trained network's have, and the last BatchNorm of every residual branch
scaled by ``--branch-scale`` (zero-init-residual style; at unit scale a deep random residual network is
chaotic, and no int8 copy of a chaotic network can follow it), as is ConvNeXt's layer scale (1e-6 at
initialisation: its branches would add nothing); a classifier initialised to zero (ViT's head: every logit 0)
gets truncated-normal weights (std 0.02). ImageNet's mean/std is subtracted inside
the graph, so each model reads RGB in [0, 1] like every other coverage model.

Exporters: ``dynamo`` is what ``torch.onnx.export(model, args, path)`` does in torch 2.14 (the
torch.export-based exporter, its default opset); ``torchscript`` is ``dynamo=False`` at opset 17, what
most models in the wild were exported with.

    venv/bin/python bench/torchvision_export.py --images calibration/cifar10 --out .cache/torchvision-onnx
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name → (builder keyword arguments, input size, task); the smallest member of each family torchvision ships.
MODELS = {
    "resnet18": ({}, 224, "classify"),
    "resnet50": ({}, 224, "classify"),
    "resnext50_32x4d": ({}, 224, "classify"),
    "mobilenet_v2": ({}, 224, "classify"),
    "mobilenet_v3_large": ({}, 224, "classify"),
    "mobilenet_v3_small": ({}, 224, "classify"),
    "efficientnet_b0": ({}, 224, "classify"),
    "efficientnet_v2_s": ({}, 224, "classify"),
    "regnet_x_400mf": ({}, 224, "classify"),
    "regnet_y_400mf": ({}, 224, "classify"),
    "mnasnet0_5": ({}, 224, "classify"),
    "shufflenet_v2_x1_0": ({}, 224, "classify"),
    "squeezenet1_1": ({}, 224, "classify"),
    "densenet121": ({}, 224, "classify"),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 224, "classify"),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 299, "classify"),
    "convnext_tiny": ({}, 224, "classify"),
    "vit_b_16": ({}, 224, "classify"),
    "swin_t": ({}, 224, "classify"),
    "maxvit_t": ({}, 224, "classify"),
    "lraspp_mobilenet_v3_large": ({"weights_backbone": None}, 224, "segment"),
    "deeplabv3_mobilenet_v3_large": ({"weights_backbone": None, "aux_loss": False}, 224, "segment"),
}


def builder(name: str):
    if name in torchvision.models.list_models(module=torchvision.models.segmentation):
        return getattr(torchvision.models.segmentation, name)
    return getattr(torchvision.models, name)


def images(folder: Path, size: int, count: int) -> torch.Tensor:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
    if not files:
        raise SystemExit(f"no image files under {folder}")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).astype(int)]
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in picked]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def residual_branch_ends(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm that ends each residual branch, by torchvision's block classes."""
    from torchvision.models import efficientnet, mnasnet, mobilenetv2, mobilenetv3, regnet, resnet

    ends = []
    for m in model.modules():
        if isinstance(m, resnet.Bottleneck):
            ends.append(m.bn3)
        elif isinstance(m, resnet.BasicBlock):
            ends.append(m.bn2)
        elif isinstance(m, mobilenetv2.InvertedResidual) and m.use_res_connect:
            ends.append(m.conv[-1])
        elif isinstance(m, (mobilenetv3.InvertedResidual, efficientnet.MBConv, efficientnet.FusedMBConv)):
            if m.use_res_connect:
                ends.append(m.block[-1][1])
        elif isinstance(m, mnasnet._InvertedResidual) and m.apply_residual:
            ends.append(m.layers[-1])
        elif isinstance(m, regnet.ResBottleneckBlock) and m.proj is None:
            ends.append(m.f.c[1])
    return [e for e in ends if isinstance(e, nn.BatchNorm2d)]


class Normalized(nn.Module):
    """The model reading [0, 1] RGB, ImageNet's mean/std subtracted in the graph; a segmenter's 'out' only."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        y = self.net((x - self.mean) / self.std)
        return y["out"] if isinstance(y, dict) else y


@torch.no_grad()
def recalibrated(net: nn.Module, batch: torch.Tensor, branch_scale: float) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    net.train()
    for chunk in batch.split(8):
        net(chunk)
    for bn in residual_branch_ends(net):
        bn.weight.mul_(branch_scale)
        bn.bias.mul_(branch_scale)
    for m in net.modules():  # ConvNeXt's layer scale starts at 1e-6: a branch that adds nothing yet
        if isinstance(getattr(m, "layer_scale", None), nn.Parameter):
            m.layer_scale.fill_(branch_scale)
        if isinstance(m, nn.Linear) and not m.weight.any():  # ViT's head starts at 0: every logit 0
            nn.init.trunc_normal_(m.weight, std=0.02)
    return net.eval()


def export(model: nn.Module, size: int, path: Path, exporter: str) -> int:
    """Writes ``path`` whole or not at all (a coverage run may be reading the one it replaces)."""
    example = torch.rand(1, 3, size, size)
    partial = path.with_suffix(".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"])
            program.save(str(partial))
        else:
            torch.onnx.export(model, (example,), str(partial), opset_version=17, dynamo=False, input_names=["images"])
    os.replace(partial, path)
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return max(o.version for o in imports if o.domain in ("", "ai.onnx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="real images for BatchNorm recalibration")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", help="comma-separated model names (default: all of MODELS)")
    ap.add_argument("--exporters", default="dynamo,torchscript")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--branch-scale", type=float, default=0.2)
    ap.add_argument("--force", action="store_true", help="export again models the manifest already lists")
    args = ap.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    names = args.only.split(",") if args.only else list(MODELS)
    for name in names:
        exporters = [
            e
            for e in args.exporters.split(",")
            if args.force or not (args.out / manifest.get(f"{name}/{e}", {}).get("file", "-")).is_file()
        ]
        if not exporters:
            continue  # exported before: the same bytes keep the coverage cells compiled from them
        kwargs, size, task = MODELS[name]
        torch.manual_seed(0)
        net = builder(name)(weights=None, **kwargs)
        model = Normalized(recalibrated(net, images(args.images, size, args.calib_images), args.branch_scale))
        for exporter in exporters:
            path = args.out / f"{name}_{exporter}.onnx"
            start = time.perf_counter()
            try:
                opset = export(model, size, path, exporter)
            except Exception as e:  # recorded: an export failure is torch's, not a coverage cell
                print(f"{name} {exporter}: export failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            manifest[f"{name}/{exporter}"] = {
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),  # the coverage cells' weights key
                "shape": [1, 3, size, size],
                "task": task,
                "exporter": exporter,
                "opset": opset,
                "params": sum(p.numel() for p in net.parameters()),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
            }
            print(f"{name} {exporter}: opset {opset}, {time.perf_counter() - start:.1f} s", flush=True)
            manifest_path.write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()

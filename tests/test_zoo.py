"""Zoo models: build by name, shapes, ONNX export parity, op sets, and params/MACs against published figures."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgekd.errors import UnknownNameError
from edgekd.models import ZOO, build_model
from edgekd.models.profile import ModelProfile, count_macs, count_params, profile

# name as built in tests (small widths keep export fast), input side, classes
CLASSIFIERS = [
    ("resnet8:0.625", 32, 10),
    ("resnet14:0.375", 32, 10),
    ("resnet20", 32, 10),
    ("resnet32:0.5", 32, 10),
    ("resnet56:0.5", 32, 10),
    ("mobilenetv2:0.5", 64, 1000),
    ("mobilenetv2-cifar:0.5", 32, 10),
    ("mobilenetv3-small:0.5", 64, 1000),
    ("mobilenetv3-small-cifar:0.5", 32, 10),
]
YOLO = "yolo-det:0.25"
YOLO_P2 = "yolo-det-p2:0.25"  # strides 4/8/16, decoded: boxes and scores

# Exporting in eval mode folds BatchNorm into Conv. Identity nodes come from the exporter sharing
# identical initializers (e.g. the all-zero biases of freshly folded convs).
CLASSIFIER_OPS = {
    "Conv",
    "Relu",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "Add",
    "Mul",
    "GlobalAveragePool",
    "Flatten",
    "Gemm",
    "Constant",
    "Identity",
}
YOLO_OPS = {
    "Conv",
    "Sigmoid",
    "Mul",
    "Add",
    "Concat",
    "Split",
    "Slice",
    "MaxPool",
    "Resize",
    "Reshape",
    "Constant",
    "Identity",
}
DECODED_YOLO_OPS = YOLO_OPS | {"Sub", "Transpose"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _seed_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so the export's BN folding is actually exercised.

    Each BN's gain stays ≤ 1 so deep random nets don't blow up to magnitudes where 1e-4 is below float32 precision.
    """
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(1 + torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def _export_and_run(model: nn.Module, x: torch.Tensor, path) -> tuple[list[np.ndarray], set[str]]:
    torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()}), ops


def test_every_zoo_entry_is_tested():
    tested = {name.partition(":")[0] for name, _, _ in CLASSIFIERS} | {
        YOLO.partition(":")[0],
        YOLO_P2.partition(":")[0],
    }
    assert tested == set(ZOO)


@pytest.mark.parametrize("name,side,classes", CLASSIFIERS)
def test_classifier_forward_shape(name, side, classes):
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, classes)
        assert build_model(name, num_classes=7).eval()(torch.randn(1, 3, side, side)).shape == (1, 7)


@pytest.mark.parametrize(
    "name,side,spatial",
    [
        ("mobilenetv2-cifar:0.5", 32, 4),
        ("mobilenetv3-small-cifar:0.5", 32, 4),
        ("mobilenetv2:0.5", 64, 2),
        ("mobilenetv3-small:0.5", 64, 2),
    ],
)
def test_feature_stride(name, side, spatial):
    # cifar variants downsample 8×, the ImageNet ones 32×
    with torch.no_grad():
        assert build_model(name).eval().features(torch.zeros(1, 3, side, side)).shape[-2:] == (spatial, spatial)


def test_yolo_outputs_three_strides():
    model = build_model(YOLO, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))  # not square, so H/W mix-ups show
    assert model.strides == (8, 16, 32)
    expected = []
    for s in (8, 16, 32):
        expected += [(2, 4, 64 // s, 96 // s), (2, 3, 64 // s, 96 // s)]
    assert [tuple(t.shape) for t in out] == expected


def test_yolo_p2_outputs_decoded_boxes_and_scores():
    model = build_model(YOLO_P2, num_classes=3).eval()
    with torch.no_grad():
        boxes, scores = model(torch.randn(2, 3, 64, 96))
    cells = sum((64 // s) * (96 // s) for s in (4, 8, 16))
    assert model.strides == (4, 8, 16) and model.output_names == ("boxes", "scores")
    assert boxes.shape == (2, cells, 4) and scores.shape == (2, cells, 3)


# dynamo=False is deliberate (the TorchScript exporter is what edgekd uses); its deprecation notice is noise here.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    "name,side,allowed",
    [(n, s, CLASSIFIER_OPS) for n, s, _ in CLASSIFIERS] + [(YOLO, 64, YOLO_OPS), (YOLO_P2, 64, DECODED_YOLO_OPS)],
)
def test_onnx_export_matches_torch(name, side, allowed, tmp_path):
    torch.manual_seed(0)
    model = _seed_batchnorm(build_model(name))
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        ref = model(x)
    ref = list(ref) if isinstance(ref, tuple) else [ref]
    got, ops = _export_and_run(model, x, tmp_path / "m.onnx")
    assert ops <= allowed, f"unexpected ONNX ops: {sorted(ops - allowed)}"
    assert len(got) == len(ref)
    for r, g in zip(ref, got):
        assert g.shape == tuple(r.shape)
        assert np.abs(g - r.numpy()).max() <= 1e-4


@pytest.mark.parametrize(
    "name,side,params,macs",
    [
        # params: torchvision's mobilenet_v2 / mobilenet_v3_small and the CIFAR ResNet-20 with 1×1 projection shortcuts;
        # MACs: the papers' 300M (MobileNetV2) and 56M (MobileNetV3-Small), conv + linear only.
        ("mobilenetv2", 224, 3_504_872, 300e6),
        ("mobilenetv3-small", 224, 2_542_856, 56.5e6),
        ("resnet20", 32, 272_474, 40.8e6),
    ],
)
def test_published_params_and_macs(name, side, params, macs):
    model = build_model(name)
    assert count_params(model) == params
    assert count_macs(model, (1, 3, side, side)) == pytest.approx(macs, rel=0.02)


def test_macs_hand_computed():
    layers = [
        (nn.Conv2d(3, 8, 3, padding=1), (3, 8, 8), 8 * 8 * 8 * 3 * 9, 8 * 27 + 8),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (8, 8, 8), 8 * 8 * 8 * 9, 8 * 9),  # depthwise
        (nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), (8, 8, 8), 16 * 4 * 4 * 4 * 9, 16 * 4 * 9 + 16),
        (nn.ConvTranspose2d(4, 2, 2, stride=2), (4, 3, 3), 2 * 6 * 6 * 4, 4 * 2 * 4 + 2),  # each output sees 4 inputs
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (3, 2, 2), 12 * 5, 12 * 5 + 5),
    ]
    for layer, shape, macs, params in layers:
        assert count_macs(layer, shape) == macs, layer
        assert count_params(layer) == params, layer
    whole = nn.Sequential(layers[0][0], layers[1][0], layers[2][0], nn.Flatten(), nn.Linear(16 * 4 * 4, 5))
    assert count_macs(whole, (1, 3, 8, 8)) == 13824 + 4608 + 9216 + 256 * 5


def test_macs_per_sample_and_modes_kept():
    model = build_model("resnet20")
    model.train()
    model.stem[1].eval()  # a frozen BN must stay frozen
    stats = model.layers[0].bn1.running_mean.clone()
    assert count_macs(model, (3, 32, 32)) == count_macs(model, (4, 3, 32, 32))
    assert model.training and not model.stem[1].training and model.layers[0].bn1.training
    assert torch.equal(model.layers[0].bn1.running_mean, stats)  # BN in train mode not updated
    p = profile(model, (1, 3, 32, 32))
    assert p == ModelProfile(272_474, count_macs(model, (1, 3, 32, 32)), (1, 3, 32, 32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.params = 0


@pytest.mark.parametrize("name", sorted(ZOO))
def test_width_reduces_params(name):
    assert count_params(build_model(f"{name}:0.25")) < count_params(build_model(f"{name}:0.5"))


@pytest.mark.parametrize("name", ["mobilenetv4", "yolo", "mobilenetv2:wide"])
def test_unknown_name(name):
    with pytest.raises(UnknownNameError):
        build_model(name)

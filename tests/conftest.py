from __future__ import annotations

import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd import api
from edgekd.models import build_model
from edgekd.passes.calibrate import CalibrationWarning

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calibration" / "cifar10"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a busy 2-core machine: intra-op threads only contend (5x slower with 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def keep_sigterm():
    """The CLI installs a SIGTERM handler in-process; a test must not leave it behind in the runner."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


RESNET_SEED = 0  # the zoo resnet20 of resnet_artifact is built from this torch seed


@pytest.fixture(scope="session")
def resnet_artifact(tmp_path_factory) -> Path:
    """A compiled resnet20 (random weights, torch seed RESNET_SEED) with labels and calibration-image verification."""
    out = tmp_path_factory.mktemp("art") / "resnet20"
    torch.manual_seed(RESNET_SEED)
    config = api.make_config(
        "resnet20",
        "onnx-cpu",
        out,
        input_shape=(1, 3, 32, 32),
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        labels=[f"c{i}" for i in range(10)],
        calib=CALIB,
        verify_samples=8,
    )
    return api.compile(config).output


ZOO_SHAPES = {
    "resnet20": (1, 3, 32, 32),
    "mobilenetv2-cifar:0.5": (1, 3, 32, 32),
    "mobilenetv3-small-cifar:0.5": (1, 3, 32, 32),
    "yolo-det:0.25": (1, 3, 64, 64),
}


def realistic(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with non-trivial BN statistics and a readable classifier scale, like a trained net."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.1, generator=g)
    return model.eval()


@pytest.fixture(scope="session")
def zoo_models(tmp_path_factory) -> dict[str, tuple[Path, Path, tuple[int, ...]]]:
    """Zoo name → (TorchScript file, .npy of 48 calibration samples, input shape)."""
    d = tmp_path_factory.mktemp("zoo")
    out = {}
    rng = np.random.default_rng(0)
    for name, shape in ZOO_SHAPES.items():
        torch.manual_seed(0)
        stem = name.replace(":", "_")
        path = d / f"{stem}.pt"
        torch.jit.save(torch.jit.trace(realistic(build_model(name)), torch.zeros(shape)), str(path))
        calib = d / f"calib_{stem}.npy"
        np.save(calib, rng.standard_normal((48,) + shape[1:]).astype(np.float32))
        out[name] = (path, calib, shape)
    return out


@pytest.fixture(scope="session")
def ssh_board(tmp_path_factory):
    from ssh_board import make_board, sshd_available

    if not sshd_available():
        pytest.skip("Debian's openssh-server is not installed (make test installs it with apt-get)")
    board = make_board(tmp_path_factory.mktemp("board"))
    board.start()
    yield board
    board.stop()


@pytest.fixture(scope="session")
def labelled(tmp_path_factory) -> Path:
    """64 images, class subfolders (the first few files of each of the 10 classes)."""
    root = tmp_path_factory.mktemp("labelled")
    for i, d in enumerate(sorted(p for p in (ROOT / "calibration" / "cifar10").iterdir() if p.is_dir())):
        (root / d.name).mkdir()
        for f in sorted(d.iterdir())[: 7 if i < 4 else 6]:
            shutil.copy(f, root / d.name / f.name)
    return root


@pytest.fixture(scope="session")
def flat(tmp_path_factory, labelled) -> Path:
    root = tmp_path_factory.mktemp("flat")
    for f in sorted(labelled.rglob("*.jpg")):
        shutil.copy(f, root / f"{f.parent.name}_{f.name}")
    return root


def compile_quick(model, target, out, input_shape, calib=None, **kw):
    """``model`` compiled for ``target`` into ``out``, quickly: int8, no sensitivity pass, 8 verify samples
    unless ``kw`` says otherwise."""
    settings = {"precision": "int8", "skip": ("sensitivity",), "verify_samples": 8, **kw}
    config = api.make_config(str(model), str(target), out, input_shape=input_shape, calib=calib, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return api.compile(config)


def compile_zoo_int8(tmp_path, zoo_models, name, target, out="out", **kw):
    """A zoo model (the ``zoo_models`` fixture) compiled int8 for ``target`` into ``tmp_path / out``."""
    path, calib, shape = zoo_models[name]
    return compile_quick(path, target, tmp_path / out, shape, calib, **kw)


DETECTOR_SIZE = (64, 64)


def lively_detector(num_classes: int = 2, seed: int = 0) -> torch.nn.Module:
    """A decoded ``yolo-det-p2:0.125`` (outputs boxes, scores) whose random weights see the input like a trained
    one: BatchNorm statistics taken from noise frames preprocessed as ``detector_card`` says (activations stay
    near unit scale through the depth), class logits spread wide (scores from ~0.02 to ~0.8, input-dependent)
    and boxes a few cells wide, so NMS has overlaps to remove."""
    torch.manual_seed(seed)
    model = build_model("yolo-det-p2:0.125", num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batch below
    frames = np.random.default_rng(seed).integers(0, 256, (8, *DETECTOR_SIZE, 3)).astype(np.float32)
    x = (frames / 255 - np.asarray([0.1, 0.2, 0.3], np.float32)) / np.asarray([0.5, 0.6, 0.7], np.float32)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        for branch in model.head.cls:
            branch[-1].weight.mul_(6.0)
            branch[-1].bias.fill_(-1.5)
        for branch in model.head.box:
            branch[-1].bias[2:] = 0.0  # w = h = (2σ(0))² · 4 strides
    return model.eval()


@pytest.fixture(scope="session")
def detector_torchscript(tmp_path_factory) -> Path:
    """``lively_detector()`` with 2 classes, TorchScript at 64×64."""
    path = tmp_path_factory.mktemp("detector") / "det.pt"
    torch.jit.save(torch.jit.trace(lively_detector(), torch.zeros(1, 3, *DETECTOR_SIZE)), str(path))
    return path


def detector_card(path: Path, torchscript: Path) -> Path:
    """A model card for ``detector_torchscript``: letterbox, and a mean/std that are not the identity."""
    path.write_text(
        f'[model]\nsource = "{torchscript}"\n[input]\nshape = [1, 3, {DETECTOR_SIZE[0]}, {DETECTOR_SIZE[1]}]\n'
        'resize = "letterbox"\nmean = [0.1, 0.2, 0.3]\nstd = [0.5, 0.6, 0.7]\n'
    )
    return path


@pytest.fixture(scope="session")
def detector_artifact(tmp_path_factory, detector_torchscript) -> Path:
    """``detector_torchscript`` compiled fp32 for onnx-cpu."""
    root = tmp_path_factory.mktemp("detector-art")
    card = detector_card(root / "det.toml", detector_torchscript)
    return api.compile(api.make_config(str(card), "onnx-cpu", root / "art", precision="fp32")).output

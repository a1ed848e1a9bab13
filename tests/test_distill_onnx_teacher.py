"""ONNX teachers: run in ONNX Runtime, their intermediate tensors exposed for feature losses, fixed batches
sliced; distillation from one in `edgekd compile`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekd import api
from edgekd.distill.features import feature_shapes, pair_layers, stage_ends
from edgekd.distill.onnx_teacher import OnnxTeacher
from edgekd.distill.trainer import TrainConfig, train_kd
from edgekd.models import build_model
from test_distill import PRE


def export_onnx(model: torch.nn.Module, path: Path, dynamic: bool = True) -> Path:
    torch.onnx.export(
        model.eval(),
        torch.zeros(1, 3, 32, 32),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}} if dynamic else None,
        dynamo=False,
    )
    return path


def test_onnx_teacher_matches_torch_and_exposes_intermediates(tmp_path):
    teacher = build_model("resnet20:0.25").eval()
    onnx_teacher = OnnxTeacher(__import__("onnx").load(str(export_onnx(teacher, tmp_path / "t.onnx"))))
    x = torch.randn(4, 3, 32, 32)
    np.testing.assert_allclose(onnx_teacher(x).numpy(), teacher(x).detach().numpy(), atol=1e-4)
    ends = stage_ends(feature_shapes(onnx_teacher, x))
    assert set(ends) == {(32, 32), (16, 16), (8, 8)}
    pairs = pair_layers(build_model("resnet8:0.25"), onnx_teacher, x[:2], None)
    assert [p[1] for p in pairs] == [ends[(32, 32)], ends[(16, 16)], ends[(8, 8)]]


def test_onnx_teacher_with_a_fixed_batch_runs_in_slices(tmp_path):
    teacher = build_model("resnet20:0.25").eval()
    onnx_teacher = OnnxTeacher(__import__("onnx").load(str(export_onnx(teacher, tmp_path / "t.onnx", dynamic=False))))
    assert onnx_teacher.batch == 1
    x = torch.randn(3, 3, 32, 32)
    np.testing.assert_allclose(onnx_teacher(x).numpy(), teacher(x).detach().numpy(), atol=1e-4)


def test_kd_from_an_onnx_teacher_with_features(labelled, tmp_path):
    torch.manual_seed(0)
    teacher = build_model("resnet20:0.25").eval()
    onnx_teacher = OnnxTeacher(__import__("onnx").load(str(export_onnx(teacher, tmp_path / "t.onnx"))))
    r = train_kd(
        onnx_teacher, build_model("resnet8:0.25"), labelled, PRE, TrainConfig(epochs=1, batch_size=16, hint_weight=1.0)
    )
    assert len(r.feature_pairs) == 3 and r.teacher_acc is not None and np.isfinite(r.history[0]["loss_hint"])


def test_compile_distills_from_an_onnx_teacher(labelled, tmp_path):
    onnx_path = export_onnx(build_model("resnet20:0.25"), tmp_path / "teacher.onnx")
    config = api.make_config(
        str(onnx_path), "onnx-cpu", tmp_path / "art", student="resnet8:0.25", data=labelled, epochs=1, precision="fp32"
    )
    result = api.compile(config)
    names = [p["name"] for p in result.manifest["passes"]]
    assert names[:2] == ["distill", "export"]
    assert result.manifest["distill"]["student_params"] < result.manifest["distill"]["teacher_params"]

"""The KD trainer, DistillPass and SparsifyPass, on 64 tiny images and tiny models."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from edgekd import api
from edgekd.cli import main
from edgekd.data.preprocess import Preprocess
from edgekd.distill.schedules import Schedule
from edgekd.distill.trainer import TrainConfig, train_kd
from edgekd.errors import ConfigError, PassFailedError, TrainingDivergedError
from edgekd.models import build_model

ROOT = Path(__file__).resolve().parents[1]
PRE = Preprocess(size=(32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


def models(seed=0):
    torch.manual_seed(seed)
    return build_model("resnet20:0.25", num_classes=10).eval(), build_model("resnet20:0.25", num_classes=10)


def test_kd_trains_and_writes_curves(labelled, tmp_path):
    teacher, student = models()
    seen = []
    # constant T and pure KD, so the per-epoch losses are comparable
    cfg = TrainConfig(
        epochs=3,
        batch_size=16,
        lr=3e-3,
        optimizer="adamw",
        augment=False,
        temperature=Schedule("constant", 4.0),
        alpha=Schedule("constant", 1.0),
        checkpoint_dir=tmp_path / "ck",
    )
    r = train_kd(teacher, student, labelled, PRE, cfg, out_dir=tmp_path, progress=lambda *a: seen.append(a))
    losses = [h["train_loss"] for h in r.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert r.teacher_acc is not None and r.history[-1]["val_top1"] is not None
    assert seen and seen[-1][0] == 3
    rows = list(csv.DictReader(open(tmp_path / "training.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2, 3]
    assert (tmp_path / "training.png").stat().st_size > 1000
    assert (tmp_path / "ck" / "last.pt").exists()


@pytest.mark.parametrize("data", ["labelled", "flat"])
def test_decoupled_kd_trains_with_labels_and_label_free(data, request):
    teacher, student = models()
    cfg = TrainConfig(
        epochs=3,
        batch_size=16,
        lr=3e-3,
        optimizer="adamw",
        augment=False,
        kd_loss="dkd",
        dkd_beta=2.0,
        temperature=Schedule("constant", 4.0),
        alpha=Schedule("constant", 1.0),
    )
    r = train_kd(teacher, student, request.getfixturevalue(data), PRE, cfg)
    losses = [h["loss_kd"] for h in r.history]
    assert len(losses) == 3 and losses[-1] < losses[0]


@pytest.mark.parametrize("amp, live", [(None, True), ("bf16", False), ("bf16", True)])
def test_amp_runs_the_forward_passes_in_bfloat16_and_keeps_float32_weights(labelled, amp, live):
    teacher, student = models()
    seen = {"student": set(), "teacher": set()}
    for role, model in (("student", student), ("teacher", teacher)):
        model.stem[0].register_forward_hook(lambda m, i, o, role=role: seen[role].add(o.dtype))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, optimizer="adamw", amp=amp, live_teacher=live)
    r = train_kd(teacher, student, labelled, PRE, cfg)
    low = torch.bfloat16 if amp else torch.float32
    assert low in seen["student"]  # training steps (the holdout is scored in float32)
    assert (low in seen["teacher"]) == live  # stored logits are computed once, in float32
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(math.isfinite(h["train_loss"]) for h in r.history) and r.history[-1]["val_top1"] is not None


def test_amp_other_than_bf16_is_a_config_error():
    with pytest.raises(ConfigError, match="amp must be 'bf16' or unset") as e:
        TrainConfig(amp="fp16")
    assert "float32" in e.value.hint


def test_amp_on_a_cpu_without_native_bfloat16_warns_that_it_is_slower(labelled, monkeypatch):
    import edgekd.distill.trainer as trainer

    monkeypatch.setattr(trainer, "native_bf16", lambda: False)
    teacher, student = models()
    with pytest.warns(UserWarning, match="without native bfloat16"):
        train_kd(teacher, student, labelled, PRE, TrainConfig(epochs=1, batch_size=16, amp="bf16"))


def test_resume_continues_from_the_saved_epoch(labelled, tmp_path):
    teacher, student = models()
    ck = tmp_path / "ck"
    train_kd(teacher, student, labelled, PRE, TrainConfig(epochs=1, batch_size=32, checkpoint_dir=ck))
    saved = torch.load(ck / "last.pt", weights_only=True)
    assert saved["epoch"] == 1
    _, fresh = models(seed=1)
    epochs_seen = []
    r = train_kd(
        teacher,
        fresh,
        labelled,
        PRE,
        TrainConfig(epochs=2, batch_size=32, checkpoint_dir=ck, resume=True),
        progress=lambda e, *rest: epochs_seen.append(e),
    )
    assert set(epochs_seen) == {2}  # epoch 1 came from the checkpoint
    assert [h["epoch"] for h in r.history] == [1, 2]


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(labelled, tmp_path, monkeypatch):
    import edgekd.distill.trainer as trainer

    teacher, student = models()
    ck = tmp_path / "ck"
    train_kd(teacher, student, labelled, PRE, TrainConfig(epochs=1, batch_size=32, checkpoint_dir=ck))
    before = (ck / "last.pt").read_bytes()
    monkeypatch.setattr(trainer, "hinton_kd", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDivergedError) as e:
        train_kd(teacher, student, labelled, PRE, TrainConfig(epochs=3, batch_size=32, checkpoint_dir=ck, resume=True))
    assert "last.pt" in str(e.value)
    assert (ck / "last.pt").read_bytes() == before


def test_label_free_with_entropy_selection(flat):
    teacher, student = models()
    r = train_kd(teacher, student, flat, PRE, TrainConfig(epochs=1, batch_size=16, select_fraction=0.3))
    assert r.total == 64 and r.kept == round(0.3 * 64)
    assert r.teacher_acc is None and r.history[0]["val_top1"] is None
    r = train_kd(teacher, student, flat, PRE, TrainConfig(epochs=1, batch_size=16))
    assert r.kept == round(0.3 * 64)  # the default selection
    r = train_kd(teacher, student, flat, PRE, TrainConfig(epochs=1, batch_size=16, select_fraction=1.0))
    assert r.kept == 64


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsity_ramp_leaves_exact_zeros(labelled, pattern):
    from edgekd.sparsity.masks import is_nm_sparse, prunable

    teacher, student = models()
    r = train_kd(
        teacher,
        student,
        labelled,
        PRE,
        TrainConfig(epochs=2, batch_size=16, sparsity=0.5, pattern=pattern, mask_every=2),
    )
    for name, m in prunable(student).items():
        if pattern == "unstructured":
            assert r.sparsity[name] == pytest.approx(0.5, abs=0.02)
        elif m.weight.shape[1] % 4 == 0:
            assert is_nm_sparse(m.weight)


def test_distill_without_data_is_a_config_error(tmp_path):
    config = api.make_config(
        "resnet20:0.25", "onnx-cpu", tmp_path / "o", input_shape=(1, 3, 32, 32), student="resnet20:0.25"
    )
    with pytest.raises(ConfigError, match="--data"):
        api.compile(config)


def test_mismatched_student_is_refused(labelled, tmp_path):
    config = api.make_config(
        "resnet20:0.25",
        "onnx-cpu",
        tmp_path / "o",
        input_shape=(1, 3, 32, 32),
        student="yolo-det:0.25",
        data=labelled,
        epochs=1,
    )
    with pytest.raises((PassFailedError, ConfigError)):
        api.compile(config)


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    g = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    return {n.input[1]: consts[n.input[1]] for n in g.node if n.op_type == "Conv" and n.input[1] in consts}


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_cli_compile_distills_and_sparsifies(labelled, tmp_path, pattern):
    out = tmp_path / "art"
    r = CliRunner().invoke(
        main,
        [
            "compile",
            "resnet20:0.5",
            "--target",
            "onnx-cpu",
            "-o",
            str(out),
            "--input-shape",
            "1,3,32,32",
            "--student",
            "resnet20:0.25",
            "--data",
            str(labelled),
            "--epochs",
            "1",
            "--sparsity",
            "0.5",
            "--sparsity-pattern",
            pattern,
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    names = [p["name"] for p in manifest["passes"]]
    assert names[:3] == ["distill", "sparsify", "export"]
    d = next(p for p in manifest["passes"] if p["name"] == "distill")["metrics"]
    assert d["student_params"] < d["teacher_params"] and d["epochs"] == 1 and d["kept_samples"] > 0
    assert manifest["distill"] == d and manifest["distill"]["student_macs"] < manifest["distill"]["teacher_macs"]
    sp = manifest["sparsity"]
    assert sp["pattern"] == pattern and sp["per_layer"]
    assert sp["weights_gzip_bytes_sparse"] < sp["weights_gzip_bytes_dense"]  # the zeros compress
    onnx_files = sorted(out.rglob("*.onnx"))
    assert onnx_files
    weights = _onnx_weights(onnx_files[0])
    zero_fracs = [float((w == 0).mean()) for w in weights.values() if pattern == "unstructured" or w.shape[1] % 4 == 0]
    assert zero_fracs and all(f >= 0.45 for f in zero_fracs)

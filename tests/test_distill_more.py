"""Feature pairing, ONNX teachers, replay (incremental) updates, bad training data, training options,
compile --resume, and a real 2-process DistributedDataParallel run under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd import api
from edgekd.distill.features import feature_shapes, pair_layers, stage_ends
from edgekd.distill.onnx_teacher import OnnxTeacher
from edgekd.distill.options import parse_pairs, parse_schedule, train_config
from edgekd.distill.replay import ReplayBuffer
from edgekd.distill.schedules import Schedule
from edgekd.distill.trainer import TrainConfig, predict, train_kd
from edgekd.errors import ConfigError, DataError, UnknownNameError
from edgekd.models import build_model

from test_distill import PRE, models

ROOT = Path(__file__).resolve().parents[1]
X = torch.zeros(2, 3, 32, 32)


def export_onnx(model: torch.nn.Module, path: Path, dynamic: bool = True) -> Path:
    torch.onnx.export(model.eval(), torch.zeros(1, 3, 32, 32), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}} if dynamic else None, dynamo=False)
    return path


# ----------------------------------------------------------------------------- pairing

def test_auto_pairing_matches_stage_ends_by_spatial_size():
    teacher, student = build_model("resnet20:0.5"), build_model("resnet8:0.25")
    pairs = pair_layers(student, teacher, X, None)
    assert [(s, t) for s, t, _, _ in pairs] == [("layers.0", "layers.2"), ("layers.1", "layers.5"), ("layers", "layers")]
    assert [ss[2:] for _, _, ss, _ in pairs] == [(32, 32), (16, 16), (8, 8)]
    assert all(ss[2:] == ts[2:] for _, _, ss, ts in pairs)


def test_named_pairs_and_unknown_names_list_the_candidates():
    teacher, student = build_model("resnet20:0.5"), build_model("resnet8:0.25")
    pairs = pair_layers(student, teacher, X, (("layers.1", "layers.4"),))
    assert pairs[0][2][1] == 8 and pairs[0][3][1] == 16  # channels differ → an adapter
    with pytest.raises(UnknownNameError) as e:
        pair_layers(student, teacher, X, (("layers.9", "layers.4"),))
    assert "student feature layer" in str(e.value) and "layers.0.conv1" in e.value.hint
    with pytest.raises(ConfigError, match="spatial size"):
        pair_layers(student, teacher, X, (("layers.0", "layers.8"),))


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


# ----------------------------------------------------------------------------- training with features

@pytest.mark.parametrize("feature_loss", ["mse", "cosine"])
def test_hint_and_attention_terms_train_and_are_logged(labelled, tmp_path, feature_loss):
    teacher, _ = models()
    student = build_model("resnet8:0.25")
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, optimizer="adamw", augment=False, hint_weight=1.0,
                      attention_weight=1.0, feature_loss=feature_loss, alpha=Schedule("constant", 1.0))
    r = train_kd(teacher, student, labelled, PRE, cfg, out_dir=tmp_path)
    assert r.feature_pairs == [("layers.0", "layers.2"), ("layers.1", "layers.5"), ("layers", "layers")]
    assert r.history[-1]["loss_hint"] < r.history[0]["loss_hint"]
    assert r.history[-1]["loss_attention"] < r.history[0]["loss_attention"]
    header = (tmp_path / "training.csv").read_text().splitlines()[0]
    assert "loss_hint" in header and "loss_attention" in header and "loss_kd" in header


def test_compensation_and_learnable_temperature(labelled):
    teacher, _ = models()
    student = build_model("resnet8:0.25")
    cfg = TrainConfig(epochs=2, batch_size=16, hint_weight=1.0, attention_weight=1.0, compensate=True,
                      compensate_every=2, learn_temperature=True, temperature=Schedule("constant", 4.0), loss_clip=0.3)
    r = train_kd(teacher, student, labelled, PRE, cfg)
    temps = [h["temperature"] for h in r.history]
    assert all(1.0 < t < 10.0 for t in temps) and temps[-1] != 4.0  # T moved with the student
    # per-term clip: every logged term is at most the clip (each is a mean of clipped values)
    assert all(r.history[-1][k] <= 0.3 + 1e-6 for k in ("loss_kd", "loss_ce", "loss_hint", "loss_attention"))


def test_kd_from_an_onnx_teacher_with_features(labelled, tmp_path):
    torch.manual_seed(0)
    teacher = build_model("resnet20:0.25").eval()
    onnx_teacher = OnnxTeacher(__import__("onnx").load(str(export_onnx(teacher, tmp_path / "t.onnx"))))
    r = train_kd(onnx_teacher, build_model("resnet8:0.25"), labelled, PRE,
                 TrainConfig(epochs=1, batch_size=16, hint_weight=1.0))
    assert len(r.feature_pairs) == 3 and r.teacher_acc is not None and np.isfinite(r.history[0]["loss_hint"])


def test_compile_distills_from_an_onnx_teacher(labelled, tmp_path):
    onnx_path = export_onnx(build_model("resnet20:0.25"), tmp_path / "teacher.onnx")
    config = api.make_config(str(onnx_path), "onnx-cpu", tmp_path / "art", student="resnet8:0.25", data=labelled,
                             epochs=1, precision="fp32")
    result = api.compile(config)
    names = [p["name"] for p in result.manifest["passes"]]
    assert names[:2] == ["distill", "export"]
    assert result.manifest["distill"]["student_params"] < result.manifest["distill"]["teacher_params"]


# ----------------------------------------------------------------------------- incremental

def _coloured_folder(root: Path, classes: dict[str, tuple[int, int, int]], n: int, seed: int) -> Path:
    """Flat-colour images with noise: trivially separable classes, so forgetting shows in a few steps."""
    rng = np.random.default_rng(seed)
    for name, rgb in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.clip(np.asarray(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{seed}-{i:03d}.png")
    return root


def test_replay_buffer_reservoir_and_round_trip(tmp_path):
    buf = ReplayBuffer(10, seed=0)
    imgs = np.arange(25, dtype=np.uint8)[:, None, None, None] * np.ones((25, 2, 2, 3), np.uint8)
    buf.add(imgs[:5], np.zeros((5, 3)))
    assert len(buf) == 5 and buf.fill == 0.5
    buf.add(imgs[5:], np.zeros((20, 3)))
    assert len(buf) == 10 and buf.seen == 25
    assert len(set(buf.images[:, 0, 0, 0])) == 10 and buf.images[:, 0, 0, 0].max() > 9  # later samples got in
    buf.save(tmp_path / "r.npz")
    back = ReplayBuffer.load(tmp_path / "r.npz")
    assert back.seen == 25 and np.array_equal(back.images, buf.images)
    with pytest.raises(DataError, match="do not match"):
        back.add(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 3)))


def test_replay_keeps_old_behaviour_during_an_update(tmp_path):
    """A periodic update whose new data hold one class only: without replay the student drifts to that class
    and forgets the old data; with replay (old samples + their stored teacher logits) it keeps them."""
    old_colours, new_colours = {"a": (200, 30, 30), "b": (30, 200, 30)}, {"a": (200, 30, 200), "b": (30, 200, 200)}
    old = _coloured_folder(tmp_path / "old", old_colours, 20, 0)
    new = _coloured_folder(tmp_path / "new", {"a": new_colours["a"]}, 40, 1)
    both = _coloured_folder(_coloured_folder(tmp_path / "both", old_colours, 20, 0), new_colours, 20, 1)
    from edgekd.distill.data import load_folder, to_tensor

    old_train, _ = load_folder(old, (32, 32))
    x_old, y_old = to_tensor(old_train.images, PRE), old_train.labels

    torch.manual_seed(0)
    teacher = build_model("resnet8:0.25", num_classes=2)  # knows both tasks (trained on labels alone)
    train_kd(build_model("resnet8:0.25", num_classes=2), teacher, both, PRE,
             TrainConfig(epochs=4, batch_size=8, lr=1e-2, optimizer="adamw", alpha=Schedule("constant", 0.0),
                         augment=False))
    teacher.eval()

    def update(with_replay: bool) -> tuple[float, float]:
        torch.manual_seed(1)
        student = build_model("resnet8:0.25", num_classes=2)
        replay = ReplayBuffer(64)
        train_kd(teacher, student, old, PRE, TrainConfig(epochs=3, batch_size=8, lr=1e-2, optimizer="adamw",
                                                         augment=False), replay=replay)
        assert len(replay) == len(x_old)
        before = predict(student, x_old).softmax(1)
        train_kd(teacher, student, new, PRE, TrainConfig(epochs=5, batch_size=8, lr=3e-2, optimizer="adamw",
                                                         augment=False), replay=replay if with_replay else None)
        after = predict(student, x_old)
        swing = float((after.softmax(1) - before).abs().sum(1).mean())  # how far old-data predictions moved
        return swing, float((after.argmax(1).numpy() == y_old).mean())

    (swing_replay, acc_replay), (swing_plain, acc_plain) = update(True), update(False)
    assert acc_replay >= 0.95 and acc_replay > acc_plain
    assert swing_replay < 0.5 * swing_plain


# ----------------------------------------------------------------------------- bad data

def test_unreadable_images_are_skipped_with_a_count_or_refused(labelled, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(labelled, data)
    (data / "airplane" / "broken.jpg").write_bytes(b"not a jpeg")
    from edgekd.distill.data import decode
    from edgekd.data.folder import scan_image_folder

    folder = scan_image_folder(data)
    assert decode(folder, (32, 32), max_unreadable=0.05).skipped == 1
    with pytest.raises(DataError, match="cannot be decoded"):
        decode(folder, (32, 32), max_unreadable=0.0)


def test_alpha_below_one_needs_labels(flat):
    teacher, student = models()
    with pytest.raises(ConfigError, match="no class subfolders"):
        train_kd(teacher, student, flat, PRE, TrainConfig(epochs=1, alpha=Schedule("constant", 0.5)))


def test_empty_data_folder_is_a_data_error(tmp_path):
    teacher, student = models()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        train_kd(teacher, student, tmp_path / "empty", PRE, TrainConfig(epochs=1))


# ----------------------------------------------------------------------------- options

def test_training_options_parse_into_the_train_config():
    assert parse_schedule("6:2") == Schedule("linear", 6.0, 2.0)
    assert parse_schedule("4") == Schedule("constant", 4.0)
    assert parse_schedule("6:2", "cosine") == Schedule("cosine", 6.0, 2.0)
    assert parse_pairs("a=b, c=d") == (("a", "b"), ("c", "d")) and parse_pairs("auto") is None
    cfg = train_config({"temperature": "5:1", "temperature_schedule": "cosine", "alpha": "1", "optimizer": "adamw",
                        "select_fraction": 0.3, "loss_clip": 0.3, "sparsity_scope": "global", "early_stop": 2},
                       epochs=3, lr=0.01)
    assert cfg.temperature == Schedule("cosine", 5.0, 1.0) and cfg.alpha == Schedule("constant", 1.0)
    assert (cfg.optimizer, cfg.select_fraction, cfg.loss_clip, cfg.scope, cfg.early_stop_patience, cfg.epochs, cfg.lr) \
        == ("adamw", 0.3, 0.3, "global", 2, 3, 0.01)
    for bad in ({"temperature": "a:b"}, {"feature_pairs": "layers.0"}, {"nonsense": 1}, {"select_fraction": 1.5}):
        with pytest.raises(ConfigError):
            train_config(bad)


def test_cli_passes_training_flags_through(labelled, tmp_path):
    from click.testing import CliRunner
    from edgekd.cli import main

    out = tmp_path / "art"
    r = CliRunner().invoke(main, ["compile", "resnet20:0.25", "--target", "onnx-cpu", "-o", str(out), "--precision",
                                  "fp32", "--input-shape", "1,3,32,32", "--student", "resnet8:0.25", "--data",
                                  str(labelled), "--epochs", "1", "--temperature", "4:1", "--alpha", "0.9:0.5",
                                  "--optimizer", "adamw", "--lr", "0.003", "--batch-size", "16", "--hint-weight", "0.5",
                                  "--feature-pairs", "layers.1=layers.5", "--loss-clip", "2", "-q"])
    assert r.exit_code == 0, r.output
    t = json.loads((out / "manifest.json").read_text())["distill"]["training"]
    assert t["temperature"] == {"kind": "linear", "start": 4.0, "end": 1.0}
    assert t["alpha"] == {"kind": "linear", "start": 0.9, "end": 0.5}
    assert (t["optimizer"], t["lr"], t["batch_size"], t["hint_weight"], t["loss_clip"]) == ("adamw", 0.003, 16, 0.5, 2.0)
    assert t["feature_pairs"] == [["layers.1", "layers.5"]]
    assert not (tmp_path / "art.checkpoints").exists()  # a finished compile leaves no checkpoints


def test_compile_resume_continues_an_interrupted_distillation(labelled, tmp_path, monkeypatch):
    from edgekd.errors import PassFailedError
    from edgekd.passes import export_onnx as export_pass

    kwargs = dict(input_shape=(1, 3, 32, 32), student="resnet8:0.25", data=labelled, precision="fp32",
                  train_options={"batch_size": 32})
    original = export_pass.ExportOnnxPass.run
    monkeypatch.setattr(export_pass.ExportOnnxPass, "run", lambda self, state: (_ for _ in ()).throw(
        RuntimeError("simulated crash after training")))
    with pytest.raises(PassFailedError):
        api.compile(api.make_config("resnet20:0.25", "onnx-cpu", tmp_path / "art", epochs=1, **kwargs))
    ck = tmp_path / "art.checkpoints" / "distill" / "last.pt"
    assert ck.exists() and not (tmp_path / "art").exists()
    first_epoch = torch.load(ck, weights_only=True)["history"][0]
    monkeypatch.setattr(export_pass.ExportOnnxPass, "run", original)
    result = api.compile(api.make_config("resnet20:0.25", "onnx-cpu", tmp_path / "art", epochs=2, resume=True, **kwargs))
    history = (tmp_path / "art" / "training" / "training.csv").read_text().splitlines()
    assert len(history) == 3 and result.manifest["distill"]["epochs"] == 2
    assert float(history[1].split(",")[1]) == pytest.approx(first_epoch["train_loss"])  # epoch 1 was not retrained
    assert not (tmp_path / "art.checkpoints").exists()


# ----------------------------------------------------------------------------- scale-out

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_under_torchrun(labelled, tmp_path):
    """A real torchrun launch: 2 gloo workers split every batch; the trainer checks at the end that the
    workers hold identical weights, and only worker 0 writes."""
    out = tmp_path / "student.pt"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "edgekd", "distill", str(ROOT / "examples/cifar10/model.toml"),
           "--student", "resnet8:0.25", "--data", str(labelled), "-o", str(out), "--epochs", "2", "--batch-size", "16",
           "--hint-weight", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["workers"] == 2 and record["epochs"] == 2
    assert proc.stdout.count("wrote ") == 1  # worker 0 alone reports and writes
    state = torch.load(out, weights_only=True)
    student = build_model("resnet8:0.25")
    student.load_state_dict(state)
    assert (out.parent / "student.pt.training" / "training.csv").exists()


def test_student_from_a_user_factory():
    from edgekd.distill.student import build_student
    from edgekd.errors import FactoryError

    model = build_student("edgekd.models.resnet_cifar:resnet8", 7)
    assert model(X).shape == (2, 7)
    with pytest.raises(FactoryError):
        build_student("no_such_module_xyz:make", 10)


def test_cli_distill_then_incremental_update_with_replay(labelled, flat, tmp_path):
    from click.testing import CliRunner
    from edgekd.cli import main

    card = str(ROOT / "examples/cifar10/model.toml")
    first = CliRunner().invoke(main, ["distill", card, "--student", "resnet8:0.25", "--data", str(labelled), "-o",
                                      str(tmp_path / "s.pt"), "--epochs", "1", "--replay", str(tmp_path / "r.npz"),
                                      "--replay-size", "32", "-q"])
    assert first.exit_code == 0, first.output
    assert ReplayBuffer.load(tmp_path / "r.npz").seen > 0 and len(ReplayBuffer.load(tmp_path / "r.npz")) == 32
    update = CliRunner().invoke(main, ["distill", card, "--student", "resnet8:0.25", "--data", str(flat), "-o",
                                       str(tmp_path / "s2.pt"), "--epochs", "1", "--init", str(tmp_path / "s.pt"),
                                       "--replay", str(tmp_path / "r.npz"), "--select-fraction", "1", "-q"])
    assert update.exit_code == 0, update.output
    record = json.loads((tmp_path / "s2.json").read_text())
    assert record["replay_size"] == 32 and record["kept_samples"] == 64
    assert ReplayBuffer.load(tmp_path / "r.npz").seen > 32 + 50  # the update's images were offered to the buffer
    again = CliRunner().invoke(main, ["distill", card, "--student", "resnet8:0.25", "--data", str(flat), "-o",
                                      str(tmp_path / "s2.pt"), "--epochs", "1", "-q"])
    assert again.exit_code != 0 and "--force" in again.output  # an existing student is never overwritten silently

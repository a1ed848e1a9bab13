"""Incremental updates: the replay buffer (reservoir, round trip) keeps old behaviour while new data
arrive; `edgekd distill --init --replay` from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.distill.replay import ReplayBuffer
from edgekd.distill.schedules import Schedule
from edgekd.distill.trainer import TrainConfig, predict, train_kd
from edgekd.errors import DataError
from edgekd.models import build_model
from test_distill import PRE

ROOT = Path(__file__).resolve().parents[1]


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
    train_kd(
        build_model("resnet8:0.25", num_classes=2),
        teacher,
        both,
        PRE,
        TrainConfig(epochs=4, batch_size=8, lr=1e-2, optimizer="adamw", alpha=Schedule("constant", 0.0), augment=False),
    )
    teacher.eval()

    def update(with_replay: bool) -> tuple[float, float]:
        torch.manual_seed(1)
        student = build_model("resnet8:0.25", num_classes=2)
        replay = ReplayBuffer(64)
        train_kd(
            teacher,
            student,
            old,
            PRE,
            TrainConfig(epochs=3, batch_size=8, lr=1e-2, optimizer="adamw", augment=False),
            replay=replay,
        )
        assert len(replay) == len(x_old)
        before = predict(student, x_old).softmax(1)
        train_kd(
            teacher,
            student,
            new,
            PRE,
            TrainConfig(epochs=5, batch_size=8, lr=3e-2, optimizer="adamw", augment=False),
            replay=replay if with_replay else None,
        )
        after = predict(student, x_old)
        swing = float((after.softmax(1) - before).abs().sum(1).mean())  # how far old-data predictions moved
        return swing, float((after.argmax(1).numpy() == y_old).mean())

    (swing_replay, acc_replay), (swing_plain, acc_plain) = update(True), update(False)
    assert acc_replay >= 0.95 and acc_replay > acc_plain
    assert swing_replay < 0.5 * swing_plain


def test_cli_distill_then_incremental_update_with_replay(labelled, flat, tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    card = str(ROOT / "examples/cifar10/model.toml")
    first = CliRunner().invoke(
        main,
        [
            "distill",
            card,
            "--student",
            "resnet8:0.25",
            "--data",
            str(labelled),
            "-o",
            str(tmp_path / "s.pt"),
            "--epochs",
            "1",
            "--replay",
            str(tmp_path / "r.npz"),
            "--replay-size",
            "32",
            "-q",
        ],
    )
    assert first.exit_code == 0, first.output
    assert ReplayBuffer.load(tmp_path / "r.npz").seen > 0 and len(ReplayBuffer.load(tmp_path / "r.npz")) == 32
    update = CliRunner().invoke(
        main,
        [
            "distill",
            card,
            "--student",
            "resnet8:0.25",
            "--data",
            str(flat),
            "-o",
            str(tmp_path / "s2.pt"),
            "--epochs",
            "1",
            "--init",
            str(tmp_path / "s.pt"),
            "--replay",
            str(tmp_path / "r.npz"),
            "--select-fraction",
            "1",
            "-q",
        ],
    )
    assert update.exit_code == 0, update.output
    record = json.loads((tmp_path / "s2.json").read_text())
    assert record["replay_size"] == 32 and record["kept_samples"] == 64
    assert ReplayBuffer.load(tmp_path / "r.npz").seen > 32 + 50  # the update's images were offered to the buffer
    again = CliRunner().invoke(
        main,
        [
            "distill",
            card,
            "--student",
            "resnet8:0.25",
            "--data",
            str(flat),
            "-o",
            str(tmp_path / "s2.pt"),
            "--epochs",
            "1",
            "-q",
        ],
    )
    assert again.exit_code != 0 and "--force" in again.output  # an existing student is never overwritten silently

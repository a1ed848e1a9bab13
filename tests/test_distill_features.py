"""Feature pairing by spatial size or by name, and training with hint/attention terms, loss-weight
compensation and a learnable temperature."""

from __future__ import annotations

import pytest
import torch

from edgekd.distill.features import pair_layers
from edgekd.distill.schedules import Schedule
from edgekd.distill.trainer import TrainConfig, train_kd
from edgekd.errors import ConfigError, UnknownNameError
from edgekd.models import build_model
from test_distill import PRE, models

X = torch.zeros(2, 3, 32, 32)


# ----------------------------------------------------------------------------- pairing


def test_auto_pairing_matches_stage_ends_by_spatial_size():
    teacher, student = build_model("resnet20:0.5"), build_model("resnet8:0.25")
    pairs = pair_layers(student, teacher, X, None)
    assert [(s, t) for s, t, _, _ in pairs] == [
        ("layers.0", "layers.2"),
        ("layers.1", "layers.5"),
        ("layers", "layers"),
    ]
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


# ----------------------------------------------------------------------------- training with features


@pytest.mark.parametrize("feature_loss", ["mse", "cosine"])
def test_hint_and_attention_terms_train_and_are_logged(labelled, tmp_path, feature_loss):
    teacher, _ = models()
    student = build_model("resnet8:0.25")
    cfg = TrainConfig(
        epochs=3,
        batch_size=16,
        lr=3e-3,
        optimizer="adamw",
        augment=False,
        hint_weight=1.0,
        attention_weight=1.0,
        feature_loss=feature_loss,
        alpha=Schedule("constant", 1.0),
    )
    r = train_kd(teacher, student, labelled, PRE, cfg, out_dir=tmp_path)
    assert r.feature_pairs == [("layers.0", "layers.2"), ("layers.1", "layers.5"), ("layers", "layers")]
    assert r.history[-1]["loss_hint"] < r.history[0]["loss_hint"]
    assert r.history[-1]["loss_attention"] < r.history[0]["loss_attention"]
    header = (tmp_path / "training.csv").read_text().splitlines()[0]
    assert "loss_hint" in header and "loss_attention" in header and "loss_kd" in header


def test_compensation_and_learnable_temperature(labelled):
    teacher, _ = models()
    student = build_model("resnet8:0.25")
    cfg = TrainConfig(
        epochs=2,
        batch_size=16,
        hint_weight=1.0,
        attention_weight=1.0,
        compensate=True,
        compensate_every=2,
        learn_temperature=True,
        temperature=Schedule("constant", 4.0),
        loss_clip=0.3,
    )
    r = train_kd(teacher, student, labelled, PRE, cfg)
    temps = [h["temperature"] for h in r.history]
    assert all(1.0 < t < 10.0 for t in temps) and temps[-1] != 4.0  # T moved with the student
    # per-term clip: every logged term is at most the clip (each is a mean of clipped values)
    assert all(r.history[-1][k] <= 0.3 + 1e-6 for k in ("loss_kd", "loss_ce", "loss_hint", "loss_attention"))

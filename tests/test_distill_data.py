"""Bad training data: unreadable images skipped with a count or refused, labels needed for alpha < 1, an
empty folder."""

from __future__ import annotations

import shutil

import pytest

from edgekd.distill.schedules import Schedule
from edgekd.distill.trainer import TrainConfig, train_kd
from edgekd.errors import ConfigError, DataError
from test_distill import PRE, models

# ----------------------------------------------------------------------------- bad data


def test_unreadable_images_are_skipped_with_a_count_or_refused(labelled, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(labelled, data)
    (data / "airplane" / "broken.jpg").write_bytes(b"not a jpeg")
    from edgekd.data.folder import scan_image_folder
    from edgekd.distill.data import decode

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

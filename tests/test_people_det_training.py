"""The people-det training scripts (examples/people-det) run end to end on a tiny generated set: the teacher,
its KD student, an interrupted run resumed, and a warm restart (``--init``) whose record keeps the first run's."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from detection_data import make_scenes, write_yolo

sys.path.insert(0, str(ROOT / "examples" / "people-det"))
import train_student  # noqa: E402
import train_teacher  # noqa: E402

TINY = ["--size", "64", "--crop", "64", "--batch-size", "4", "--warmup-steps", "2", "--eval-every", "1"]


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """A one-class ("person") YOLO set: the generated scenes with every object relabelled 0."""
    root = tmp_path_factory.mktemp("people")
    scenes = {"train": make_scenes(8, seed=0), "val": make_scenes(4, seed=1)}
    for split in scenes.values():
        for s in split:
            s.classes = np.zeros_like(s.classes)
    return write_yolo(root, scenes, names=("person",))


@pytest.fixture(scope="module")
def teacher(people, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    cache = out.parent / "cache"
    assert (
        train_teacher.main(
            ["--data", str(people), "--epochs", "1", "--cache-dir", str(cache), "--out", str(out)] + TINY
        )
        == 0
    )
    return out


def _student(people, tmp_path, *extra):
    out = tmp_path / "student.pth"
    argv = ["--data", str(people), "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *TINY, *extra]
    assert train_student.main(argv) == 0
    return out, json.loads(out.with_suffix(".json").read_text())


def test_the_teacher_writes_weights_and_a_record_with_its_valid_map(teacher):
    record = json.loads(teacher.with_suffix(".json").read_text())
    assert record["epochs"] == 1 and set(record["valid"]) >= {"map50", "map50_95", "precision", "recall"}
    assert "--epochs 1" in record["command"] and "CC BY 4.0" in record["data"]
    state = torch.load(teacher, weights_only=True)
    train_teacher.person_detector().load_state_dict(state)


def test_a_kd_student_resumed_after_an_interrupt_lists_both_commands(people, teacher, tmp_path):
    out, first = _student(people, tmp_path, "--teacher", str(teacher), "--epochs", "1")
    assert first["distillation"]["teacher"] == str(teacher) and first["macs"]["student"] < first["macs"]["teacher"]
    out, resumed = _student(people, tmp_path, "--teacher", str(teacher), "--epochs", "2", "--resume")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["command"].count("train_student") == 2 and "--resume" in resumed["command"]


def test_a_warm_restart_numbers_its_epochs_after_the_run_it_starts_from(people, tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir(), second_dir.mkdir()
    first, first_record = _student(people, first_dir, "--labels-only", "--epochs", "1")
    _, record = _student(people, second_dir, "--labels-only", "--epochs", "2", "--init", str(first))
    assert [h["epoch"] for h in record["history"]] == [2, 3] and record["total_epochs"] == 3
    assert record["init"] == {"weights": str(first), "record": first_record}


def test_a_warm_restart_without_the_earlier_record_is_refused_with_what_to_pass(people, tmp_path, capsys):
    weights = tmp_path / "elsewhere.pth"
    torch.save(train_student.build_student().state_dict(), weights)
    with pytest.raises(SystemExit):
        _student(people, tmp_path, "--labels-only", "--epochs", "1", "--init", str(weights))
    assert "elsewhere.json is missing; pass weights this script wrote" in capsys.readouterr().err


def test_a_teacher_warm_restart_starts_from_its_weights_and_keeps_its_record(people, teacher, tmp_path):
    out = tmp_path / "teacher-more.pth"
    argv = ["--data", str(people), "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert train_teacher.main([*argv, *TINY, "--init", str(teacher), "--lr", "0"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert [h["epoch"] for h in record["history"]] == [2] and record["total_epochs"] == 2
    assert record["init"] == {"weights": str(teacher), "record": json.loads(teacher.with_suffix(".json").read_text())}
    first, again = torch.load(teacher, weights_only=True), torch.load(out, weights_only=True)
    convs = [k for k, v in first.items() if v.ndim == 4]
    assert all(torch.equal(first[k], again[k]) for k in convs)  # lr 0: the EMA of unchanged weights

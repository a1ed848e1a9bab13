"""bench/student_benchmark.py: run specs (VARIANT@EPOCHS) and verdicts that compare runs only at equal schedules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import student_benchmark as sb  # noqa: E402

TEACHER = {"params": 272_474, "macs": 40.8e6, "val_top1": 90.0}


def run(variant: str, epochs: int, top1: float, student: str = "resnet8:0.625", sparsity=None) -> dict:
    return {
        "variant": variant,
        "student": student,
        "title": sb.TITLES[variant],
        "params": 30_900,
        "macs": 4.99e6,
        "val_top1": top1,
        "epochs": epochs,
        "weight_sparsity": sparsity,
    }


def test_a_run_spec_names_its_own_epochs():
    assert sb.parse_run("dkd@20") == ("dkd", 20)
    assert sb.parse_run("sparse-2:4@4") == ("sparse-2:4", 4)
    assert sb.parse_run("kd") == ("kd", None)


@pytest.mark.parametrize("spec", ["kdd", "kd@", "kd@0", "kd@twenty", "dkd@-3"])
def test_a_bad_run_spec_is_refused_by_name(spec):
    with pytest.raises(SystemExit, match="epochs after @|unknown variant"):
        sb.parse_run(spec)


def test_a_short_run_gets_its_own_config_and_the_long_one_keeps_epochs(tmp_path):
    args = sb.parse_args(["--data", "d", "--epochs", "200", "--finetune-epochs", "8"])
    assert sb.config_for("dkd", args, tmp_path, 20).epochs == 20
    assert sb.config_for("kd", args, tmp_path).epochs == 200
    assert sb.config_for("sparse-50", args, tmp_path).epochs == 8
    assert sb.config_for("sparse-50", args, tmp_path, 3).epochs == 3


def test_objectives_are_compared_only_with_kd_of_the_same_epochs():
    results = {
        "labels@20": run("labels", 20, 77.0),
        "kd@20": run("kd", 20, 79.0),
        "dkd@20": run("dkd", 20, 78.5),
        "kd": run("kd", 200, 86.0),
    }
    lines = sb.verdicts(results, TEACHER)
    assert "- KD ≥ +1 pt over labels only (20 epochs each): +2.00 pt — **met**" in lines
    assert any("(f) decoupled KD over KD (20 epochs each): -0.50 pt, +1.50 pt over labels only" in x for x in lines)
    budget = [x for x in lines if "≤ 1/8" in x]
    assert len(budget) == 2  # one per KD run, each naming its epochs
    assert "200 epochs" in budget[1] and "95.6 % of the teacher — **met**" in budget[1]
    assert "87.8 % of the teacher — **NOT met**" in budget[0]


def test_a_further_shape_is_compared_with_the_student_at_its_epochs():
    results = {
        "kd@20": run("kd", 20, 79.0),
        "kd": run("kd", 200, 86.0),
        "kd-resnet14-0.375@20": run("kd", 20, 80.2, student="resnet14:0.375"),
    }
    lines = sb.verdicts(results, TEACHER, "resnet8:0.625")
    assert "- `resnet14:0.375` over `resnet8:0.625`, KD, 20 epochs each: +1.20 pt" in lines
    assert sb.run_name("kd", "resnet14:0.375", 20) == "kd-resnet14-0.375@20"
    assert sb.split_epochs("resnet14:0.375@20") == ("resnet14:0.375", 20)


def test_no_comparison_across_schedules_or_students():
    results = {
        "labels@20": run("labels", 20, 77.0),
        "kd": run("kd", 200, 86.0),
        "kd-resnet14-0.375": run("kd", 20, 80.0, student="resnet14:0.375"),
    }
    lines = sb.verdicts(results, TEACHER)
    assert not any("over labels only" in x for x in lines)


def test_sparse_runs_compare_with_the_dense_kd_student():
    results = {"kd": run("kd", 200, 86.0), "sparse-50": run("sparse-50", 8, 85.2, sparsity=0.5)}
    assert any(
        "within 1 pt of the dense KD student: -0.80 pt, weight sparsity 50.0 % — **met**" in x
        for x in sb.verdicts(results, TEACHER)
    )


def test_a_finished_run_of_other_settings_is_not_reused(tmp_path):
    args = sb.parse_args(["--data", "d", "--live-teacher", "--amp", "bf16"])
    (tmp_path / "kd").mkdir()
    recorded = {**run("kd", 20, 79.0), "settings": {**sb.run_settings(args), "live_teacher": False}}
    (tmp_path / "kd" / "result.json").write_text(json.dumps(recorded))
    with pytest.raises(SystemExit, match="live_teacher False here True.*another --workdir"):
        sb.run_variant("kd", args, None, None, tmp_path)
    recorded["settings"]["live_teacher"] = True
    (tmp_path / "kd" / "result.json").write_text(json.dumps(recorded))
    assert sb.run_variant("kd", args, None, None, tmp_path)["val_top1"] == 79.0

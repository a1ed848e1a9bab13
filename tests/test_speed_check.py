"""The speed check: int8 against the same backend's float artifact, interleaved repeats; an int8 artifact
slower than float is flagged in the manifest, the report and the CLI. Latencies are injected: no test
depends on this machine's speed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import edgekd.passes.speed_check as speed_check
from conftest import compile_zoo_int8
from edgekd import api
from edgekd.cli import main
from edgekd.passes.speed_check import SpeedCheckOutput


def fixed_latencies(float_ms, int8_ms):
    """Replaces the timing loop: the runs are still called (the artifact and float sessions work), the
    reported latencies are the given ones."""

    def interleaved(runs, repeats, iterations):
        for run in runs.values():
            run()
        return {"float": list(float_ms), "int8": list(int8_ms)}

    return interleaved


def test_slower_in_every_repeat_is_flagged_and_only_then():
    assert SpeedCheckOutput("x", 2, (1.0, 1.0, 1.0), (1.2, 1.1, 1.3)).int8_slower
    assert not SpeedCheckOutput("x", 2, (1.0, 1.0, 1.0), (1.2, 0.9, 1.3)).int8_slower  # noise: not decided
    s = SpeedCheckOutput("x", 2, (2.0, 2.2, 1.8), (1.0, 1.0, 1.0)).speedup
    assert (s.median, s.low, s.high, s.repeats) == (2.0, 1.8, 2.2, 3)


def test_an_int8_artifact_slower_than_float_is_never_shipped_silently(tmp_path, zoo_models, monkeypatch):
    monkeypatch.setattr(speed_check, "interleaved", fixed_latencies([1.0, 1.1, 1.0], [1.6, 1.7, 1.5]))
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "onnx-cpu")
    model, calib, _ = zoo_models["resnet20"]
    sc = result.manifest["speed_check"]
    assert sc["int8_slower"] and sc["speedup"]["max"] < 1 and sc["runtime"] == "onnxruntime"
    report = (result.output / "report.md").read_text()
    assert "**WARNING: this int8 artifact is slower than the float model on this machine**" in report
    cli = CliRunner().invoke(
        main,
        [
            "compile",
            str(model),
            "-t",
            "onnx-cpu",
            "-o",
            str(tmp_path / "cli"),
            "--input-shape",
            "1,3,32,32",
            "--precision",
            "int8",
            "--calib",
            str(calib),
            "--skip",
            "sensitivity",
            "-q",
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert "slower than the float model" in cli.output


def test_a_faster_int8_artifact_reports_its_speedup_with_spread(tmp_path, zoo_models, monkeypatch):
    monkeypatch.setattr(speed_check, "interleaved", fixed_latencies([2.0, 2.2, 2.1], [1.0, 1.0, 1.0]))
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "onnx-cpu")
    sc = result.manifest["speed_check"]
    assert not sc["int8_slower"] and sc["speedup"] == {"median": 2.1, "min": 2.0, "max": 2.2, "repeats": 3}
    assert "WARNING" not in (result.output / "report.md").read_text()


def test_a_board_target_is_not_timed_on_the_compiling_machine(tmp_path, zoo_models):
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "rpi4")
    assert result.manifest["speed_check"] is None
    assert "speed-check" not in [p["name"] for p in result.manifest["passes"]]


@pytest.mark.parametrize("target,timed", [("onnx-cpu", True), ("rpi4", False), ("ascend310", False)])
def test_speed_is_checked_only_where_this_machine_runs_the_targets_runtime(tmp_path, target, timed):
    """rpi4 is timed on its board; Ascend's local ONNX Runtime only stands in for the NPU."""
    from edgekd.specs import load_target

    config = api.make_config("resnet20", target, tmp_path / "out", precision="int8")
    assert speed_check.SpeedCheckPass.wanted(config, load_target(target), set()) is timed

"""bench/model_coverage.py's resume rule: a recorded cell is reused only if it was made the way a new one
would be (the same weights; for int8, the same default calibration and the target's activation scheme); the
command its report names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import model_coverage as mc  # noqa: E402

ENTRY = {"m": mc.Entry(Path("m.onnx"), (1, 3, 8, 8), True, weights="w")}


def left(results: dict, precision: str = "int8") -> int:
    """Cells still to compile (a deadline already past returns before compiling any)."""
    return mc.run_cells([(precision, "m", "t")], ENTRY, results, None, deadline=0)


@pytest.fixture(autouse=True)
def scheme(monkeypatch):
    monkeypatch.setattr(mc, "activation_scheme", lambda target: "by-sign-skewed-asymmetric")


def test_a_cell_of_the_same_weights_and_calibration_is_reused(monkeypatch):
    monkeypatch.setattr(mc, "calibration_method", lambda: "ema")
    assert left({"m|t|int8": {"weights": "w", "calibration": "ema"}}) == 0
    assert left({"m|t|int8": {"weights": "w"}}) == 0  # recorded before the key: EMA, the default then


def test_a_cell_of_a_scheme_the_target_no_longer_uses_compiles_again(monkeypatch):
    monkeypatch.setattr(mc, "calibration_method", lambda: "ema")
    cell = {"weights": "w", "calibration": "ema"}
    assert left({"m|t|int8": {**cell, "scheme": "by-sign-skewed-asymmetric"}}) == 0
    assert left({"m|t|int8": {**cell, "scheme": "symmetric-by-sign"}}) == 1
    assert left({"m|t|int8": cell}) == 0  # recorded before the key, under the schemes the targets have now


@pytest.mark.parametrize(
    "cell", [{"weights": "old", "calibration": "ema"}, {"weights": "w", "calibration": "minmax"}, None]
)
def test_other_weights_another_calibration_or_no_record_compile_again(monkeypatch, cell):
    monkeypatch.setattr(mc, "calibration_method", lambda: "ema")
    assert left({} if cell is None else {"m|t|int8": cell}) == 1


def test_fp32_cells_ignore_the_calibration(monkeypatch):
    monkeypatch.setattr(mc, "calibration_method", lambda: "mse")
    assert left({"m|t|fp32": {"weights": "w"}}, "fp32") == 0


@pytest.mark.parametrize(
    "given",
    [
        ["--json", "c.json", "--only", "cifar10-teacher", "--markdown", "c.md"],
        ["--json", "c.json", "--only=cifar10-teacher", "--stop-after", "30", "--markdown", "c.md"],
        ["--report-only", "--json", "c.json", "--markdown", "c.md"],
        ["--json", "c.json", "--targets", "openvino-cpu", "--precisions=int8", "--markdown", "c.md"],
    ],
)
def test_the_report_names_the_command_for_the_whole_matrix(given):
    assert mc._report_arguments(given) == ["--json", "c.json", "--markdown", "c.md"]

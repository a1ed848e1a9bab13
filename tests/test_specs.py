"""Target specs: built-in by name, user files by path, clear errors (found from an installed wheel: test_wheel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.errors import ConfigError, InputNotFoundError, UnknownTargetError
from edgekd.pipeline import default_passes
from edgekd.specs import builtin_targets, load_target

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_target_loads_with_its_facts():
    spec = load_target("onnx-cpu")
    assert spec.backend == "onnxruntime" and spec.opset_range[0] <= spec.opset <= spec.opset_range[1]
    # targets share the default pipeline; the torch-stage passes come first and drop out unless
    # --student / --sparsity ask for them
    assert spec.passes is None
    names = default_passes(spec)
    assert names[:3] == ["distill", "sparsify", "export"] and "emit" in names
    assert len(spec.sha256) == 64


def test_tensorrt_targets_add_their_legalization_just_before_emit():
    for name in ("jetson-xavier", "jetson-orin-nano"):
        names = default_passes(load_target(name))
        assert names[names.index("emit") - 1] == "fold-bias-dequantize"
    assert "fold-bias-dequantize" not in default_passes(load_target("onnx-cpu"))


def test_a_spec_may_replace_the_default_pipeline(tmp_path):
    text = (
        (ROOT / "targets" / "onnx-cpu.toml")
        .read_text()
        .replace("[pipeline]\n", '[pipeline]\npasses = ["export", "emit"]\n')
    )
    path = tmp_path / "mine.toml"
    path.write_text(text)
    assert default_passes(load_target(path)) == ["export", "emit"]


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(UnknownTargetError) as e:
        load_target("jetson-nano-9000")
    assert "onnx-cpu" in e.value.hint


def test_user_spec_by_path(tmp_path):
    text = (ROOT / "targets" / "onnx-cpu.toml").read_text().replace('name = "onnx-cpu"', 'name = "my-box"')
    path = tmp_path / "my-box.toml"
    path.write_text(text)
    spec = load_target(str(path))
    assert spec.name == "my-box" and spec.path == path
    assert spec.sha256 != load_target("onnx-cpu").sha256


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.replace('default = "fp32"', 'default = "int4"'), "default precision"),
        (lambda t: t.replace('activations = "asymmetric-uint8"', 'activations = "whatever"'), "activation scheme"),
        (lambda t: t.replace('placement = "qlinear"', 'placement = "everywhere"'), "unknown placement 'everywhere'"),
        (lambda t: t.replace('placement = "qlinear"', "placement = 3"), "placement must be str"),
        (lambda t: t.replace("opset = 17", "opset = 9"), "outside"),
        (lambda t: t.replace('backend = "onnxruntime"', ""), "backend"),
        (lambda t: t + "\n[[[", "TOML"),
    ],
)
def test_broken_specs_are_named_errors(tmp_path, edit, match):
    path = tmp_path / "bad.toml"
    path.write_text(edit((ROOT / "targets" / "onnx-cpu.toml").read_text()))
    with pytest.raises(ConfigError, match=match):
        load_target(str(path))


def test_each_runtime_names_its_placement_and_a_user_spec_may_omit_it(tmp_path):
    expected = {
        "onnx-cpu": "qlinear",
        "openvino-cpu": "quantizable-inputs",
        "rpi4": "outputs",
        "rpi5": "outputs",
        "jetson-xavier": "inputs",
        "jetson-orin-nano": "inputs",
        "ascend310": "weighted-inputs",
        "ascend310p": "weighted-inputs",
    }
    assert {name: load_target(name).placement for name in expected} == expected
    text = (ROOT / "targets" / "onnx-cpu.toml").read_text().replace('placement = "qlinear"\n', "")
    path = tmp_path / "mine.toml"
    path.write_text(text)
    spec = load_target(path)
    assert spec.placement == "outputs"  # the scheme's default
    assert load_target("onnx-cpu").placement_for("symmetric-int8") == "inputs"  # an overridden scheme: its own


def test_missing_spec_file():
    with pytest.raises(InputNotFoundError):
        load_target("no/such/spec.toml")


def test_every_shipped_spec_parses():
    assert builtin_targets()
    for name in builtin_targets():
        assert load_target(name).name == name


def test_targets_cli_lists_and_explains():
    from click.testing import CliRunner

    from edgekd.cli import main

    listing = CliRunner().invoke(main, ["targets"])
    assert listing.exit_code == 0 and "onnx-cpu" in listing.output and "installed" in listing.output
    explained = CliRunner().invoke(main, ["targets", "--explain", "onnx-cpu"])
    assert explained.exit_code == 0, explained.output
    for needle in (
        "backend onnxruntime",
        "default pipeline: distill → sparsify → export → canonicalize → fuse",
        "why this pipeline",
        "why this scheme",
        "U8S8",
        "placement qlinear",
    ):
        assert needle in explained.output
    unknown = CliRunner().invoke(main, ["targets", "--explain", "nope"])
    assert unknown.exit_code == 2 and "valid targets" in unknown.output

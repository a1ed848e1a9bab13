"""The CLI's bad-input contract: a non-zero exit, an ``error:`` line naming the problem, a ``hint:``,
and nothing written (no -o directory, no temporary sibling, an existing -o untouched)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekd import api
from edgekd.cli import main
from edgekd.errors import ConfigError, PreconditionError, UnknownNameError
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.passes.verify import VerifyPass

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is deprecated. Please switch to:DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread", "keep_sigterm"),
]

EDGEKD = Path(sys.executable).parent / "edgekd"
CALIB = Path(__file__).resolve().parents[1] / "calibration" / "cifar10"

NET_SRC = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """Conv-BN-ReLU, a strided conv, and a Linear head that only fits 1x3x32x32 inputs."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
            self.fc = nn.Linear(4 * 16 * 16, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv1(x)))
            x = torch.relu(self.conv2(x))
            return self.fc(x.flatten(1))


''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model files shared by the module: TorchScript, a pickled module, and a static-shape ONNX model."""
    d = tmp_path_factory.mktemp("models")
    pkg = f"edgekd_cli_nets_{uuid.uuid4().hex[:8]}"
    (d / f"{pkg}.py").write_text(NET_SRC)
    sys.path.insert(0, str(d))
    try:
        mod = __import__(pkg)
        torch.manual_seed(0)
        net = mod.Net().eval()
        ts = d / "net.pt"
        torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(str(ts))
        pickled = d / "whole.pt"
        torch.save(net, pickled)
        corrupt_onnx = d / "corrupt.onnx"
        corrupt_onnx.write_bytes(np.random.default_rng(0).bytes(2048))
        data = ts.read_bytes()
        truncated_ts = d / "truncated.pt"
        truncated_ts.write_bytes(data[: len(data) // 2])
        yield {
            "ts": ts,
            "net": net,
            "pickled": pickled,
            "onnx": _static_onnx(d / "static.onnx"),
            "corrupt_onnx": corrupt_onnx,
            "truncated_ts": truncated_ts,
        }
    finally:
        sys.path.remove(str(d))
        sys.modules.pop(pkg, None)


def _static_onnx(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "static",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def compile_cli(model, out: Path, *args: str):
    return CliRunner().invoke(main, ["compile", str(model), "-o", str(out), "--verify-samples", "2", *args])


def leftovers(out: Path) -> list[str]:
    """Temporary or displaced siblings the atomic writer may have left next to OUT."""
    if not out.parent.exists():
        return []
    return sorted(
        p.name
        for p in out.parent.iterdir()
        if p.name.startswith((f".{out.name}.edgekd-tmp-", f".{out.name}.edgekd-old-"))
    )


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def assert_failed_cleanly(result, out: Path, *needles: str, exit_code: int = 2, written: bool = False) -> str:
    text = result.output
    assert result.exit_code == exit_code, text
    # An EdgekdError turned into an exit, not a crash with a traceback.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    lines = text.splitlines()
    assert any(line.startswith("error: ") for line in lines), text  # after any progress lines
    assert any(line.startswith("  hint: ") for line in lines), text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    if not written:
        assert not out.exists(), f"{out} was written"
    assert leftovers(out) == []
    return text


# --- bad inputs ------------------------------------------------------------------------------------


def test_missing_model_file(tmp_path):
    out = tmp_path / "out"
    r = compile_cli(tmp_path / "nope.onnx", out, "-t", "onnx-cpu")
    assert_failed_cleanly(r, out, "nope.onnx", "does not exist", "check the path")


def test_missing_model_file_real_process(tmp_path):
    """The installed console script, as a user runs it: exit status 2, message and hint on stderr."""
    out = tmp_path / "out"
    p = subprocess.run(
        [str(EDGEKD), "compile", str(tmp_path / "nope.pt"), "-t", "onnx-cpu", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.startswith("error: model file") and "does not exist" in p.stderr
    assert "\n  hint: " in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and leftovers(out) == []


def test_unknown_target(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["onnx"], out, "-t", "onnx-gpu")
    assert_failed_cleanly(r, out, "unknown target 'onnx-gpu'", "valid targets:", "onnx-cpu")


def test_missing_target_spec_file(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["onnx"], out, "-t", str(tmp_path / "mine.toml"))
    assert_failed_cleanly(r, out, "target spec file", "does not exist")


def test_corrupt_onnx(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["corrupt_onnx"], out, "-t", "onnx-cpu")
    assert_failed_cleanly(r, out, "is not a valid ONNX model", "re-export the model")


def test_corrupt_torchscript(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["truncated_ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32")
    assert_failed_cleanly(r, out, "truncated.pt", "re-export the model")


def test_pickle_refused_without_allow_pickle(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["pickled"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32")
    assert_failed_cleanly(r, out, "refusing to unpickle", "--allow-pickle")


def test_pickle_compiles_with_allow_pickle(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["pickled"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32", "--allow-pickle", "-q")
    assert r.exit_code == 0, r.output
    assert (out / "model.onnx").is_file() and leftovers(out) == []


def test_torch_input_shape_mismatch(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,64,64")
    assert_failed_cleanly(r, out, "does not accept input shape (1, 3, 64, 64)", "--input-shape")


def test_torch_input_shape_missing(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu")
    assert_failed_cleanly(r, out, "needs its input shape", "--input-shape 1,3,H,W")


def test_onnx_input_shape_mismatch(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["onnx"], out, "-t", "onnx-cpu", "--input-shape", "1,3,16,16")
    assert_failed_cleanly(r, out, "(1, 3, 16, 16) does not match", "(1, 3, 32, 32)", "--input-shape")


def test_input_shape_not_4d(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "3,32,32")
    assert_failed_cleanly(r, out, "is not 4-D", "N,C,H,W")


def test_output_exists_without_force(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.bin").write_bytes(b"\x00precious\xff")
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("mine")
    before = snapshot(out)
    r = compile_cli(models["onnx"], out, "-t", "onnx-cpu")
    assert_failed_cleanly(r, out, "already exists", "--force", written=True)
    assert snapshot(out) == before


def test_output_is_a_file_even_with_force(models, tmp_path):
    out = tmp_path / "out"
    out.write_bytes(b"not a directory")
    r = compile_cli(models["onnx"], out, "-t", "onnx-cpu", "--force")
    assert_failed_cleanly(r, out, "is a file", written=True)
    assert out.read_bytes() == b"not a directory"


def test_force_replaces_output(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"edgekd_version": "0.1.0"}\n')
    (out / "stale.txt").write_text("old artifact")
    r = compile_cli(models["onnx"], out, "-t", "onnx-cpu", "--force", "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "report.md"]
    assert leftovers(out) == []


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("nosuch.module:fn", "cannot import 'nosuch.module'"),
        ("edgekd.models:nosuch", "no callable 'nosuch'"),
        ("notazooname", "neither a file, a zoo model nor package.module:factory"),
        ("edgekd.models:build_model", "calling factory"),  # needs a name argument: an error, not a TypeError traceback
    ],
)
def test_factory_that_does_not_resolve(tmp_path, spec, needle):
    out = tmp_path / "out"
    r = compile_cli(spec, out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32")
    assert_failed_cleanly(r, out, needle)


def test_weights_that_do_not_fit(models, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(models["net"].state_dict(), weights)
    out = tmp_path / "out"
    r = compile_cli("resnet20", out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32", "--weights", str(weights))
    assert_failed_cleanly(r, out, "does not fit 'resnet20'", "num_classes")


def test_state_dict_as_model(models, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(models["net"].state_dict(), weights)
    out = tmp_path / "out"
    r = compile_cli(weights, out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32")
    assert_failed_cleanly(r, out, "holds a state_dict", "--weights")


# Pipeline rules, one table: each case through the API (its error class) and through the CLI (message,
# hint, exit code, nothing written).
PIPELINE_RULES = [
    pytest.param(
        {"passes": ("fuse", "fold", "emit")},
        UnknownNameError,
        ("unknown pass 'fold'", "export, fold-bias-dequantize, fuse"),
        id="unknown-pass",
    ),  # hint lists them
    pytest.param({"skip": ("verfy",)}, UnknownNameError, ("unknown pass 'verfy'",), id="unknown-skipped-pass"),
    pytest.param(
        {"precision": "int8", "skip": ("quantize",), "calib": CALIB},
        ConfigError,
        ("int8", "no quantization pass"),
        id="int8-without-quantize",
    ),
    pytest.param(
        {"precision": "int8"},
        ConfigError,
        ("int8 needs calibration data", "--calib"),
        id="int8-without-calibration-data",
    ),
    pytest.param(
        {"precision": "fp16"}, ConfigError, ("does not support precision fp16", "fp32"), id="precision-the-target-lacks"
    ),
    pytest.param(
        {"passes": ("fuse", "emit")},
        PreconditionError,
        ("requires onnx-model", "add export before it"),
        id="pass-missing-its-requirement",
    ),
]


def as_flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, tuple) else str(value)]
    return flags


@pytest.mark.parametrize("options, error, needles", PIPELINE_RULES)
def test_pipeline_rules_through_api_and_cli(models, tmp_path, options, error, needles):
    out = tmp_path / "out"
    with pytest.raises(error) as e:
        api.compile(api.make_config(str(models["ts"]), "onnx-cpu", out, input_shape=(1, 3, 32, 32), **options))
    assert needles[0] in e.value.message and not out.exists()
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32", *as_flags(options))
    assert_failed_cleanly(r, out, *needles)


@pytest.mark.parametrize(
    "target, scheme",
    [("rpi4", "asymmetric-uint8"), ("jetson-xavier", "asymmetric-int8"), ("ascend310", "symmetric-by-sign")],
)
def test_an_activation_scheme_the_runtime_cannot_compute_is_refused_before_any_work(models, tmp_path, target, scheme):
    out = tmp_path / "out"
    options = {"precision": "int8", "calib": CALIB, "activation_scheme": scheme}
    with pytest.raises(ConfigError) as e:
        api.compile(api.make_config(str(models["ts"]), target, out, input_shape=(1, 3, 32, 32), **options))
    assert f"--activation-scheme {scheme}: {target}" in e.value.message and not out.exists()
    r = compile_cli(models["ts"], out, "-t", target, "--input-shape", "1,3,32,32", *as_flags(options))
    assert_failed_cleanly(r, out, f"--activation-scheme {scheme}", "drop --activation-scheme")


# --- failures during the compile -------------------------------------------------------------------


def test_failure_inside_a_pass_names_it(models, tmp_path, monkeypatch):
    def boom(self, state):
        (state.workdir / "model.onnx").write_bytes(b"half-written")  # a partial artifact that must vanish
        raise RuntimeError("verifier exploded")

    monkeypatch.setattr(VerifyPass, "run", boom)
    out = tmp_path / "deep" / "er" / "out"  # parents the writer creates go again too
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32")
    text = assert_failed_cleanly(
        r,
        out,
        "pass 'verify' failed",
        "passes that ran before it: export, canonicalize, fuse, check-support, emit",
        "RuntimeError: verifier exploded",
        "EDGEKD_DUMP_IR",
    )
    assert "Traceback" not in text
    assert not (tmp_path / "deep").exists()


def test_keyboard_interrupt_inside_a_pass(models, tmp_path, monkeypatch):
    def interrupt(self, state):
        (state.workdir / "partial.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(FuseConvBnReluPass, "run", interrupt)
    out = tmp_path / "out"
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32")
    assert r.exit_code == 130, r.output
    assert "interrupted; nothing was written" in r.output
    assert not out.exists() and leftovers(out) == []

    # With --force and an existing OUT: OUT stays exactly as it was.
    out.mkdir()
    (out / "manifest.json").write_text('{"edgekd_version": "0.1.0", "old": true}\n')
    (out / "model.onnx").write_bytes(b"old model")
    before = snapshot(out)
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32", "--force")
    assert r.exit_code == 130, r.output
    assert snapshot(out) == before and leftovers(out) == []


def test_output_created_by_someone_else_during_the_compile(models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    verify = VerifyPass.run

    def verify_then_race(self, state):
        result = verify(self, state)
        out.mkdir()
        (out / "theirs.txt").write_text("another process wrote this")
        return result

    monkeypatch.setattr(VerifyPass, "run", verify_then_race)
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32", "-q")
    assert_failed_cleanly(r, out, "already exists", written=True)
    assert snapshot(out) == {"theirs.txt": b"another process wrote this"}


def test_successful_compile_runs_in_plain_onnxruntime(models, tmp_path):
    out = tmp_path / "out"
    r = compile_cli(models["ts"], out, "-t", "onnx-cpu", "--input-shape", "1,3,32,32")
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output and "fidelity vs PyTorch model" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "report.md"]
    assert leftovers(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == [
        "export",
        "canonicalize",
        "fuse",
        "check-support",
        "emit",
        "verify",
    ]
    assert manifest["artifact"]["model_file"] == "model.onnx"

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.shape == [1, 3, 32, 32]
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (got,) = sess.run(None, {inp.name: x})
    with torch.no_grad():
        want = models["net"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

"""The bad-input suite: one table of what users get wrong, family by family, through the real CLI.

Every case asserts the contract of the README: a named error (an ``error:`` line and a ``hint:``),
the exit code, no traceback, and that nothing in the user's folder changed — no artifact, no
temporary sibling, no file touched. Cases that need a filesystem of their own (a full disk, a
read-only mount) mount a small tmpfs and skip, saying why, where mounting is not allowed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CALIB
from edgekd.cli import main
from test_cli_errors import _static_onnx

pytestmark = pytest.mark.usefixtures("one_torch_thread", "keep_sigterm")

EDGEKD = Path(sys.executable).parent / "edgekd"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """``argv`` with {placeholders} filled from the workspace; ``setup`` prepares files in it first."""

    argv: list[str]
    needles: tuple[str, ...]  # in the output (message and hint)
    exit_code: int = 2
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


def write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)

    return make


def steps(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        for fn in fns:
            fn(ws)

    return make


def spec_with(old: str, new: str) -> Callable[[Path], None]:
    text = (ROOT / "targets" / "onnx-cpu.toml").read_text()
    assert old in text, old
    return write("spec.toml", text.replace(old, new, 1))


def npy(rel: str, array: np.ndarray) -> Callable[[Path], None]:
    return lambda ws: np.save(ws / rel, array)


COMPILE = ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/out", "--verify-samples", "2"]
INT8 = [*COMPILE, "--precision", "int8", "--calib", "{calib}"]

CASES: dict[str, Case] = {
    # models
    "model-missing": Case(["compile", "{ws}/nope.onnx", "-t", "onnx-cpu", "-o", "{ws}/out"], ("does not exist",)),
    "model-empty-file": Case(
        ["compile", "{ws}/empty.onnx", "-t", "onnx-cpu", "-o", "{ws}/out"],
        ("not a valid ONNX model",),
        setup=write("empty.onnx", b""),
    ),
    "model-is-a-folder": Case(
        ["compile", "{ws}/folder.onnx", "-t", "onnx-cpu", "-o", "{ws}/out"],
        ("folder",),
        setup=lambda ws: (ws / "folder.onnx").mkdir(),
    ),
    "model-unknown-zoo-name": Case(["compile", "resnet2000", "-t", "onnx-cpu", "-o", "{ws}/out"], ("resnet2000",)),
    # shapes
    "shape-3d": Case([*COMPILE, "--input-shape", "3,32,32"], ("3, 32, 32", "N,C,H,W")),
    "shape-zero": Case([*COMPILE, "--input-shape", "1,3,0,32"], ("positive",)),
    "shape-negative": Case([*COMPILE, "--input-shape", "1,3,-32,32"], ("positive",)),
    "shape-text": Case([*COMPILE, "--input-shape", "1,3,a,b"], ("comma-separated integers",)),
    "shape-vs-fixed-onnx-dims": Case([*COMPILE, "--input-shape", "1,3,64,64"], ("does not match", "32")),
    "layout-nhwc-with-nchw-shape": Case(
        ["compile", "resnet20", "-t", "onnx-cpu", "-o", "{ws}/out", "--input-shape", "1,3,32,32", "--layout", "NHWC"],
        ("32 channels", "--layout NCHW"),
    ),
    "seven-channels": Case(
        ["compile", "resnet20", "-t", "onnx-cpu", "-o", "{ws}/out", "--input-shape", "1,7,32,32"], ("7 channels",)
    ),
    # preprocessing
    "mean-nan": Case([*COMPILE, "--mean", "nan,0.5,0.5"], ("NaN or Inf", "mean")),
    "std-inf": Case([*COMPILE, "--std", "inf,1,1"], ("NaN or Inf", "std")),
    "std-zero": Case([*COMPILE, "--std", "0,1,1"], ("positive",)),
    "std-negative": Case([*COMPILE, "--std", "-1,1,1"], ("positive",)),
    "mean-two-values": Case([*COMPILE, "--mean", "0.5,0.5"], ("take 3 value(s)",)),
    "scale-zero": Case([*COMPILE, "--scale", "0"], ("positive",)),
    # calibration and sample data
    "calib-missing": Case(
        ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/out", "--precision", "int8", "--calib", "{ws}/nowhere"],
        ("--calib", "does not exist"),
    ),
    "calib-empty-folder": Case(
        ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/out", "--precision", "int8", "--calib", "{ws}/empty"],
        ("no images",),
        setup=lambda ws: (ws / "empty").mkdir(),
    ),
    "calib-no-images": Case(
        ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/out", "--precision", "int8", "--calib", "{ws}/docs"],
        ("no images",),
        setup=write("docs/readme.txt", "not an image"),
    ),
    "calib-npy-wrong-shape": Case(
        ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/out", "--precision", "int8", "--calib", "{ws}/c.npy"],
        ("shape",),
        setup=npy("c.npy", np.zeros((4, 3, 16, 16), np.float32)),
    ),
    "calib-npy-objects": Case(
        ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/out", "--precision", "int8", "--calib", "{ws}/o.npy"],
        ("object",),
        setup=lambda ws: np.save(ws / "o.npy", np.array([{"a": 1}], dtype=object)),
    ),
    "calib-samples-zero": Case([*INT8, "--calib-samples", "0"], ("--calib-samples", ">= 1")),
    "calib-samples-negative": Case([*INT8, "--calib-samples", "-5"], ("--calib-samples", ">= 1")),
    "eval-missing": Case([*COMPILE, "--eval", "{ws}/noeval"], ("--eval", "does not exist")),
    # numbers
    "verify-samples-zero": Case([*COMPILE, "--verify-samples", "0"], ("--verify-samples",)),
    "eval-samples-zero": Case([*COMPILE, "--eval-samples", "0"], ("--eval-samples",)),
    "max-drop-negative": Case([*INT8, "--max-drop", "-1"], ("--max-drop",)),
    "ema-constant-zero": Case([*INT8, "--ema-constant", "0"], ("--ema-constant",)),
    "percentile-200": Case([*INT8, "--calib-method", "percentile", "--percentile", "200"], ("--percentile",)),
    "sparsity-above-one": Case([*COMPILE, "--sparsity", "1.5"], ("--sparsity",)),
    "keep-float-on-fp32": Case([*COMPILE, "--keep-float", "conv1"], ("applies to int8",)),
    "max-drop-on-fp32": Case(
        [*COMPILE, "--eval", "{calib}", "--max-drop", "1"], ("--max-drop returns int8 layers", "--precision int8")
    ),
    "keep-float-unknown-layer": Case(
        [*INT8, "--keep-float", "no_such_conv", "--skip", "sensitivity"], ("no_such_conv", "layers with weights")
    ),
    "student-without-data": Case(
        [
            "compile",
            "resnet20",
            "-t",
            "onnx-cpu",
            "-o",
            "{ws}/out",
            "--input-shape",
            "1,3,32,32",
            "--student",
            "resnet8:0.25",
        ],
        ("--data",),
    ),
    "student-zero-epochs": Case(
        [
            "compile",
            "resnet20",
            "-t",
            "onnx-cpu",
            "-o",
            "{ws}/out",
            "--input-shape",
            "1,3,32,32",
            "--student",
            "resnet8:0.25",
            "--data",
            "{calib}",
            "--epochs",
            "0",
        ],
        ("untrained",),
    ),
    "unknown-training-option-value": Case(
        [
            "compile",
            "resnet20",
            "-t",
            "onnx-cpu",
            "-o",
            "{ws}/out",
            "--input-shape",
            "1,3,32,32",
            "--student",
            "resnet8:0.25",
            "--data",
            "{calib}",
            "--temperature",
            "6:2:1",
        ],
        ("temperature",),
    ),
    # labels
    "labels-wrong-count": Case(
        [*COMPILE, "--labels", "{ws}/labels.txt"],
        ("3 names", "4 classes"),
        setup=write("labels.txt", "cat\ndog\nbird\n"),
    ),
    # outputs
    "output-is-a-file": Case(
        ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/file.txt", "--force"],
        ("is a file",),
        setup=write("file.txt", "mine"),
    ),
    "output-not-an-artifact": Case(
        ["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/docs", "--force"],
        ("not an edgekd artifact",),
        setup=write("docs/thesis.tex", "years"),
    ),
    "output-holds-the-model": Case(
        ["compile", "{ws}/art/m.onnx", "-t", "onnx-cpu", "-o", "{ws}/art", "--force"],
        ("holds the input",),
        setup=steps(
            write("art/manifest.json", '{"edgekd_version": "0"}'), lambda ws: _static_onnx(ws / "art" / "m.onnx")
        ),
    ),
    "output-name-too-long": Case(["compile", "{model}", "-t", "onnx-cpu", "-o", "{ws}/" + "x" * 300], ("too long",)),
    "dump-ir-is-a-file": Case(
        COMPILE, ("EDGEKD_DUMP_IR", "folder"), setup=write("dump.txt", "x"), env={"EDGEKD_DUMP_IR": "{ws}/dump.txt"}
    ),
    # target specs
    "spec-is-a-folder": Case(
        ["compile", "{model}", "-t", "{ws}/specs/", "-o", "{ws}/out"],
        ("folder",),
        setup=lambda ws: (ws / "specs").mkdir(),
    ),
    "spec-not-toml": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("not valid TOML",),
        setup=write("spec.toml", "this is = = not toml"),
    ),
    "spec-unknown-key": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("unknown key", "colour"),
        setup=spec_with("backend = ", 'colour = "red"\nbackend = '),
    ),
    "spec-wrong-type": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("opset must be int",),
        setup=spec_with("opset = 17", 'opset = "17"'),
    ),
    "spec-one-element-range": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("opset_range must hold 2 values",),
        setup=spec_with("opset_range = [13, 21]", "opset_range = [13]"),
    ),
    "spec-empty-range": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("is empty",),
        setup=spec_with("opset_range = [13, 21]", "opset_range = [21, 13]"),
    ),
    "spec-default-not-supported": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("default precision",),
        setup=spec_with('default = "fp32"', 'default = "fp16"'),
    ),
    "spec-missing-backend": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("required key 'backend'",),
        setup=spec_with('backend = "onnxruntime"\n', ""),
    ),
    "spec-unknown-backend": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("unknown backend",),
        setup=spec_with('backend = "onnxruntime"', 'backend = "cuda"'),
    ),
    "spec-bench-threads-zero": Case(
        ["compile", "{model}", "-t", "{ws}/spec.toml", "-o", "{ws}/out"],
        ("threads must be at least 1",),
        setup=spec_with("threads = 2", "threads = 0"),
    ),
    # inventories
    "inventory-port-out-of-range": Case(
        ["devices", "--inventory", "{ws}/inv.toml"],
        ("port must lie in",),
        setup=write("inv.toml", "[devices.pi]\nhost = 'pi'\nport = 70000\n"),
    ),
    "inventory-not-toml": Case(
        ["devices", "--inventory", "{ws}/inv.toml"], ("not valid TOML",), setup=write("inv.toml", "[devices.pi\nhost")
    ),
    "inventory-for-check": Case(
        ["devices", "check", "pi", "--inventory", "{ws}/inv.toml"],
        ("port must be int",),
        setup=write("inv.toml", "[devices.pi]\nhost = 'pi'\nport = 'ssh'\n"),
    ),
    "inventory-missing-key-file": Case(
        ["devices", "check", "pi", "--inventory", "{ws}/inv.toml"],
        ("SSH key", "does not exist"),
        setup=write("inv.toml", "[devices.pi]\nhost = '127.0.0.1'\nport = 9\nkey = '/nonexistent/id_ed25519'\n"),
    ),
    # artifacts handed to bench
    "bench-not-an-artifact": Case(
        ["bench", "{ws}/docs", "-n", "5"], ("not an edgekd artifact",), setup=write("docs/a.txt", "x")
    ),
    "bench-manifest-not-json": Case(
        ["bench", "{ws}/art", "-n", "5"], ("not valid JSON",), setup=write("art/manifest.json", "{ truncated")
    ),
    "bench-manifest-incomplete": Case(
        ["bench", "{ws}/art", "-n", "5"],
        ("incomplete", "artifact.model_file"),
        setup=write("art/manifest.json", json.dumps({"artifact": {}, "files": []})),
    ),
    "bench-file-is-not-a-folder": Case(
        ["bench", "{ws}/a.txt", "-n", "5"], ("not an artifact directory",), setup=write("a.txt", "x")
    ),
    "bench-iterations-zero": Case(["bench", "{art}", "-n", "0"], ("--iterations",)),
    "bench-threads-zero": Case(["bench", "{art}", "--threads", "0"], ("--threads",)),
    "bench-time-budget-negative": Case(["bench", "{art}", "--time-budget", "-1"], ("--time-budget",)),
    "bench-warmup-negative": Case(["bench", "{art}", "--warmup", "-1"], ("--warmup",)),
    # distillation
    "distill-zero-epochs": Case(
        [
            "distill",
            "resnet20",
            "--student",
            "resnet8:0.25",
            "--data",
            "{calib}",
            "-o",
            "{ws}/s.pt",
            "--input-shape",
            "1,3,32,32",
            "--epochs",
            "0",
        ],
        ("--epochs",),
    ),
    "distill-output-is-json": Case(
        [
            "distill",
            "resnet20",
            "--student",
            "resnet8:0.25",
            "--data",
            "{calib}",
            "-o",
            "{ws}/s.json",
            "--input-shape",
            "1,3,32,32",
        ],
        (".json",),
    ),
    "distill-classes-do-not-match": Case(
        [
            "distill",
            "resnet20",
            "--student",
            "resnet8:0.25",
            "--data",
            "{ws}/three",
            "-o",
            "{ws}/s.pt",
            "--input-shape",
            "1,3,32,32",
            "--epochs",
            "1",
        ],
        ("11 class folders", "10 classes"),
        setup=lambda ws: [shutil.copytree(CALIB, ws / "three"), shutil.copytree(CALIB / "cat", ws / "three" / "zebra")],
    ),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Inputs every case may name: a static ONNX model (4 outputs) and a good artifact to bench."""
    d = tmp_path_factory.mktemp("shared")
    model = _static_onnx(d / "static.onnx")
    art = d / "art"
    r = CliRunner().invoke(main, ["compile", str(model), "-t", "onnx-cpu", "-o", str(art), "-q"])
    assert r.exit_code == 0, r.output
    return {"model": model, "art": art}


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its mode and (for files) bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def fill(value: str, ws: Path, shared: dict[str, Path]) -> str:
    return value.format(ws=ws, model=shared["model"], art=shared["art"], calib=CALIB)


def assert_clean_failure(output: str, code: int, case: Case) -> None:
    assert code == case.exit_code, output
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert any(line.startswith("error: ") for line in lines), output
    assert any(line.startswith("  hint: ") for line in lines), output
    for needle in case.needles:
        assert needle in output, f"{needle!r} not in {output!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, shared, monkeypatch):
    case = CASES[name]
    ws = tmp_path / "ws"
    ws.mkdir()
    if case.setup:
        case.setup(ws)
    for k, v in case.env.items():
        monkeypatch.setenv(k, fill(v, ws, shared))
    before, art_before = snapshot(ws), snapshot(shared["art"])
    r = CliRunner().invoke(main, [fill(a, ws, shared) for a in case.argv])
    assert_clean_failure(r.output, r.exit_code, case)
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert snapshot(ws) == before, "the failed command changed the user's folder"
    assert snapshot(shared["art"]) == art_before


def test_the_table_covers_every_family():
    families = {name.split("-")[0] for name in CASES}
    assert {
        "model",
        "shape",
        "mean",
        "std",
        "calib",
        "output",
        "spec",
        "inventory",
        "bench",
        "distill",
        "labels",
    } <= families
    assert len(CASES) >= 60


# --- signals: the real process, stopped mid-compile ------------------------------------------------


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_compile_says_so_and_leaves_nothing(tmp_path, sig, code, word):
    ws = tmp_path / "ws"
    ws.mkdir()
    out = ws / "out"
    proc = subprocess.Popen(
        [
            str(EDGEKD),
            "compile",
            "mobilenetv2-cifar",
            "--input-shape",
            "1,3,32,32",
            "-t",
            "onnx-cpu",
            "-o",
            str(out),
            "--precision",
            "int8",
            "--calib",
            str(CALIB),
        ],
        cwd=ws,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background inherits SIGINT ignored, and Python keeps it so in the child
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    lines = []
    while time.time() < deadline:  # wait until the pipeline runs: the temporary sibling exists
        line = proc.stderr.readline()
        lines.append(line)
        if "calibrate ..." in line or not line:
            break
    proc.send_signal(sig)
    rest = proc.communicate(timeout=60)[1]
    text = "".join(lines) + rest
    assert proc.returncode == code, text
    assert f"{word}" in text and "nothing was written" in text and "Traceback" not in text
    assert sorted(p.name for p in ws.iterdir()) == []  # no artifact, no temporary sibling


# --- filesystems of their own: full, read-only -------------------------------------------------------


def _mount(kind: str, target: Path, *opts: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", kind, *(["-o", ",".join(opts)] if opts else []), kind, str(target)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root); this machine refused it")


@pytest.fixture()
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _mount("tmpfs", disk, "size=256k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture()
def read_only(tmp_path):
    ro = tmp_path / "ro"
    _mount("tmpfs", ro, "size=1m")
    yield ro
    subprocess.run(["umount", "-l", str(ro)], check=False)


def test_full_disk_is_a_named_error_and_leaves_nothing(small_disk):
    before = snapshot(small_disk)
    r = CliRunner().invoke(
        main,
        ["compile", "resnet20", "--input-shape", "1,3,32,32", "-t", "onnx-cpu", "-o", str(small_disk / "out"), "-q"],
    )
    assert_clean_failure(r.output, r.exit_code, Case([], ("No space left on device", "free space")))
    assert snapshot(small_disk) == before


def test_read_only_output_is_a_named_error(read_only):
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    r = CliRunner().invoke(
        main, ["compile", "resnet20", "--input-shape", "1,3,32,32", "-t", "onnx-cpu", "-o", str(read_only / "out")]
    )
    assert_clean_failure(r.output, r.exit_code, Case([], ("Read-only file system", "read-only")))


def test_benchmarking_a_read_only_artifact_fails_before_the_run(read_only, shared):
    shutil.copytree(shared["art"], read_only / "art")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    t = time.perf_counter()
    r = CliRunner().invoke(main, ["bench", str(read_only / "art"), "-n", "100000", "-q"])
    assert_clean_failure(r.output, r.exit_code, Case([], ("cannot store results", "writable")))
    assert time.perf_counter() - t < 30  # refused up front, not after 100,000 runs

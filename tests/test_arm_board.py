"""The whole device flow on an ARM board: `devices check` → `bench` → the artifact's outputs on the board
equal the host's, on the emulated Raspberry Pi 4 of tools/arm-board.sh (aarch64 Debian bookworm,
Python 3.11, LiteRT under qemu-user) reached over SSH like a real one. Emulated timings mean nothing;
what is checked is the flow and that the board computes exactly what the host computes.

Skips, saying why, where the board is genuinely absent (not built, not root, no binfmt_misc)."""

from __future__ import annotations

import json
import shutil
import signal
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import arm_board
from conftest import CALIB
from edgekd import api
from edgekd.backends import backend_class
from edgekd.bench import probe as probe_script
from edgekd.bench.device import LocalDevice
from edgekd.bench.outputs import device_outputs
from edgekd.bench.session import BenchSettings
from edgekd.cli import main
from edgekd.data.folder import scan_image_folder
from edgekd.data.preprocess import Preprocess, load_image
from edgekd.errors import BenchmarkError, ToolchainMissingError
from edgekd.passes.calibrate import CalibrationWarning

FAST = BenchSettings(threads=1, warmup=0, iterations=2)
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.fixture(scope="module")
def arm():
    reason = arm_board.absent_reason()
    if reason:
        pytest.skip(reason)
    try:
        board = arm_board.start()
    except RuntimeError as e:
        if arm_board.binfmt_refused():
            pytest.skip(f"aarch64 binaries cannot run here (no qemu-aarch64 binfmt_misc handler): {e}")
        raise
    yield board
    arm_board.stop(board)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No user ssh config or edgekd state (the remote-dir ledger) leaks into the tests, and none out."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)


@pytest.fixture
def inv(tmp_path, arm):
    return arm.inventory(tmp_path / "devices.toml")


def cli(*args: str):
    before = signal.getsignal(signal.SIGTERM)  # the CLI installs its SIGTERM handler in-process
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="module")
def rpi4(tmp_path_factory, one_torch_thread):
    """resnet20 compiled for the Pi 4, full int8, calibrated on the CIFAR-10 images, through the CLI."""
    out = tmp_path_factory.mktemp("rpi4") / "resnet20-rpi4"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # 64 calibration images: enough for this check
        r = cli(
            "compile",
            "resnet20",
            "-t",
            "rpi4",
            "-o",
            str(out),
            "--precision",
            "int8",
            "--input-shape",
            "1,3,32,32",
            "--mean",
            ",".join(map(str, MEAN)),
            "--std",
            ",".join(map(str, STD)),
            "--calib",
            str(CALIB),
            "--calib-samples",
            "64",
            "--skip",
            "sensitivity",
            "--verify-samples",
            "8",
            "-q",
        )
    assert r.exit_code == 0, r.output
    return out


def run_dirs_left(arm) -> list:
    return sorted(arm.host_path("/tmp/edgekd").glob("edgekd-run-*"))


# --- on the board -------------------------------------------------------------------------------


def test_check_reports_an_aarch64_board_with_python_311_and_litert(inv):
    r = cli("devices", "--inventory", str(inv), "check", "board", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["machine"] == "aarch64" and info["python"].startswith("3.11.")
    assert info["runtimes"]["litert"] and info["runtimes"]["numpy"]
    assert info["runtimes"]["onnxruntime"] is None and info["runtimes"]["openvino"] is None
    assert info["cores"] == 4 and info["memory_mb"] > 0 and "bookworm" in info["os"]
    text = cli("devices", "check", "board", "--inventory", str(inv))
    assert text.exit_code == 0 and "aarch64" in text.output and "None" not in text.output, text.output


def test_bench_runs_the_tflite_artifact_on_the_board(inv, rpi4, arm):
    r = cli("bench", str(rpi4), "--device", "board", "--inventory", str(inv), "-n", "3", "--warmup", "1", "-q")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[2].split()[:4] == ["board", "litert", "4", "3"]  # the rpi4 spec's 4 threads
    stored = [json.loads(p.read_text()) for p in (rpi4 / "results").glob("*-board.json")]
    assert len(stored) == 1 and stored[0]["host"]["machine"] == "aarch64"  # timed there, not here
    assert stored[0]["runtime"]["name"] == "litert" and stored[0]["latency"]["iterations"] == 3
    assert run_dirs_left(arm) == []


def board_samples(model_path) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs as the int8 NHWC flatbuffer takes them: 8 random over the whole int8 range, and
    8 CIFAR-10 images quantized as the TFLite backend's host session quantizes them (with the images
    as float NCHW, for that session)."""
    from edgekd.backends.tflite.verify import interpreter

    inp = interpreter(model_path, delegates=False).get_input_details()[0]
    assert inp["dtype"] == np.int8 and list(inp["shape"]) == [1, 32, 32, 3]
    scale, zero_point = inp["quantization"]
    pre = Preprocess(size=(32, 32), mean=MEAN, std=STD)
    images = np.stack([load_image(f, pre) for f in scan_image_folder(CALIB).files[::25][:8]])[:, None]
    quantized = np.clip(np.rint(images.transpose(0, 1, 3, 4, 2) / np.float32(scale)) + zero_point, -128, 127)
    rng = np.random.default_rng(0)
    noise = rng.integers(-128, 128, size=(8, 1, 32, 32, 3), dtype=np.int8)
    return np.concatenate([noise, quantized.astype(np.int8)]), images


def test_outputs_on_the_board_equal_the_hosts_bit_for_bit(inv, rpi4):
    samples, images = board_samples(rpi4 / "model.tflite")
    board = device_outputs(rpi4, api.resolve_device("board", inv), samples)
    host = device_outputs(rpi4, LocalDevice(), samples)
    assert len(board) == len(host) == 1
    assert board[0].dtype == np.int8 and board[0].shape == (16, 1, 10)
    assert len(np.unique(board[0])) > 40  # real logits, not a constant the comparison would wave through
    assert np.array_equal(board[0], host[0]), f"{np.count_nonzero(board[0] != host[0])} of {board[0].size} differ"
    # ...and equal to what the compiler's verify pass ran on the host (its LiteRT session, dequantized)
    from edgekd.backends.tflite.verify import interpreter

    scale, zero_point = interpreter(rpi4 / "model.tflite", delegates=False).get_output_details()[0]["quantization"]
    verified = backend_class("tflite")().session(rpi4 / "model.tflite")(images[:, 0])[0]
    on_board = (board[0][8:, 0].astype(np.int32) - zero_point).astype(np.float32) * np.float32(scale)
    assert np.array_equal(on_board, verified)


@pytest.fixture
def onnx_art(tmp_path, resnet_artifact):
    return shutil.copytree(resnet_artifact, tmp_path / "art")


def test_an_onnx_artifact_on_a_board_without_onnxruntime_says_what_to_install(inv, onnx_art, arm):
    with pytest.raises(ToolchainMissingError) as e:
        api.bench(onnx_art, "board", FAST, inventory=inv)
    assert "onnxruntime does not import on board" in e.value.message and "pip install onnxruntime" in e.value.hint
    r = cli("bench", str(onnx_art), "--device", "board", "--inventory", str(inv), "-n", "2", "-q")
    assert r.exit_code == ToolchainMissingError.exit_code and "pip install onnxruntime" in r.output
    assert "Traceback" not in r.output
    with pytest.raises(ToolchainMissingError):
        device_outputs(onnx_art, api.resolve_device("board", inv), np.zeros((1, 1, 3, 32, 32), np.float32))
    assert not list((onnx_art / "results").glob("*.json")) and run_dirs_left(arm) == []  # no result stored


# --- the pieces the board flow relies on, on the host ---------------------------------------------


def test_runner_saves_the_outputs_of_given_inputs(onnx_art):
    from edgekd.runtime import ort_session

    x = np.random.default_rng(1).standard_normal((3, 1, 3, 32, 32)).astype(np.float32)
    saved = device_outputs(onnx_art, LocalDevice(), x)
    sess = ort_session(onnx_art / "model.onnx", threads=1)
    expected = np.stack([sess.run(None, {sess.get_inputs()[0].name: sample})[0] for sample in x])
    assert len(saved) == 1 and saved[0].shape == (3, 1, 10)
    np.testing.assert_allclose(saved[0], expected, rtol=1e-5, atol=1e-5)


def test_runner_refuses_samples_of_another_dtype(onnx_art):
    with pytest.raises(BenchmarkError, match="inputs-dtype"):
        device_outputs(onnx_art, LocalDevice(), np.zeros((1, 1, 3, 32, 32), np.int8))


def test_probe_reports_memory_without_proc(monkeypatch):
    monkeypatch.setattr(probe_script, "read", lambda path: None)  # a chroot without /proc, like the board
    assert probe_script.memory_mb() > 0

"""Faults and litter: what a killed compile leaves, the modes an artifact gets, what edgekd writes outside
the artifact, a stopped benchmark, and the checks that stop a silently wrong result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import CALIB, ROOT
from edgekd import api
from edgekd.atomic import MARKER
from edgekd.cli import main
from edgekd.data.preprocess import read_rgb
from edgekd.distill.sanity import check_teacher_accuracy
from edgekd.errors import ConfigError
from edgekd.models import build_model
from edgekd.models.profile import profile
from edgekd.ui import text_table

pytestmark = pytest.mark.usefixtures("keep_sigterm")

EDGEKD = Path(sys.executable).parent / "edgekd"
TEACHER = ROOT / "examples" / "cifar10" / "model.toml"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_siblings_of_killed_compiles_are_removed_and_named(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / f".out.edgekd-tmp-{_dead_pid()}-abc"
    stale.mkdir()
    (stale / MARKER).write_text(str(_dead_pid()))
    (stale / "model.onnx").write_bytes(b"half")
    alive = tmp_path / f".out.edgekd-tmp-{os.getpid()}-def"  # a compile still running: left alone
    alive.mkdir()
    (alive / MARKER).write_text(str(os.getpid()))
    theirs = tmp_path / ".out.edgekd-tmp-notours"  # no marker: not edgekd's to remove
    theirs.mkdir()
    lines = []
    api.compile(api.make_config("resnet20", "onnx-cpu", out, input_shape=(1, 3, 32, 32)), progress=lines.append)
    assert not stale.exists() and alive.exists() and theirs.exists()
    assert any(str(stale) in line and "killed" in line for line in lines)


def test_artifact_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        api.compile(api.make_config("resnet20", "onnx-cpu", tmp_path / "out", input_shape=(1, 3, 32, 32)))
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_nothing_is_written_into_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    proc = subprocess.run(
        [
            str(EDGEKD),
            "compile",
            "resnet20",
            "--input-shape",
            "1,3,32,32",
            "-t",
            "onnx-cpu",
            "-o",
            str(tmp_path / "out"),
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []  # e.g. ONNX Runtime's telemetry ids


def test_a_stopped_benchmark_leaves_no_runner_behind(tmp_path):
    art = tmp_path / "art"
    api.compile(api.make_config("resnet20", "onnx-cpu", art, input_shape=(1, 3, 32, 32)))
    proc = subprocess.Popen(
        [str(EDGEKD), "bench", str(art), "-n", "10000000", "--warmup", "0"], stderr=subprocess.PIPE, text=True
    )
    runner_pid = None
    deadline = time.time() + 60
    while runner_pid is None and time.time() < deadline:
        time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        runner_pid = int(children[0]) if children else None
    assert runner_pid is not None, "the runner never started"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(runner_pid, 0)


def test_a_teacher_at_chance_on_labelled_data_stops_distillation(tmp_path):
    """The CIFAR-10 teacher without its mean/std sees other inputs than it was trained on."""
    r = CliRunner().invoke(
        main,
        [
            "distill",
            "edgekd.models.resnet_cifar:resnet20",
            "--weights",
            str(ROOT / "examples" / "cifar10" / "teacher.pth"),
            "--input-shape",
            "1,3,32,32",
            "--student",
            "resnet8:0.25",
            "--data",
            str(CALIB),
            "-o",
            str(tmp_path / "s.pt"),
            "--epochs",
            "1",
            "--mean",
            "0.9,0.9,0.9",
            "--std",
            "0.01,0.01,0.01",
        ],
    )
    assert r.exit_code == 2 and "chance is 10.0 %" in r.output and "--mean/--std" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "acc, classes, holdout, refused",
    [
        (10.0, 10, 500, True),
        (12.0, 10, 500, True),
        (40.0, 10, 500, False),
        (10.0, 10, 20, False),  # too few held-out images to tell
        (55.0, 2, 400, True),
        (75.0, 2, 400, False),
    ],
)
def test_chance_is_judged_with_a_binomial_margin(acc, classes, holdout, refused):
    if refused:
        with pytest.raises(ConfigError):
            check_teacher_accuracy(acc, classes, holdout)
    else:
        check_teacher_accuracy(acc, classes, holdout)


def test_torchscript_macs_are_counted():
    model = build_model("resnet8:0.25").eval()
    scripted = torch.jit.trace(model, torch.zeros(1, 3, 32, 32))
    assert profile(scripted, (1, 3, 32, 32)).macs == profile(model, (1, 3, 32, 32)).macs > 0


def test_sixteen_bit_images_keep_their_values(tmp_path):
    from PIL import Image

    grey = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgb = read_rgb(tmp_path / "g.png", (32, 32))
    np.testing.assert_allclose(rgb[..., 0], grey / 257.0, rtol=1e-6)
    assert rgb.max() > 230 and len(np.unique(rgb)) > 256  # neither clipped at 255 nor cut to 8 bits


def test_text_columns_left_numbers_right():
    table = text_table(["device", "p50 ms"], [["pi", 1.5], ["jetson-orin", 12.25]]).splitlines()
    assert table[2].startswith("pi   ") and table[3].startswith("jetson-orin")
    assert table[2].endswith("  1.5") and table[3].endswith("12.25")

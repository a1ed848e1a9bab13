"""Training options and flags, compile --resume, a real 2-process DistributedDataParallel run under
torchrun, and students from a user factory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd import api
from edgekd.distill.options import parse_pairs, parse_schedule, train_config
from edgekd.distill.schedules import Schedule
from edgekd.errors import ConfigError
from edgekd.models import build_model

ROOT = Path(__file__).resolve().parents[1]
X = torch.zeros(2, 3, 32, 32)


# ----------------------------------------------------------------------------- options


def test_training_options_parse_into_the_train_config():
    assert parse_schedule("6:2") == Schedule("linear", 6.0, 2.0)
    assert parse_schedule("4") == Schedule("constant", 4.0)
    assert parse_schedule("6:2", "cosine") == Schedule("cosine", 6.0, 2.0)
    assert parse_pairs("a=b, c=d") == (("a", "b"), ("c", "d")) and parse_pairs("auto") is None
    cfg = train_config(
        {
            "temperature": "5:1",
            "temperature_schedule": "cosine",
            "alpha": "1",
            "optimizer": "adamw",
            "select_fraction": 0.3,
            "loss_clip": 0.3,
            "sparsity_scope": "global",
            "early_stop": 2,
        },
        epochs=3,
        lr=0.01,
    )
    assert cfg.temperature == Schedule("cosine", 5.0, 1.0) and cfg.alpha == Schedule("constant", 1.0)
    assert (
        cfg.optimizer,
        cfg.select_fraction,
        cfg.loss_clip,
        cfg.scope,
        cfg.early_stop_patience,
        cfg.epochs,
        cfg.lr,
    ) == ("adamw", 0.3, 0.3, "global", 2, 3, 0.01)
    dkd = train_config({"kd_loss": "dkd", "dkd_beta": 2.0})
    assert (dkd.kd_loss, dkd.dkd_beta) == ("dkd", 2.0)
    for bad in (
        {"temperature": "a:b"},
        {"feature_pairs": "layers.0"},
        {"nonsense": 1},
        {"select_fraction": 1.5},
        {"kd_loss": "fitnet"},
    ):
        with pytest.raises(ConfigError):
            train_config(bad)


def test_cli_passes_training_flags_through(labelled, tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    out = tmp_path / "art"
    r = CliRunner().invoke(
        main,
        [
            "compile",
            "resnet20:0.25",
            "--target",
            "onnx-cpu",
            "-o",
            str(out),
            "--precision",
            "fp32",
            "--input-shape",
            "1,3,32,32",
            "--student",
            "resnet8:0.25",
            "--data",
            str(labelled),
            "--epochs",
            "1",
            "--temperature",
            "4:1",
            "--alpha",
            "0.9:0.5",
            "--optimizer",
            "adamw",
            "--lr",
            "0.003",
            "--batch-size",
            "16",
            "--hint-weight",
            "0.5",
            "--feature-pairs",
            "layers.1=layers.5",
            "--loss-clip",
            "2",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    t = json.loads((out / "manifest.json").read_text())["distill"]["training"]
    assert t["temperature"] == {"kind": "linear", "start": 4.0, "end": 1.0}
    assert t["alpha"] == {"kind": "linear", "start": 0.9, "end": 0.5}
    assert (t["optimizer"], t["lr"], t["batch_size"], t["hint_weight"], t["loss_clip"]) == (
        "adamw",
        0.003,
        16,
        0.5,
        2.0,
    )
    assert t["feature_pairs"] == [["layers.1", "layers.5"]]
    assert not (tmp_path / "art.checkpoints").exists()  # a finished compile leaves no checkpoints


def test_compile_resume_continues_an_interrupted_distillation(labelled, tmp_path, monkeypatch):
    from edgekd.errors import PassFailedError
    from edgekd.passes import export_onnx as export_pass

    kwargs = dict(
        input_shape=(1, 3, 32, 32),
        student="resnet8:0.25",
        data=labelled,
        precision="fp32",
        train_options={"batch_size": 32},
    )
    original = export_pass.ExportOnnxPass.run
    monkeypatch.setattr(
        export_pass.ExportOnnxPass,
        "run",
        lambda self, state: (_ for _ in ()).throw(RuntimeError("simulated crash after training")),
    )
    with pytest.raises(PassFailedError) as failed:
        api.compile(api.make_config("resnet20:0.25", "onnx-cpu", tmp_path / "art", epochs=1, **kwargs))
    ck = tmp_path / "art.checkpoints" / "distill" / "last.pt"
    assert f"kept in {ck.parent.parent}" in failed.value.__notes__[0] and "--resume" in failed.value.__notes__[0]
    assert ck.exists() and not (tmp_path / "art").exists()
    first_epoch = torch.load(ck, weights_only=True)["history"][0]
    monkeypatch.setattr(export_pass.ExportOnnxPass, "run", original)
    result = api.compile(
        api.make_config("resnet20:0.25", "onnx-cpu", tmp_path / "art", epochs=2, resume=True, **kwargs)
    )
    history = (tmp_path / "art" / "training" / "training.csv").read_text().splitlines()
    assert len(history) == 3 and result.manifest["distill"]["epochs"] == 2
    assert float(history[1].split(",")[1]) == pytest.approx(first_epoch["train_loss"])  # epoch 1 was not retrained
    assert not (tmp_path / "art.checkpoints").exists()


# ----------------------------------------------------------------------------- scale-out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_under_torchrun(labelled, tmp_path):
    """A real torchrun launch: 2 gloo workers split every batch; the trainer checks at the end that the
    workers hold identical weights, and only worker 0 writes."""
    out = tmp_path / "student.pt"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "edgekd",
        "distill",
        str(ROOT / "examples/cifar10/model.toml"),
        "--student",
        "resnet8:0.25",
        "--data",
        str(labelled),
        "-o",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--hint-weight",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["workers"] == 2 and record["epochs"] == 2
    assert proc.stdout.count("wrote ") == 1  # worker 0 alone reports and writes
    state = torch.load(out, weights_only=True)
    student = build_model("resnet8:0.25")
    student.load_state_dict(state)
    assert (out.parent / "student.pt.training" / "training.csv").exists()


def test_student_from_a_user_factory():
    from edgekd.distill.student import build_student
    from edgekd.errors import FactoryError

    model = build_student("edgekd.models.resnet_cifar:resnet8", 7)
    assert model(X).shape == (2, 7)
    with pytest.raises(FactoryError):
        build_student("no_such_module_xyz:make", 10)

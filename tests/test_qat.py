"""Quantization-aware training end to end: range learning, `--qat-epochs` through compile for several targets
(the artifact carries the trained ranges, verify compares it with the simulation as for any int8 compile),
resume, and the accuracy budget's automatic fallback."""

from __future__ import annotations

import itertools
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import numpy_helper

from conftest import CALIB, realistic
from edgekd import api
from edgekd.data.preprocess import Preprocess
from edgekd.data.samples import iter_batches
from edgekd.distill.losses import hinton_kd
from edgekd.errors import AccuracyBudgetError, ConfigError, PassFailedError
from edgekd.ir.canonical import canonicalize
from edgekd.models import build_model
from edgekd.models.export import export_onnx
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.qat.graph import QuantGraph, SiteRanges
from edgekd.quant.accuracy import greedy_keep_float
from edgekd.quant.calibrate import observe
from edgekd.quant.observers import make_observer
from edgekd.quant.placement import plan_quantization
from edgekd.quant.qparams import SCHEMES, qparams_from_range

PRE = Preprocess(size=(32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
SHAPE = (1, 3, 32, 32)


def confident(seed: int = 0) -> torch.nn.Module:
    """A small random ResNet whose logits are large enough for KD to have something to say."""
    torch.manual_seed(seed)
    model = realistic(build_model("resnet8:0.25"))
    with torch.no_grad():
        model.fc.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qat") / "net.pt"
    torch.jit.save(torch.jit.trace(confident(), torch.zeros(SHAPE)), str(path))
    return path


def test_learned_ranges_narrow_to_the_data_and_lower_the_loss(one_torch_thread):
    """Ranges started 4× too wide (coarse steps): learning them alone, against the float graph, narrows
    them and brings the output back toward the float model's."""
    graph, _ = canonicalize(ir.from_proto(export_onnx(confident(), SHAPE, 17)), SHAPE, (13, 17), 17)
    FuseConvBnReluPass().run(type("State", (), {"onnx_model": graph})())
    plan = plan_quantization(graph, "outputs")
    x = torch.from_numpy(np.concatenate(list(iter_batches(CALIB, PRE, SHAPE, limit=64))))
    observers, _ = observe(ir.to_proto(graph), plan.observed, [x.numpy()], lambda t: make_observer("minmax"), 64)
    wide = {t: tuple(4 * float(v) for v in o.min_max()) for t, o in observers.items()}
    student = QuantGraph(graph, plan, SiteRanges(SCHEMES["asymmetric-int8"], wide, {}))
    with torch.no_grad():
        target = QuantGraph(graph).eval()(x)
    for p in student.params.values():
        p.requires_grad_(False)
    ranges = [p for p in student.parameters() if p.requires_grad]
    assert ranges  # the trained ends: every end but those at zero
    opt = torch.optim.SGD(ranges, lr=0.02, momentum=0.9)

    def loss(train: bool) -> torch.Tensor:
        return hinton_kd(student.train(train)(x), target, 2.0)

    with torch.no_grad():
        before = loss(False).item()
    for _ in range(40):
        opt.zero_grad()
        loss(True).backward()
        opt.step()
    with torch.no_grad():
        after = loss(False).item()
    widths = [(hi - lo) / (wide[t][1] - wide[t][0]) for t, (lo, hi) in student.ranges().items()]
    assert after < 0.5 * before
    assert np.median(widths) < 0.8 and max(widths) < 1.0
    assert all(student.ranges()[t][0] == 0.0 for t, (lo, _) in wide.items() if lo == 0.0)  # ReLU ends stay at 0


def compile_qat(tmp_path, model_file, labelled, target="onnx-cpu", **kw):
    kw.setdefault("qat_epochs", 1)
    config = api.make_config(
        str(model_file),
        target,
        tmp_path / target,
        input_shape=SHAPE,
        precision="int8",
        calib=CALIB,
        calib_samples=64,
        data=labelled,
        force=True,
        verify_samples=8,
        mean=PRE.mean,
        std=PRE.std,
        train_options={"batch_size": 16},
        **kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return api.compile(config)


@pytest.mark.parametrize("target", ["onnx-cpu", "rpi4"])
def test_compile_with_qat_epochs_ships_the_trained_ranges(tmp_path, model_file, labelled, target):
    result = compile_qat(tmp_path, model_file, labelled, target, qat_lr=0.01, skip=("sensitivity",))
    m = result.manifest
    assert m["quantization"]["ranges_from"] == "qat"
    qat = m["qat"]
    assert qat["trigger"] == "--qat-epochs 1" and qat["epochs"] == 1 and qat["ranges"] == "learn"
    assert qat["ptq_top1"] is not None and qat["qat_top1"] is not None and qat["weights_changed"] > 0
    assert any(r["trained"] != r["calibrated"] for r in qat["tensor_ranges"].values())
    assert m["fidelity"].get("decisive_disagreements", 0) == 0  # verify: the artifact is the simulation
    # the QDQ graph (the simulation, shipped as is for onnx-cpu) holds exactly the trained ranges' parameters
    scheme = SCHEMES[m["quantization"]["activation_scheme"]]
    tensors = m["quantization"]["tensors"]
    for tensor, r in qat["tensor_ranges"].items():
        qp = qparams_from_range(*r["trained"], scheme)
        assert tensors[tensor]["scale"] == float(qp.scale) and tensors[tensor]["zero_point"] == int(qp.zero_point)
    if target == "onnx-cpu":
        graph = onnx.load(str(result.output / "model.onnx")).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        t = next(iter(qat["tensor_ranges"]))
        assert float(inits[f"{t}_scale"]) == tensors[t]["scale"]
    assert "## Quantization-aware training" in (result.output / "report.md").read_text()


def test_qat_trains_exactly_the_sites_the_quantize_pass_quantizes(tmp_path, model_file, labelled):
    """Every activation Q/DQ of the artifact reads a range QAT trained (directly or as a grid-preserving copy):
    QAT follows the target's placement instead of one of its own."""
    result = compile_qat(tmp_path, model_file, labelled, qat_lr=0.01, skip=("sensitivity",))
    trained = result.manifest["qat"]["tensor_ranges"]
    tensors = result.manifest["quantization"]["tensors"]
    activations = {t: q for t, q in tensors.items() if q["axis"] is None and q["scheme"]["narrow_range"] is False}
    scales = {(tensors[t]["scale"], tensors[t]["zero_point"]) for t in trained}
    assert set(trained) <= set(activations)
    assert all((q["scale"], q["zero_point"]) in scales for q in activations.values())


def test_qat_needs_training_images_and_int8(tmp_path, model_file, labelled):
    with pytest.raises(ConfigError, match="--data"):
        api.compile(
            api.make_config(
                str(model_file),
                "onnx-cpu",
                tmp_path / "a",
                input_shape=SHAPE,
                precision="int8",
                calib=CALIB,
                qat_epochs=1,
            )
        )
    with pytest.raises(ConfigError, match="int8"):
        api.compile(
            api.make_config(
                str(model_file),
                "onnx-cpu",
                tmp_path / "b",
                input_shape=SHAPE,
                precision="fp32",
                data=labelled,
                qat_epochs=1,
            )
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resume_continues_an_interrupted_qat(tmp_path, model_file, labelled, monkeypatch):
    from edgekd.passes import quantize as quantize_pass

    original = quantize_pass.QuantizePass.run
    monkeypatch.setattr(
        quantize_pass.QuantizePass,
        "run",
        lambda self, state: (_ for _ in ()).throw(RuntimeError("simulated crash after QAT")),
    )
    with pytest.raises(PassFailedError) as failed:
        compile_qat(tmp_path, model_file, labelled, qat_epochs=1, skip=("sensitivity",))
    ck = tmp_path / "onnx-cpu.checkpoints" / "qat" / "last.pt"
    assert ck.exists() and "--resume" in failed.value.__notes__[0]
    first = torch.load(ck, weights_only=True)
    monkeypatch.setattr(quantize_pass.QuantizePass, "run", original)
    result = compile_qat(tmp_path, model_file, labelled, qat_epochs=2, resume=True, skip=("sensitivity",))
    qat = result.manifest["qat"]
    assert qat["epochs"] == 2 and len(qat["history"]) == 2
    assert qat["history"][0]["train_loss"] == pytest.approx(first["history"][0]["train_loss"])  # not retrained
    assert qat["ptq_top1"] == first["initial_acc"]  # the score before training survives the restart
    assert not (tmp_path / "onnx-cpu.checkpoints").exists()


def flat_copy(folder: Path, out: Path) -> Path:
    """The images of a class-subfolder set side by side in one folder: the same images, no labels."""
    out.mkdir()
    for f in sorted(folder.glob("*/*.jpg")):
        shutil.copy(f, out / f"{f.parent.name}-{f.name}")
    return out


def _budget_scores(monkeypatch, after_qat: float, float_scored: bool = True):
    """int8 scores 40 pt below float (1.0) until QAT has run, then ``after_qat`` below: the real search and
    the real QAT run, only the eval-set scores are made up. ``float_scored``: the pass scores the float model
    first (a labelled set; agreement's float score is 1 by construction and is not computed)."""
    import edgekd.passes.accuracy_budget as ab

    ran = {"qat": False}
    real_run_qat = ab.run_qat

    def run_qat(*a, **k):
        ran["qat"] = True
        return real_run_qat(*a, **k)

    calls = iter(range(0 if float_scored else 1, 10**6))
    monkeypatch.setattr(ab, "run_qat", run_qat)
    monkeypatch.setattr(
        ab, "top1", lambda run, data: 1.0 if next(calls) == 0 else (1.0 - after_qat / 100 if ran["qat"] else 0.6)
    )
    monkeypatch.setattr(
        ab, "greedy_keep_float", lambda order, evaluate, f, m: greedy_keep_float(order, evaluate, f, m, max_layers=2)
    )
    return ran


@pytest.mark.parametrize("classes", [True, False], ids=["labelled-eval", "eval-without-labels"])
def test_a_missed_budget_falls_back_to_qat_and_says_so(tmp_path, model_file, labelled, monkeypatch, classes):
    ran = _budget_scores(monkeypatch, after_qat=0.2, float_scored=classes)
    eval_set = CALIB if classes else flat_copy(CALIB, tmp_path / "flat")
    result = compile_qat(tmp_path, model_file, labelled, qat_epochs=0, max_drop=0.5, eval=eval_set, eval_samples=20)
    assert ran["qat"]
    m = result.manifest
    budget = m["quantization"]["accuracy_budget"]
    assert budget["qat_fallback"] and budget["before_qat"][0]["drop_pt"] == pytest.approx(40.0)
    assert budget["steps"][-1]["drop_pt"] == pytest.approx(0.2)
    metric = "top-1" if classes else "agreement"
    assert m["qat"]["trigger"].startswith(f"accuracy budget missed: int8 {metric} stays 40.00 pt below float")
    assert m["quantization"]["ranges_from"] == "qat"
    assert [p["name"] for p in m["passes"]].index("qat") < [p["name"] for p in m["passes"]].index("quantize")
    report = (result.output / "report.md").read_text()
    assert "quantization-aware training ran (fallback)" in report


def test_a_budget_qat_cannot_meet_fails_with_both_searches(tmp_path, model_file, labelled, monkeypatch):
    _budget_scores(monkeypatch, after_qat=5.0)
    with pytest.raises(PassFailedError) as e:
        compile_qat(tmp_path, model_file, labelled, qat_epochs=0, max_drop=0.5, eval=CALIB, eval_samples=20)
    assert isinstance(e.value.cause, AccuracyBudgetError)
    assert "before QAT" in e.value.message and "after QAT" in e.value.message and "5.00 pt" in e.value.message
    assert e.value.cause.output.before_qat is not None
    assert not (tmp_path / "onnx-cpu").exists()


def test_without_training_images_the_budget_error_says_how_qat_could_help(tmp_path, model_file, monkeypatch):
    import edgekd.passes.accuracy_budget as ab

    scores = itertools.chain([0.9], itertools.repeat(0.5))
    monkeypatch.setattr(ab, "top1", lambda run, data: next(scores))
    config = api.make_config(
        str(model_file),
        "onnx-cpu",
        tmp_path / "o",
        input_shape=SHAPE,
        precision="int8",
        calib=CALIB,
        calib_samples=64,
        max_drop=0.5,
        eval=CALIB,
        eval_samples=20,
        keep_float_count=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        with pytest.raises(PassFailedError) as e:
            api.compile(config)
    assert "--data" in e.value.hint and "quantization-aware training" in e.value.hint


def test_qat_options_reach_the_record(tmp_path, model_file, labelled):
    result = compile_qat(
        tmp_path, model_file, labelled, qat_ranges="ema", qat_lr=0.001, qat_alpha=0.8, skip=("sensitivity",)
    )
    qat = result.manifest["qat"]
    assert qat["ranges"] == "ema"
    t = qat["training"]
    assert t["lr"] == 0.001 and t["alpha"] == {"kind": "constant", "start": 0.8, "end": None}
    assert t["batch_size"] == 16 and t["hint_weight"] == 0.0
    config = json.loads((result.output / "manifest.json").read_text())["config"]
    assert config["qat"] == {"epochs": 1, "ranges": "ema", "lr": 0.001, "alpha": 0.8, "fallback_epochs": 3}


DDP_SCRIPT = """
import json, sys
import onnx_ir as ir, torch
from edgekd.data.preprocess import Preprocess
from edgekd.data.samples import iter_batches
from edgekd.distill.distributed import join
from edgekd.distill.trainer import TrainConfig
from edgekd.ir.canonical import canonicalize
from edgekd.models import build_model
from edgekd.models.export import export_onnx
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.qat.train import train_quantized
from edgekd.quant.calibrate import Calibration, observe
from edgekd.quant.observers import make_observer
from edgekd.quant.placement import plan_quantization

data, calib, out = sys.argv[1:4]
pre, shape = Preprocess(size=(32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)), (1, 3, 32, 32)
torch.manual_seed(0)
model = build_model("resnet8:0.25").eval()
with torch.no_grad():
    model.fc.weight.mul_(20)
graph, _ = canonicalize(ir.from_proto(export_onnx(model, shape, 17)), shape, (13, 17), 17)
FuseConvBnReluPass().run(type("State", (), {"onnx_model": graph})())
plan = plan_quantization(graph, "outputs")
observers, n = observe(ir.to_proto(graph), plan.observed, iter_batches(calib, pre, shape, limit=32),
                       lambda t: make_observer("ema"), 16)
run = train_quantized(graph, plan, Calibration("asymmetric-int8", plan, observers, n, calib, "", "ema"), data, pre,
                      shape, TrainConfig(epochs=2, batch_size=16, lr=0.01, augment=False), "learn")
world = join()
if world.is_main:  # every worker ended with the same weights and ranges, or train_kd would have raised
    json.dump({"world": world.size, "epochs": run.result.epochs_run, "ranges": run.ranges,
               "initial": run.initial_ranges}, open(out, "w"))
"""


def test_two_process_qat_under_torchrun(labelled, tmp_path):
    """QAT trains data-parallel like distillation: DistributedDataParallel over the quantized graph, ranges
    included; the trainer checks at the end that both workers hold the same parameters."""
    import os
    import socket
    import subprocess
    import sys

    script, out = tmp_path / "qat_ddp.py", tmp_path / "out.json"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
        str(port),
        str(script),
        str(labelled),
        str(CALIB),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["world"] == 2 and record["epochs"] == 2
    assert any(record["ranges"][t] != record["initial"][t] for t in record["ranges"])

"""TensorRT for Jetson: the Q/DQ ONNX, the calibration cache, build_engine.sh and the static checks.

TensorRT does not install here, so the engine is never built: the artifact runs in ONNX Runtime
(the shared template), build_engine.sh runs against a stand-in trtexec that records its argv, and
hand-broken graphs must fail the static checks with a named error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from backend_template import BackendTemplate
from conftest import realistic
from edgekd import api
from edgekd.backends.tensorrt.backend import TensorRTBackend, trtexec_args
from edgekd.backends.tensorrt.cache import (
    format_cache,
    hex_to_scale,
    parse_cache,
    read_cache,
    scale_to_hex,
    version_code,
)
from edgekd.backends.tensorrt.rules import TensorRTFacts, is_2to4_sparse
from edgekd.errors import PassFailedError, UnsupportedOpsError
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.passes.fold_bias_dequantize import fold_bias_dequantize
from edgekd.specs import load_target


def _dq_per_channel(model: onnx.ModelProto) -> int:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return sum(
        1
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].dtype == np.int8
        and inits[n.input[1]].ndim == 1
        and inits[n.input[1]].size > 1
    )


def _activation_qparams(manifest: dict, model: onnx.ModelProto) -> dict[str, dict]:
    weights = {i.name for i in model.graph.initializer}
    return {
        k: v
        for k, v in manifest["quantization"]["tensors"].items()
        if v["axis"] is None and v["scheme"]["symmetric"] and k not in weights
    }


class TestTensorRTBackend(BackendTemplate):
    target = "jetson-xavier"

    def per_channel_weight_tensors(self, artifact, manifest):
        return _dq_per_channel(onnx.load(str(artifact / manifest["artifact"]["model_file"])))

    def test_report_says_it_ran_in_onnxruntime_and_passed_the_checks(self, compiled):
        out, manifest, _ = compiled
        report = manifest["backend_report"]
        assert manifest["artifact"]["runtime"] == "tensorrt" and manifest["artifact"]["model_file"] == "model.onnx"
        assert report["executed_with"].startswith("onnxruntime") and "board" in report["executed_with"]
        checks = report["static_checks"]
        assert checks["violations"] == [] and checks["tensorrt"] == "8.5.2" and checks["opset"] == 17
        assert checks["weights_per_channel"] > 0 and checks["activation_pairs"] > 0
        assert report["dla"]["cores"] == 2 and isinstance(report["dla"]["falls_back_to_gpu"], list)
        assert {f["path"] for f in manifest["files"]} >= {
            "model.onnx",
            "model_noqdq.onnx",
            "calibration.cache",
            "build_engine.sh",
        }

    def test_qdq_graph_follows_tensorrt_rules(self, compiled):
        out, _, _ = compiled
        model = onnx.load(str(out / "model.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()
                assert (inits[n.input[1]] > 0).all()
            if n.op_type == "DequantizeLinear" and n.input[0] in inits:
                assert inits[n.input[0]].dtype == np.int8  # int32 biases were folded to float

    def test_calibration_cache_round_trips_bit_exactly(self, compiled):
        out, manifest, _ = compiled
        cache = read_cache(out / "calibration.cache")
        assert (out / "calibration.cache").read_text().splitlines()[0] == "TRT-8502-EntropyCalibration2"
        assert cache.version_code == 8502 and cache.calibrator == "EntropyCalibration2"
        model = onnx.load(str(out / "model_noqdq.onnx"))
        want = _activation_qparams(manifest, model)
        assert set(cache.scales) == set(want) and want
        for name, scale in cache.scales.items():
            assert np.float32(scale).tobytes() == np.float32(want[name]["scale"]).tobytes(), name
        # Every name is a tensor of the Q/DQ-free graph the implicit build reads.
        tensors = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        assert set(cache.scales) <= tensors
        for line in (out / "calibration.cache").read_text().splitlines()[1:]:
            assert len(line.rpartition(": ")[2]) == 8


# --- calibration cache format ------------------------------------------------------------------


def test_cache_header_version_codes():
    assert version_code("8.5.2") == 8502 and version_code("8.6") == 8600 and version_code("10.3.0") == 100300
    assert format_cache({}, "8.5.2").splitlines() == ["TRT-8502-EntropyCalibration2"]


def test_cache_scales_are_big_endian_float32_hex():
    assert scale_to_hex(1.0) == "3f800000" and scale_to_hex(2.0) == "40000000"
    assert hex_to_scale("3caa54fc") == pytest.approx(0.02079248, rel=1e-6)  # from a cache TensorRT 8.4 wrote
    assert hex_to_scale("0") == 0.0  # TensorRT writes a zero scale unpadded
    scales = {"input": 0.0123, "a: b": float(np.float32(1 / 3)), "/x/Relu_output_0": 7.5e-6}
    back = parse_cache(format_cache(scales, "10.3.0")).scales
    assert {k: np.float32(v) for k, v in back.items()} == {k: np.float32(v) for k, v in scales.items()}


@pytest.mark.parametrize(
    "text",
    ["", "not a cache\n", "TRT-8502-EntropyCalibration2\nbroken line\n", "TRT-8502-EntropyCalibration2\nx: zz\n"],
)
def test_broken_caches_are_named_errors(text):
    from edgekd.errors import DataError

    with pytest.raises(DataError):
        parse_cache(text)


# --- small models compiled here ------------------------------------------------------------------


class Tiny(nn.Module):
    """A stem, a residual pair of convs and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def prune_2to4(self) -> "Tiny":
        """Zeroes the two smallest of every 4 input channels in each weight that has groups of 4."""
        with torch.no_grad():
            for w in (self.a[0].weight, self.b.weight, self.head.weight):
                groups = w.data.reshape(w.shape[0], w.shape[1] // 4, 4, -1)
                groups.scatter_(2, groups.abs().argsort(dim=2)[:, :, :2], 0.0)
        return self

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b(self.a(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm([8, 16, 16])

    def forward(self, x):
        return self.norm(self.conv(x))


class WithDeterminant(nn.Module):
    """A Det node: outside TensorRT 8.5's ONNX op table, and no canonical rewrite replaces it (LayerNorm is
    written out in primitive ops for targets without it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.linalg.det(y[:, 0, :2, :2]).view(-1, 1, 1, 1)


SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    np.save(d / "calib.npy", np.random.default_rng(0).standard_normal((48,) + SHAPE[1:]).astype(np.float32))
    paths = {}
    for name, make in (
        ("dense", lambda: realistic(Tiny())),
        ("sparse", lambda: realistic(Tiny()).prune_2to4()),
        ("layernorm", lambda: realistic(WithLayerNorm())),
        ("det", lambda: realistic(WithDeterminant())),
    ):
        torch.manual_seed(0)
        paths[name] = d / f"{name}.pt"
        torch.jit.save(torch.jit.trace(make(), torch.zeros(SHAPE)), str(paths[name]))
    return d, paths


def compile_tiny(tiny, model: str, target: str, out: Path, precision: str = "int8") -> Path:
    d, paths = tiny
    config = api.make_config(
        str(paths[model]),
        target,
        out,
        input_shape=SHAPE,
        precision=precision,
        calib=d / "calib.npy" if precision == "int8" else None,
        skip=("sensitivity",),
        verify_samples=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return api.compile(config).output


@pytest.fixture(scope="module")
def xavier_artifact(tiny, tmp_path_factory):
    return compile_tiny(tiny, "dense", "jetson-xavier", tmp_path_factory.mktemp("xavier") / "dense")


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# --- build_engine.sh ------------------------------------------------------------------------------

STAND_IN = """#!/usr/bin/env bash
# Records its argv, NUL-separated, in $ARGV_OUT: a stand-in for TensorRT's trtexec.
: > "$ARGV_OUT"
for a in "$@"; do printf '%s\\0' "$a" >> "$ARGV_OUT"; done
"""


def run_script(artifact: Path, tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "stand in bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "trtexec").write_text(STAND_IN)
    (bin_dir / "trtexec").chmod(0o755)
    argv_out = tmp_path / "argv.bin"
    argv_out.unlink(missing_ok=True)
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DLA_CORE", "INT8_MODE", "WORKSPACE_MIB", "TIMING_CACHE", "TRTEXEC")
    }
    full_env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", ARGV_OUT=str(argv_out), **env)
    proc = subprocess.run(
        ["bash", str(artifact / "build_engine.sh"), *args], env=full_env, capture_output=True, text=True, timeout=60
    )
    argv = argv_out.read_bytes().decode().split("\0")[:-1] if argv_out.exists() else []
    return proc, argv


def test_build_script_is_valid_bash_with_the_expected_flags(xavier_artifact):
    script = xavier_artifact / "build_engine.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "set -euo pipefail" in text and os.access(script, os.X_OK)
    for flag in (
        "--onnx=${here}/model.onnx",
        "--saveEngine=${engine}",
        '"--int8" "--fp16"',
        "--memPoolSize=workspace:${workspace_mib}",
        "--timingCacheFile=${timing_cache}",
        "--buildOnly",
        "--useDLACore=${dla_core}",
        "--allowGPUFallback",
        "--calib=${here}/calibration.cache",
    ):
        assert flag in text, flag
    assert "sparsity=0" in text and "--workspace=" not in text and not re.search(r"@[A-Z_]+@", text)
    report = manifest_of(xavier_artifact)["backend_report"]["build"]
    assert report["command"] == (
        "trtexec --onnx=model.onnx --saveEngine=model.engine --int8 --fp16 "
        "--memPoolSize=workspace:2048 --timingCacheFile=timing.cache --buildOnly"
    )


def test_build_script_passes_every_argument_intact(xavier_artifact, tmp_path):
    art = tmp_path / "my artifact dir"
    shutil.copytree(xavier_artifact, art)
    engine = tmp_path / "engines out" / "tiny model.engine"
    proc, argv = run_script(art, tmp_path, str(engine))
    assert proc.returncode == 0, proc.stderr
    facts = TensorRTFacts.from_spec(load_target("jetson-xavier"))
    assert argv == trtexec_args(
        facts, "int8", False, engine=str(engine), artifact=str(art), timing_cache=f"{art}/timing.cache"
    )
    assert argv[0] == f"--onnx={art}/model.onnx" and " " in argv[0]


def test_build_script_dla_uses_the_implicit_int8_inputs(xavier_artifact, tmp_path):
    art = tmp_path / "art with space"
    shutil.copytree(xavier_artifact, art)
    proc, argv = run_script(art, tmp_path, DLA_CORE="1", WORKSPACE_MIB="512", TIMING_CACHE=str(tmp_path / "t c.cache"))
    assert proc.returncode == 0, proc.stderr
    assert argv == [
        f"--onnx={art}/model_noqdq.onnx",
        f"--saveEngine={art}/model.engine",
        "--int8",
        "--fp16",
        f"--calib={art}/calibration.cache",
        "--memPoolSize=workspace:512",
        f"--timingCacheFile={tmp_path / 't c.cache'}",
        "--useDLACore=1",
        "--allowGPUFallback",
        "--buildOnly",
    ]
    proc, argv = run_script(art, tmp_path, DLA_CORE="2")
    assert proc.returncode == 2 and "DLA_CORE must be 0..1" in proc.stderr and argv == []
    proc, argv = run_script(art, tmp_path, INT8_MODE="implicit")
    assert proc.returncode == 0 and "--calib=" + str(art / "calibration.cache") in argv and "--useDLACore=0" not in argv


# --- static checks catch hand-broken graphs ----------------------------------------------------------


def _activation_q(model: onnx.ModelProto):
    inits = {i.name for i in model.graph.initializer}
    return next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)


def _break_zero_point(model):
    q = _activation_q(model)
    init = next(i for i in model.graph.initializer if i.name == q.input[2])
    init.CopyFrom(numpy_helper.from_array(np.asarray(3, np.int8), init.name))


def _break_axis(model):
    _activation_q(model).attribute.append(helper.make_attribute("axis", 1))


def _break_pair(model):
    q = _activation_q(model)
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name == dq.output[0]:
                n.input[i] = q.output[0]
    model.graph.node.remove(dq)


def _break_opset(model):
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 19


@pytest.mark.parametrize(
    "breaker,rule",
    [
        (_break_zero_point, "zero-point"),
        (_break_axis, "activation-per-tensor"),
        (_break_pair, "qdq-pair"),
        (_break_opset, "opset"),
    ],
)
def test_static_checks_catch_hand_broken_models(xavier_artifact, breaker, rule):
    spec = load_target("jetson-xavier")
    model = onnx.load(str(xavier_artifact / "model.onnx"))
    TensorRTBackend().validate(model, spec)  # the emitted graph passes
    breaker(model)
    with pytest.raises(UnsupportedOpsError, match=rf"\[{rule}\]") as e:
        TensorRTBackend().validate(model, spec)
    assert "TensorRT 8.5.2" in e.value.message and e.value.hint


def _conv_with_int32_bias() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8)
    w_scale = (rng.random(4) * 0.01 + 0.001).astype(np.float32)
    x_scale = np.float32(0.05)
    b = rng.integers(-1000, 1000, 4).astype(np.int32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in (
            (np.asarray(x_scale), "x_s"),
            (np.asarray(0, np.int8), "x_z"),
            (w, "w_q"),
            (w_scale, "w_s"),
            (np.zeros(4, np.int8), "w_z"),
            (b, "b_q"),
            (x_scale * w_scale, "b_s"),
            (np.zeros(4, np.int32), "b_z"),
        )
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"], name="q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="b_dq", axis=0),
        helper.make_node("Conv", ["x_dq", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_int32_bias_dequantize_is_rejected_then_folded_bit_exactly():
    import onnx_ir as ir
    import onnxruntime as ort

    spec = load_target("jetson-xavier")
    model = _conv_with_int32_bias()
    with pytest.raises(UnsupportedOpsError, match=r"\[dequantize-int8\]"):
        TensorRTBackend().validate(model, spec)
    folded_ir = ir.from_proto(model)
    assert fold_bias_dequantize(folded_ir) == 1
    folded = ir.to_proto(folded_ir)
    TensorRTBackend().validate(folded, spec)
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = [
        ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (model, folded)
    ]
    assert np.array_equal(run[0], run[1])


# --- 2:4 sparsity, precisions, op support ------------------------------------------------------------


def test_2to4_pattern():
    w = np.zeros((2, 8, 1, 1), np.float32)
    w[:, [0, 3, 5, 6]] = 1.0
    assert is_2to4_sparse(w)
    w[0, 1] = 1.0
    assert not is_2to4_sparse(w)
    assert not is_2to4_sparse(np.zeros((2, 3, 1, 1)))  # input channels must come in groups of 4


def test_sparsity_flag_only_for_sparse_weights_on_ampere(tiny, tmp_path):
    sparse = compile_tiny(tiny, "sparse", "jetson-orin-nano", tmp_path / "sparse")
    dense = compile_tiny(tiny, "dense", "jetson-orin-nano", tmp_path / "dense")
    assert "--sparsity=enable" in run_script(sparse, tmp_path)[1]
    assert not any(a.startswith("--sparsity") for a in run_script(dense, tmp_path)[1])
    report = manifest_of(sparse)["backend_report"]
    assert report["sparsity"]["enabled"] and len(report["sparsity"]["sparse_layers"]) == 3
    assert report["sparsity"]["eligible_layers"] == 3 and "--sparsity=enable" in report["build"]["command"]
    assert manifest_of(dense)["backend_report"]["sparsity"]["sparse_layers"] == []
    assert "--skipInference" in report["build"]["command"] and "dla" not in report
    assert (sparse / "calibration.cache").read_text().startswith("TRT-100300-EntropyCalibration2\n")
    proc, argv = run_script(sparse, tmp_path, DLA_CORE="0")
    assert proc.returncode == 2 and "has no DLA" in proc.stderr
    # Xavier (Volta) has no sparse kernels: the same weights get no flag there.
    xavier = compile_tiny(tiny, "sparse", "jetson-xavier", tmp_path / "xavier")
    assert not any(a.startswith("--sparsity") for a in run_script(xavier, tmp_path)[1])


def test_fp16_is_plain_onnx_with_fp16_only(tiny, tmp_path):
    out = compile_tiny(tiny, "dense", "jetson-xavier", tmp_path / "fp16", precision="fp16")
    model = onnx.load(str(out / "model.onnx"))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    assert not (out / "calibration.cache").exists() and not (out / "model_noqdq.onnx").exists()
    command = manifest_of(out)["backend_report"]["build"]["command"]
    assert "--fp16" in command and "--int8" not in command and "--calib" not in command
    assert manifest_of(out)["status"] == "ok"


def test_inspect_reports_ops_outside_the_support_table(tiny):
    _, paths = tiny
    info = api.inspect(str(paths["layernorm"]), input_shape=SHAPE, target="jetson-xavier")
    assert info["target"] == "jetson-xavier" and info["opset"] == 17
    bad = info["unsupported"]
    assert [u["op"] for u in bad] == ["LayerNormalization"]
    assert "TensorRT 8.5.2" in bad[0]["reason"] and "operators.md" in bad[0]["reason"]
    assert api.inspect(str(paths["dense"]), input_shape=SHAPE, target="jetson-xavier")["unsupported"] == []


def test_compile_stops_before_calibration_on_unsupported_ops(tiny, tmp_path):
    with pytest.raises(PassFailedError) as e:
        compile_tiny(tiny, "det", "jetson-xavier", tmp_path / "det")
    assert e.value.pass_name == "check-support" and isinstance(e.value.cause, UnsupportedOpsError)
    assert "Det" in e.value.message and not (tmp_path / "det").exists()


def test_layernorm_compiles_written_out_in_primitive_ops(tiny, tmp_path):
    out = compile_tiny(tiny, "layernorm", "jetson-xavier", tmp_path / "ln")
    assert manifest_of(out)["status"] == "ok"
    ops = {n.op_type for n in onnx.load(out / "model.onnx").graph.node}
    assert "LayerNormalization" not in ops and {"ReduceMean", "Sqrt", "Div"} <= ops

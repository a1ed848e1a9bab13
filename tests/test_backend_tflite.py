"""The TFLite backend: full-int8 flatbuffers that carry the simulation's own ranges, run in LiteRT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backend_template import BackendTemplate
from conftest import compile_quick
from edgekd import api
from edgekd.backends import get_backend
from edgekd.bench.session import BenchSettings
from edgekd.errors import FidelityError, PassFailedError, UnsupportedOpsError
from edgekd.specs import load_target

pytestmark = pytest.mark.skipif(
    not get_backend("tflite").available(),
    reason="tensorflow and ai-edge-litert are not installed (pip install 'edgekd[tflite]')",
)


def interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interp.allocate_tensors()
    return interp


def ops_of(interp) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in interp._get_ops_details():
        counts[o["op_name"]] = counts.get(o["op_name"], 0) + 1
    return counts


def model_file(out: Path, manifest: dict) -> Path:
    return out / manifest["artifact"]["model_file"]


class TestTFLiteBackend(BackendTemplate):
    target = "rpi4"
    input_dtype = "int8"
    output_dtype = "int8"

    def per_channel_weight_tensors(self, artifact, manifest):
        interp = interpreter(model_file(artifact, manifest))
        return sum(
            1
            for t in interp.get_tensor_details()
            if t["dtype"] == np.int8 and len(set(t["quantization_parameters"]["scales"].tolist())) > 1
        )

    def test_flatbuffer_is_fully_int8(self, compiled):
        out, manifest, _ = compiled
        interp = interpreter(model_file(out, manifest))
        dtypes = {t["dtype"].__name__ for t in interp.get_tensor_details()}
        assert dtypes <= {"int8", "int32"}, dtypes
        assert not {"DEQUANTIZE"} & set(ops_of(interp))
        report = manifest["backend_report"]
        assert report["float_tensors"] == [] and report["io_conversions"] == []
        assert manifest["inputs"][0]["layout"] == "NHWC"

    def test_ranges_are_the_ones_passed_in(self, compiled):
        out, manifest, _ = compiled
        interp = interpreter(model_file(out, manifest))
        qparams = manifest["quantization"]["tensors"]
        inp = interp.get_input_details()[0]
        want = qparams[inp["name"]]
        assert inp["quantization"] == (pytest.approx(want["scale"], rel=1e-6), want["zero_point"])
        for o in interp.get_output_details():
            assert o["quantization"] == (
                pytest.approx(qparams[o["name"]]["scale"], rel=1e-6),
                qparams[o["name"]]["zero_point"],
            )
        # every activation range the simulation uses is in the flatbuffer, save those the report says
        # the converter moved onto a concatenation's grid
        moved = {t["tensor"] for f in manifest["backend_report"]["forced"] for t in f.get("tensors", [])}
        present: dict[int, list[float]] = {}  # zero point → scales in the flatbuffer
        for t in interp.get_tensor_details():
            qp = t["quantization_parameters"]
            if t["dtype"] == np.int8 and len(qp["scales"]) == 1:
                present.setdefault(int(qp["zero_points"][0]), []).append(float(qp["scales"][0]))
        activations = {k: v for k, v in qparams.items() if v["axis"] is None and k not in moved}
        assert len(activations) > 20
        # float32 min/max → scale: at most an ulp or so away (the converter recomputes it)
        missing = [
            k
            for k, v in activations.items()
            if not any(abs(s - v["scale"]) <= 1e-6 * v["scale"] for s in present.get(v["zero_point"], []))
        ]
        assert not missing, missing[:5]
        acts = manifest["backend_report"]["activations"]
        assert acts["checked"] > 20 and acts["mismatches"] == [] and acts["max_rel_scale_diff"] < 1e-6

    def test_depthwise_weights_keep_per_channel_scales(self, compiled):
        out, manifest, _ = compiled
        interp = interpreter(model_file(out, manifest))
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        depthwise = [o for o in interp._get_ops_details() if o["op_name"] == "DEPTHWISE_CONV_2D"]
        if out.name.startswith("yolo"):
            assert not depthwise  # the detector has none; the MobileNets must
            return
        for o in depthwise:
            w = tensors[int(o["inputs"][1])]
            qp = w["quantization_parameters"]
            assert qp["quantized_dimension"] == 3 and len(qp["scales"]) == w["shape"][3]
            assert len(set(qp["scales"].tolist())) > 1 and not qp["zero_points"].any()

    def test_session_matches_the_runtime_directly(self, compiled):
        """session() hides NHWC and int8: quantize → NHWC → run → dequantize → NCHW, done here by hand."""
        from ai_edge_litert.interpreter import Interpreter

        out, manifest, calib = compiled
        x = np.load(calib)[:1]
        got = get_backend("tflite").session(model_file(out, manifest))(x)
        interp = Interpreter(model_path=str(model_file(out, manifest)), num_threads=1)  # XNNPACK, as session()
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        s, zp = inp["quantization"]
        interp.set_tensor(inp["index"], np.clip(np.rint(x.transpose(0, 2, 3, 1) / s) + zp, -128, 127).astype(np.int8))
        interp.invoke()
        for g, o, info in zip(got, interp.get_output_details(), manifest["outputs"]):
            s, zp = o["quantization"]
            want = (interp.get_tensor(o["index"]).astype(np.float32) - zp) * np.float32(s)
            want = want.transpose(0, 3, 1, 2) if want.ndim == 4 else want
            assert info["shape"] == list(o["shape"]) and info["name"] == o["name"]
            np.testing.assert_array_equal(g, want)

    def test_runs_in_the_bench_runner(self, compiled):
        out, manifest, _ = compiled
        result = api.bench(out, "local", BenchSettings(iterations=5, warmup=1, threads=1))
        assert result["runtime"]["name"] == "litert"
        assert result["input"]["dtype"] == "int8" and result["latency"]["iterations"] == 5


# ---------------------------------------------------------------- tiny hand-made models


def _save(tmp_path: Path, nodes, inits, shape, out_shape, name="m") -> Path:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _strided_model(tmp_path: Path, size: int) -> Path:
    """conv 3×3/2 → ReLU → depthwise 3×3/2 → max pool 3×3/2 → conv 1×1, every pad 1 (torch style)."""
    rng = np.random.default_rng(size)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)) * 0.3,
        "b1": rng.standard_normal(8) * 0.1,
        "w2": rng.standard_normal((8, 1, 3, 3)) * 0.3,
        "b2": rng.standard_normal(8) * 0.1,
        "w3": rng.standard_normal((4, 8, 1, 1)) * 0.3,
        "b3": rng.standard_normal(4) * 0.1,
    }
    p = {"pads": [1, 1, 1, 1], "strides": [2, 2], "kernel_shape": [3, 3]}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", **p),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=8, **p),
        helper.make_node("MaxPool", ["c2"], ["p"], name="pool", **p),
        helper.make_node("Conv", ["p", "w3", "b3"], ["y"], name="proj"),
    ]
    out = size
    for _ in range(3):
        out = (out + 2 - 3) // 2 + 1
    return _save(tmp_path, nodes, inits, (1, 3, size, size), [1, 4, out, out], f"strided{size}")


def _compile(path: Path, out: Path, shape, precision="int8", skip=("sensitivity",), **kw):
    calib = out.parent / f"{out.name}_calib.npy"
    np.save(calib, np.random.default_rng(1).standard_normal((32,) + tuple(shape[1:])).astype(np.float32))
    calib = calib if precision == "int8" else None
    return compile_quick(path, "rpi4", out, shape, calib, precision=precision, skip=skip, **kw)


@pytest.mark.parametrize("size,explicit", [(9, False), (8, True)])
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_stride2_padding_matches_onnx(tmp_path, size, explicit, precision):
    """Odd sizes: torch's pad 1 is TF's SAME. Even sizes: SAME would pad (0, 1), so the lowering pads
    explicitly (zeros for the convs, the grid's lowest value for the max pool) and runs VALID."""
    path = _strided_model(tmp_path, size)
    result = _compile(path, tmp_path / f"out{size}{precision}", (1, 3, size, size), precision)
    m = result.manifest
    assert m["status"] == "ok" and m["artifact"]["precision"] == precision
    fid = m["fidelity"]
    if precision == "int8":
        assert fid["reference"] == "QDQ simulation" and fid["max_output_steps"] <= 1.01
    else:
        assert fid["reference"] == "source ONNX model in ONNX Runtime"
    interp = interpreter(result.output / "model.tflite")
    ops = ops_of(interp)
    assert ("PAD" in ops or "PADV2" in ops) == explicit, ops
    assert ops.get("DEPTHWISE_CONV_2D") == 1 and ops.get("MAX_POOL_2D") == 1
    # the artifact is NHWC, the session hands back NCHW like the ONNX model
    x = np.random.default_rng(2).standard_normal((1, 3, size, size)).astype(np.float32)
    y = get_backend("tflite").session(result.output / "model.tflite")(x)[0]
    assert y.shape == tuple(m["outputs"][0]["shape"][i] for i in (0, 3, 1, 2))


def test_fp32_artifact_is_float(tmp_path):
    result = _compile(_strided_model(tmp_path, 9), tmp_path / "f", (1, 3, 9, 9), "fp32")
    info = result.manifest
    assert info["inputs"][0]["dtype"] == "float32" and info["outputs"][0]["dtype"] == "float32"
    assert "quantization" not in info["inputs"][0]


def test_unsupported_ops_are_named(tmp_path):
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"], name="pool"),
        helper.make_node("Reshape", ["g", "wshape"], ["w"], name="as_weights"),
        helper.make_node("Conv", ["x", "w"], ["c"], name="dynamic_weight_conv", group=4, kernel_shape=[1, 1]),
        helper.make_node("Erf", ["c"], ["y"], name="the_erf"),
    ]
    path = _save(tmp_path, nodes, {"wshape": np.array([4, 1, 1, 1], np.int64)}, (1, 4, 4, 4), [1, 4, 4, 4], "bad")
    bad = get_backend("tflite").unsupported(onnx.load(path), load_target("rpi4"))
    assert {(u.node, u.op) for u in bad} == {("dynamic_weight_conv", "Conv"), ("the_erf", "Erf")}
    assert "run time" in next(u.reason for u in bad if u.op == "Conv")
    with pytest.raises(PassFailedError) as e:
        _compile(path, tmp_path / "out", (1, 4, 4, 4))
    assert e.value.pass_name == "check-support" and isinstance(e.value.cause, UnsupportedOpsError)
    assert "dynamic_weight_conv" in str(e.value) and "the_erf" in str(e.value)


def _shared_bias_model(tmp_path: Path) -> Path:
    """Two convs whose bias is one constant, equal in every channel, read through Identity nodes (as
    torch exports yolo's class biases); the quantizer leaves such a bias float."""
    rng = np.random.default_rng(3)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)) * 0.3,
        "w2": rng.standard_normal((8, 8, 3, 3)) * 0.1,
        "b": np.full(8, -2.0),
    }
    nodes = [
        helper.make_node("Identity", ["b"], ["b1"], name="id1"),
        helper.make_node("Identity", ["b"], ["b2"], name="id2"),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig"),
        helper.make_node("Conv", ["s1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
    ]
    return _save(tmp_path, nodes, inits, (1, 3, 6, 6), [1, 8, 6, 6], "shared_bias")


def test_a_constant_bias_shared_by_two_convs_stays_per_channel(tmp_path):
    result = _compile(_shared_bias_model(tmp_path), tmp_path / "ok", (1, 3, 6, 6))
    assert result.manifest["fidelity"]["max_output_steps"] <= 1.01


def test_the_checks_catch_what_the_converter_does_silently(tmp_path, monkeypatch):
    """Left float, a bias equal in every channel is a splat that the converter quantizes with the first
    channel's scale for all channels: the flatbuffer check must refuse it before anyone runs it."""
    from edgekd.backends.tflite import ops as tflite_ops

    monkeypatch.setattr(tflite_ops, "_bias", lambda x, w, bias: np.asarray(bias, np.float32))
    with pytest.raises(PassFailedError) as e:  # canonicalize would drop the Identity reads and quantize the bias
        _compile(_shared_bias_model(tmp_path), tmp_path / "bad", (1, 3, 6, 6), skip=("sensitivity", "canonicalize"))
    assert e.value.pass_name == "emit" and isinstance(e.value.cause, FidelityError)
    assert "bias" in str(e.value)


def test_keep_float_layer_is_refused(tmp_path):
    """Full int8 has no float layer (the converter would quietly quantize it with ranges of its own)."""
    with pytest.raises(PassFailedError) as e:
        _compile(_strided_model(tmp_path, 9), tmp_path / "kf", (1, 3, 9, 9), keep_float=("proj",))
    assert e.value.pass_name == "emit" and isinstance(e.value.cause, UnsupportedOpsError)
    assert "proj" in str(e.value) and "full int8" in str(e.value)


def test_a_float_layer_in_a_qdq_graph_is_caught(tmp_path):
    """The same when a QDQ graph arrives with a float layer between int8 tensors (here onnx-cpu's with its
    last layer kept in float, and a Q/DQ pair put on the output as another tool might): the flatbuffer check
    names it instead of shipping the converter's own quantization of it."""
    from edgekd.backends.tflite.backend import convert
    from edgekd.backends.tflite.lower import lower
    from edgekd.backends.tflite.verify import check_flatbuffer

    path = _strided_model(tmp_path, 9)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(1).standard_normal((32, 3, 9, 9)).astype(np.float32))
    result = compile_quick(
        path,
        "onnx-cpu",
        tmp_path / "qdq",
        (1, 3, 9, 9),
        calib,
        verify_samples=4,
        keep_float=("proj",),
        activation_scheme="asymmetric-int8",  # int8 activations, as TFLite reads them
    )
    qdq = onnx.load(result.output / "model.onnx")
    out = qdq.graph.output[0].name
    for node in qdq.graph.node:
        node.output[:] = [f"{out}_float" if o == out else o for o in node.output]
    qdq.graph.initializer.extend(
        [numpy_helper.from_array(np.float32(0.05), "y_scale"), numpy_helper.from_array(np.int8(0), "y_zero")]
    )
    qdq.graph.node.extend(
        [
            helper.make_node("QuantizeLinear", [f"{out}_float", "y_scale", "y_zero"], [f"{out}_q"]),
            helper.make_node("DequantizeLinear", [f"{out}_q", "y_scale", "y_zero"], [out]),
        ]
    )
    lowered = lower(qdq)
    with pytest.raises(FidelityError, match="quantized by the converter"):
        check_flatbuffer(convert(lowered, True), lowered, result.manifest["quantization"]["tensors"], True)


def test_targets_describe_the_boards():
    for name, cpu, alias in (("rpi4", "cortex-a72", "pi4-lab"), ("rpi5", "cortex-a76", "pi5-lab")):
        spec = load_target(name)
        assert spec.backend == "tflite" and spec.device_class == "edge-mobile"
        assert spec.default_precision == "int8" and spec.activation_scheme == "asymmetric-int8"
        assert spec.raw["tflite"]["cpu"] == cpu and spec.raw["tflite"]["threads"] == 4
        assert spec.raw["tflite"]["delegate"] == "xnnpack" and spec.bench.device == alias and spec.bench.threads == 4
        assert spec.passes == load_target("onnx-cpu").passes


def test_manifest_names_outputs_like_the_onnx_model(tmp_path):
    path = _strided_model(tmp_path, 9)
    result = _compile(path, tmp_path / "names", (1, 3, 9, 9))
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["y"] and manifest["inputs"][0]["name"] == "x"
    assert manifest["outputs"][0]["layout"] == "NHWC"


def test_float_io_option(tmp_path):
    """[tflite] input_type/output_type = "float32": the converter adds QUANTIZE/DEQUANTIZE at the
    edges (reported), the compute path stays int8."""
    text = (
        load_target("rpi4")
        .path.read_text()
        .replace('input_type = "int8"', 'input_type = "float32"')
        .replace('output_type = "int8"', 'output_type = "float32"')
    )
    spec = tmp_path / "rpi4-float-io.toml"
    spec.write_text(text.replace('name = "rpi4"', 'name = "rpi4-float-io"'))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(1).standard_normal((32, 3, 9, 9)).astype(np.float32))
    m = compile_quick(_strided_model(tmp_path, 9), spec, tmp_path / "out", (1, 3, 9, 9), calib).manifest
    assert m["inputs"][0]["dtype"] == "float32" and m["outputs"][0]["dtype"] == "float32"
    report = m["backend_report"]
    assert report["float_tensors"] == [] and len(report["io_conversions"]) == 2
    assert report["converter"]["inference_input_type"] == "float32" and m["fidelity"]["max_output_steps"] <= 1.01


def test_converter_failure_leaves_a_repro(tmp_path, monkeypatch):
    import tensorflow as tf

    from edgekd.backends.tflite.backend import convert
    from edgekd.backends.tflite.lower import lower

    lowered = lower(onnx.load(_strided_model(tmp_path, 9)))

    def broken(self):
        raise RuntimeError("error: 'tfl.conv_2d' op something the converter dislikes")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", broken)
    with pytest.raises(UnsupportedOpsError) as e:
        convert(lowered, quantized=False)
    assert "tfl.conv_2d" in e.value.message
    script = Path(e.value.hint.split("`python ")[1].split("`")[0])
    assert script.name == "convert.py" and (script.parent / "saved_model" / "saved_model.pb").exists()
    shutil.rmtree(script.parent)


def _many_ops_model(tmp_path: Path, shift: float = 1.0) -> Path:
    """The ops the zoo does not exercise, with layouts that need care: Pad, Slice, Resize, Split/Concat,
    Sub of a per-channel constant, HardSigmoid gating, a Transpose to channels-last, a general
    Reshape, MatMul on a 3-D tensor, Softmax on the last axis."""
    rng = np.random.default_rng(4)
    inits = {
        "w": rng.standard_normal((8, 4, 3, 3)) * 0.3,
        "b": rng.standard_normal(8) * 0.1,
        "lo": np.float32(0.0),
        "hi": np.float32(6.0),
        "pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
        "starts": np.array([1, 0], np.int64),
        "ends": np.array([4, 3], np.int64),
        "axes": np.array([2, 3], np.int64),
        "scales": np.array([1, 1, 2, 2], np.float32),
        "shift": rng.standard_normal((1, 8, 1, 1)) * shift,
        "split": np.array([3, 5], np.int64),
        "shape": np.array([-1, 36, 8], np.int64),
        "m": rng.standard_normal((8, 5)) * 0.5,
        "flat": np.array([-1, 180], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="relu6"),
        helper.make_node("AveragePool", ["r"], ["ap"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Pad", ["ap", "pads"], ["pd"], name="pad"),
        helper.make_node("Slice", ["pd", "starts", "ends", "axes"], ["sl"], name="slice"),
        helper.make_node(
            "Resize",
            ["sl", "", "scales"],
            ["up"],
            name="resize",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node("Sub", ["up", "shift"], ["sub"], name="sub"),
        helper.make_node("HardSigmoid", ["sub"], ["gate"], name="hsig", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["sub", "gate"], ["g"], name="gated"),
        helper.make_node("Split", ["g", "split"], ["s0", "s1"], name="split", axis=1),
        helper.make_node("Concat", ["s1", "s0"], ["cat"], name="concat", axis=1),
        helper.make_node("Transpose", ["cat"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["rs"], name="reshape"),
        helper.make_node("MatMul", ["rs", "m"], ["mm"], name="matmul"),
        helper.make_node("Softmax", ["mm"], ["sm"], name="softmax", axis=-1),
        helper.make_node("Reshape", ["sm", "flat"], ["y"], name="flatten"),
    ]
    return _save(tmp_path, nodes, inits, (1, 4, 6, 6), [1, 180], "many")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_layout_sensitive_ops_match_onnx(tmp_path, precision):
    """A wrong axis or pad is tens of steps off; the verify pass (float: 1e-3 relative, int8: 4 output
    steps) would fail the compile. In int8 the Sub's per-channel constant is an int8 tensor in the
    simulation too (rpi4's ``constant_operands``), as TFLite's SUB reads it: nothing is forced."""
    result = _compile(_many_ops_model(tmp_path, 1.0), tmp_path / precision, (1, 4, 6, 6), precision)
    m = result.manifest
    assert m["status"] == "ok"
    if precision == "int8":
        assert m["fidelity"]["max_output_steps"] <= 4.0
        report = m["backend_report"]
        assert report["float_tensors"] == [] and report["activations"]["mismatches"] == []
        assert report["activations"]["requantized_after_same_grid_op"] == 0  # AVERAGE_POOL_2D keeps its input's grid
        assert not any("sub" in f.get("nodes", []) for f in report["forced"])
    ops = ops_of(interpreter(result.output / "model.tflite"))
    assert {"AVERAGE_POOL_2D", "STRIDED_SLICE", "RESIZE_NEAREST_NEIGHBOR", "SOFTMAX", "CONCATENATION"} <= set(ops), ops

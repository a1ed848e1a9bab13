"""TFLite lowering of the ops third-party models bring (issue 11, item 3): each one compiled for rpi4 in
fp32 (the artifact against the float model in ONNX Runtime) and in int8 (against the QDQ simulation,
fully int8), with the TFLite op it must become; the ops without an int8 kernel are refused by name.

Every model is ``x → Conv 3×3 → op(s) → y``, so the op reads a real activation with a per-tensor grid.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd import api
from edgekd.backends import get_backend
from edgekd.errors import PassFailedError, UnsupportedOpsError
from edgekd.passes.calibrate import CalibrationWarning

pytestmark = pytest.mark.skipif(
    not get_backend("tflite").available(),
    reason="tensorflow and ai-edge-litert are not installed (pip install 'edgekd[tflite]')",
)

SHAPE = (1, 4, 8, 8)
RNG = np.random.default_rng(11)
CONV = {"w": RNG.standard_normal((8, 4, 3, 3)) * 0.3, "b": RNG.standard_normal(8) * 0.1}


def _conv(out: str = "c", w: str = "w", b: str = "b") -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", w, b], [out], name=f"conv_{out}", pads=[1, 1, 1, 1], kernel_shape=[3, 3])


def _n(op: str, inputs: list[str], out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out], name=out, **attrs)


def _model(tmp_path: Path, name: str, nodes, inits: dict, out_type=TensorProto.FLOAT) -> Path:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", out_type, None)],
        [
            numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v), k)
            for k, v in {**CONV, **inits}.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _gelu():
    return (
        [
            _conv(),
            _n("Div", ["c", "sqrt2"], "d"),
            _n("Erf", ["d"], "e"),
            _n("Add", ["e", "one"], "a"),
            _n("Mul", ["c", "a"], "m"),
            _n("Mul", ["m", "half"], "y"),
        ],
        {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)},
    )


def _layernorm():
    """Channels-last LayerNorm as torch exports it below opset 17 (ConvNeXt's), over 32 channels."""
    return (
        [
            _conv("c", "w32", "b32"),
            _n("Transpose", ["c"], "t", perm=[0, 2, 3, 1]),
            _n("ReduceMean", ["t"], "mu", axes=[-1]),
            _n("Sub", ["t", "mu"], "xc"),
            _n("Pow", ["xc", "two"], "sq"),
            _n("ReduceMean", ["sq"], "var", axes=[-1]),
            _n("Add", ["var", "eps"], "ve"),
            _n("Sqrt", ["ve"], "sd"),
            _n("Div", ["xc", "sd"], "n"),
            _n("Mul", ["n", "gamma"], "g"),
            _n("Add", ["g", "beta"], "y"),
        ],
        {
            "two": np.float32(2),
            "eps": np.float32(1e-5),
            "gamma": RNG.uniform(0.5, 1.5, 32),
            "beta": RNG.standard_normal(32) * 0.1,
            "w32": RNG.standard_normal((32, 4, 3, 3)) * 0.3,
            "b32": np.zeros(32),
        },
    )


def _resize(coord: str):
    return (
        [_conv(), _n("Resize", ["c", "", "scales"], "y", mode="linear", coordinate_transformation_mode=coord)],
        {"scales": np.array([1, 1, 2, 2], np.float32)},
    )


# name → (nodes, initializers, TFLite ops the artifact must hold)
CASES = {
    "grouped_conv": (
        [
            _conv(),
            helper.make_node(
                "Conv", ["c", "wg", "bg"], ["y"], name="y", group=4, pads=[1, 1, 1, 1], kernel_shape=[3, 3]
            ),
        ],
        {"wg": RNG.standard_normal((12, 2, 3, 3)) * 0.3, "bg": RNG.standard_normal(12) * 0.1},
        {"CONV_2D", "CONCATENATION"},
    ),
    # a ReLU after the CONCATENATION blocks the converter's range propagation: each part writes ReLU'd int8
    "grouped_conv_relu": (
        [
            _conv(),
            helper.make_node(
                "Conv", ["c", "wg", "bg"], ["g"], name="g", group=4, pads=[1, 1, 1, 1], kernel_shape=[3, 3]
            ),
            _n("Relu", ["g"], "y"),
        ],
        {"wg": RNG.standard_normal((12, 2, 3, 3)) * 0.3, "bg": RNG.standard_normal(12) * 0.1},
        {"CONV_2D", "CONCATENATION"},
    ),
    # Caffe2's ShuffleNet: pads 1/1 where TF's SAME pads 0/1, the pad outside the count
    "average_pool_pads_unlike_same": (
        [_conv(), _n("AveragePool", ["c"], "y", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        {},
        {"AVERAGE_POOL_2D", "MUL"},
    ),
    "div_by_tensor": (
        [
            _conv(),
            _conv("c2", "w2", "b2"),
            _n("Sigmoid", ["c2"], "s"),
            _n("Add", ["s", "half"], "d"),
            _n("Div", ["c", "d"], "y"),
        ],
        {"w2": RNG.standard_normal((8, 4, 3, 3)) * 0.3, "b2": np.zeros(8), "half": np.float32(0.5)},
        {"DIV"},
    ),
    "conv_transpose_k2s2": (
        [_conv(), _n("ConvTranspose", ["c", "wt", "bt"], "y", strides=[2, 2])],
        {"wt": RNG.standard_normal((8, 6, 2, 2)) * 0.3, "bt": RNG.standard_normal(6) * 0.1},
        {"TRANSPOSE_CONV"},
    ),
    "conv_transpose_k4s2p1": (
        [_conv(), _n("ConvTranspose", ["c", "wt"], "y", strides=[2, 2], pads=[1, 1, 1, 1])],
        {"wt": RNG.standard_normal((8, 6, 4, 4)) * 0.2},
        {"TRANSPOSE_CONV"},
    ),
    "reduce_mean_channels": ([_conv(), _n("ReduceMean", ["c"], "y", axes=[1], keepdims=1)], {}, {"MEAN"}),
    "reduce_mean_rows_dropped": ([_conv(), _n("ReduceMean", ["c"], "y", axes=[2], keepdims=0)], {}, {"MEAN"}),
    "reduce_max_and_global_max": (
        [
            _conv(),
            _n("ReduceMax", ["c"], "r", axes=[1], keepdims=1),
            _n("GlobalMaxPool", ["c"], "g"),
            _n("Add", ["r", "g"], "y"),
        ],
        {},
        {"REDUCE_MAX"},
    ),
    "layernorm_pow_sqrt_div": (*_layernorm(), {"MEAN"}),  # fp32: the converter makes SQRT + DIV an RSQRT + MUL
    "gelu_erf": (*_gelu(), {"GELU"}),
    "tanh": ([_conv(), _n("Tanh", ["c"], "y")], {}, {"TANH"}),
    # GoogLeNet's and SqueezeNet's pools (torch ceil_mode=True): 4 outputs where TFLite's floor makes 3
    "max_pool_ceil_mode": (
        [_conv(), _n("MaxPool", ["c"], "y", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
        {},
        {"MAX_POOL_2D"},
    ),
    "exp": ([_conv(), _n("Mul", ["c", "k"], "s"), _n("Exp", ["s"], "y")], {"k": np.float32(0.5)}, {"EXP"}),
    "leaky_relu": ([_conv(), _n("LeakyRelu", ["c"], "y", alpha=0.1)], {}, {"LEAKY_RELU"}),
    "prelu": ([_conv(), _n("PRelu", ["c", "slope"], "y")], {"slope": RNG.uniform(0.05, 0.3, (8, 1, 1))}, {"PRELU"}),
    "squeeze_unsqueeze": (
        [
            _conv(),
            _n("GlobalAveragePool", ["c"], "p"),
            _n("Squeeze", ["p", "hw"], "s"),
            _n("Unsqueeze", ["s", "one_axis"], "y"),
        ],
        {"hw": np.array([2, 3], np.int64), "one_axis": np.array([1], np.int64)},
        {"MEAN"},
    ),
    "gather_constant_indices": (
        [_conv(), _n("Gather", ["c", "idx"], "g", axis=1), _n("Gather", ["g", "row"], "y", axis=2)],
        {"idx": np.array([0, 2, 5, -1], np.int64), "row": np.array(3, np.int64)},
        {"GATHER"},
    ),
    "batched_matmul": (
        [
            _conv(),
            _n("Reshape", ["c", "heads"], "q"),
            _n("Transpose", ["q"], "k", perm=[0, 1, 3, 2]),
            _n("MatMul", ["q", "k"], "y"),
        ],
        {"heads": np.array([1, 2, 4, 64], np.int64)},
        {"BATCH_MATMUL"},
    ),
    "resize_bilinear_half_pixel": (*_resize("half_pixel"), {"RESIZE_BILINEAR"}),
    "resize_bilinear_pytorch_half_pixel": (*_resize("pytorch_half_pixel"), {"RESIZE_BILINEAR"}),
    "resize_bilinear_align_corners": (*_resize("align_corners"), {"RESIZE_BILINEAR"}),
    "resize_bilinear_asymmetric": (*_resize("asymmetric"), {"RESIZE_BILINEAR"}),
    "depth_to_space_dcr": ([_conv(), _n("DepthToSpace", ["c"], "y", blocksize=2)], {}, {"DEPTH_TO_SPACE"}),
    "depth_to_space_crd": ([_conv(), _n("DepthToSpace", ["c"], "y", blocksize=2, mode="CRD")], {}, {"DEPTH_TO_SPACE"}),
    "space_to_depth": ([_conv(), _n("SpaceToDepth", ["c"], "y", blocksize=2)], {}, {"SPACE_TO_DEPTH"}),
    "lrn_beta_0.75_alpha_1e-4": (
        [_conv(), _n("LRN", ["c"], "y", size=5, alpha=1e-4, beta=0.75, bias=1.0)],
        {},
        {"LOCAL_RESPONSE_NORMALIZATION"},
    ),
    "lrn_beta_0.5_alpha_0.1": (
        [_conv(), _n("LRN", ["c"], "y", size=3, alpha=0.1, beta=0.5, bias=2.0)],
        {},
        {"LOCAL_RESPONSE_NORMALIZATION"},
    ),
    "lrn_beta_0.25_alpha_1e-2": (
        [_conv(), _n("LRN", ["c"], "y", size=3, alpha=1e-2, beta=0.25, bias=1.0)],
        {},
        {"LOCAL_RESPONSE_NORMALIZATION"},
    ),
}
# Lowered in float only: an int8 compile for rpi4 is refused by check-support, naming the op.
FLOAT_ONLY = {
    "elu": ([_conv(), _n("Elu", ["c"], "y")], {}, {"ELU"}),
    "pow_cube": ([_conv(), _n("Pow", ["c", "three"], "y")], {"three": np.float32(3)}, {"POW"}),
    "lrn_beta_0.6": (
        [_conv(), _n("LRN", ["c"], "y", size=3, alpha=1e-2, beta=0.6, bias=1.0)],
        {},
        {"LOCAL_RESPONSE_NORMALIZATION"},
    ),
}
# in int8 each op keeps its own rounding; canonicalize writes x / sqrt(v) as x * (1 / sqrt(v)), one RSQRT
# LRN in int8: x² (MUL), the channel window (CONV_2D), v^-beta (RSQRT, MUL): ops_lrn
INT8_OPS = {
    "layernorm_pow_sqrt_div": {"RSQRT", "MUL", "MEAN"},
    **{case: {"MUL", "CONV_2D", "RSQRT"} for case in CASES if case.startswith("lrn")},
}
MAX_STEPS = 2.0  # one rounding of the op's own kernel, one of the conv before it


def _compile(path: Path, out: Path, precision: str):
    calib = out.parent / f"{out.name}_calib.npy"
    np.save(calib, np.random.default_rng(1).standard_normal((32,) + SHAPE[1:]).astype(np.float32))
    config = api.make_config(
        str(path),
        "rpi4",
        out,
        input_shape=SHAPE,
        precision=precision,
        calib=calib if precision == "int8" else None,
        skip=("sensitivity",),
        verify_samples=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return api.compile(config)


def _ops(path: Path) -> set[str]:
    from edgekd.backends.tflite.verify import interpreter

    return {o["op_name"] for o in interpreter(path, delegates=False)._get_ops_details()}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_lowers_and_matches(tmp_path, case, precision):
    nodes, inits, want = CASES[case]
    result = _compile(_model(tmp_path, case, nodes, inits), tmp_path / "out", precision)
    m = result.manifest
    assert m["status"] == "ok"
    fid = m["fidelity"]
    if precision == "fp32":  # verify held it to 1e-3 of the float model's range in ONNX Runtime
        assert fid["reference"] == "source ONNX model in ONNX Runtime" and fid["relative_error"] <= 1e-3
    else:
        assert fid["reference"] == "QDQ simulation" and fid["max_output_steps"] <= MAX_STEPS + 1e-3, fid
        report = m["backend_report"]
        assert report["float_tensors"] == [] and report["activations"]["mismatches"] == []
    ops = _ops(result.output / "model.tflite")
    assert (INT8_OPS.get(case, want) if precision == "int8" else want) <= ops, ops


@pytest.mark.parametrize("case", sorted(FLOAT_ONLY))
def test_op_without_int8_kernel_lowers_in_fp32_and_is_refused_in_int8(tmp_path, case):
    nodes, inits, want = FLOAT_ONLY[case]
    path = _model(tmp_path, case, nodes, inits)
    result = _compile(path, tmp_path / "fp32", "fp32")
    assert result.manifest["fidelity"]["relative_error"] <= 1e-3 and want <= _ops(result.output / "model.tflite")
    with pytest.raises(PassFailedError) as e:
        _compile(path, tmp_path / "int8", "int8")
    assert e.value.pass_name == "check-support" and isinstance(e.value.cause, UnsupportedOpsError)
    assert "force float on rpi4" in str(e.value) and "y" in str(e.value) and "--precision fp32" in e.value.cause.hint


def test_a_classifier_layer_too_large_for_one_constant_is_split_by_output_channel(tmp_path, monkeypatch):
    from edgekd.backends.tflite import ops
    from edgekd.backends.tflite.verify import interpreter

    k, n = SHAPE[1] * SHAPE[2] * SHAPE[3] * 2, 10
    monkeypatch.setattr(ops, "MAX_WEIGHT_BYTES", k * n * 4 // 3 + 1)  # the converter's real limit: 128 MiB
    nodes = [_conv(), _n("Flatten", ["c"], "f"), _n("Gemm", ["f", "fc", "fb"], "g", transB=1), _n("Relu", ["g"], "y")]
    inits = {"fc": RNG.standard_normal((n, k)) * 0.05, "fb": RNG.standard_normal(n) * 0.1}
    result = _compile(_model(tmp_path, "fc", nodes, inits), tmp_path / "out", "int8")
    fid, report = result.manifest["fidelity"], result.manifest["backend_report"]
    assert fid["max_output_steps"] <= MAX_STEPS + 1e-3 and report["float_tensors"] == [], (fid, report)
    details = interpreter(result.output / "model.tflite", delegates=False)._get_ops_details()
    assert sum(o["op_name"] == "CONV_2D" for o in details) == 1 + 3  # the 3×3 conv, the layer in three parts


def test_argmax_output_is_the_index_in_both_precisions(tmp_path):
    path = _model(tmp_path, "argmax", [_conv(), _n("ArgMax", ["c"], "y", axis=1, keepdims=1)], {}, TensorProto.INT64)
    for precision in ("fp32", "int8"):
        result = _compile(path, tmp_path / precision, precision)
        assert result.manifest["fidelity"]["max_abs_error"] == 0.0
        assert "ARG_MAX" in _ops(result.output / "model.tflite")


def test_a_lone_erf_is_named_not_lowered(tmp_path):
    path = _model(tmp_path, "erf", [_conv(), _n("Erf", ["c"], "y")], {})
    with pytest.raises(PassFailedError) as e:
        _compile(path, tmp_path / "out", "fp32")
    assert e.value.pass_name == "check-support" and "Erf" in str(e.value) and "GELU" in str(e.value)


def test_a_node_refused_at_lowering_is_named_once_and_what_reads_it_is_counted(tmp_path):
    """The refusal names the node that could not be lowered, not every node below it (torchvision's GoogLeNet
    listed 299, all downstream of one pool)."""
    nodes = [
        _conv(),
        _n("AveragePool", ["c"], "pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        _n("Relu", ["pool"], "r"),
        _n("Sigmoid", ["r"], "y"),
    ]
    with pytest.raises(PassFailedError) as e:
        _compile(_model(tmp_path, "avg_ceil", nodes, {}), tmp_path / "out", "fp32")
    message = str(e.value.cause)
    assert "1 node(s) cannot be lowered" in message and "pool (AveragePool): ceil_mode=1" in message
    assert "(2 tensor(s) below them were not tried)" in message and "Relu" not in message

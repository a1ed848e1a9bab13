"""Small Q/DQ graphs written as edgekd's quantizer writes them, for probing a runtime's int8 kernels
(tests and bench/openvino_grouped_conv.py)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def grouped_pointwise_qdq(channels: int, groups: int, float_bias: bool = False):
    """u8 activations × i8 per-channel weights through one grouped 1×1 Conv + Relu, as the quantizer writes it
    (``float_bias``: the bias a float initializer, as the quantizer leaves it beside a float input)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, (channels // groups) ** -0.5, (channels, channels // groups, 1, 1)).astype(np.float32)
    w_scale = (np.abs(w).reshape(channels, -1).max(1) / 127).astype(np.float32)
    inits = {
        "w_q": np.round(w / w_scale[:, None, None, None]).astype(np.int8),
        "w_scale": w_scale,
        "w_zero": np.zeros(channels, np.int8),
        "b_q": rng.integers(-2000, 2000, channels).astype(np.int32),
        "b_scale": (w_scale * 0.02).astype(np.float32),
        "b_zero": np.zeros(channels, np.int32),
        "x_scale": np.array(0.02, np.float32),
        "y_scale": np.array(0.05, np.float32),
        "zero": np.array(0, np.uint8),
        "b_float": rng.normal(0, 0.1, channels).astype(np.float32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], axis=0),
        helper.make_node(
            "Conv",
            ["x_dq", "w", "b_float" if float_bias else "b"],
            ["c"],
            name="gconv",
            group=groups,
            kernel_shape=[1, 1],
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "y_scale", "zero"], ["r_q"]),
        helper.make_node("DequantizeLinear", ["r_q", "y_scale", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "grouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 14, 14])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def pointwise_input(channels: int) -> np.ndarray:
    return np.abs(np.random.default_rng(1).normal(0, 1, (1, channels, 14, 14))).astype(np.float32)


def openvino_steps(model, x: np.ndarray, simulation: np.ndarray) -> float:
    """How far OpenVINO's CPU plugin computes the graph from ``simulation`` (ONNX Runtime's run of the same Q/DQ
    graph), in steps of the output's quantization (0.05)."""
    import openvino as ov

    from edgekd.backends.openvino.backend import convert, runtime_config

    compiled = ov.Core().compile_model(convert(model), "CPU", runtime_config(1))
    return float(np.abs(compiled(x)[0] - simulation).max() / 0.05)


def simulate(model, x: np.ndarray) -> np.ndarray:
    from edgekd.runtime.onnx import ort_session

    return ort_session(model.SerializeToString(), optimize=False).run(None, {"x": x})[0]

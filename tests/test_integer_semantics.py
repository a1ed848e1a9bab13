"""The simulation computes what the targets' integer kernels compute (issue 11's fidelity failures):
one rounding for an Add/Sub/Mul with its ReLU, OpenVINO's residual Add summed into a convolution,
TFLite's Concat grids and int8 constant operands, GELU as one op; and the graph rewrites that keep
layouts and ops the targets run (channel shuffle as a Gather, LayerNorm written out, x² as a Mul)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, compile_quick
from edgekd.backends import get_backend
from edgekd.ir.canonical import canonicalize
from edgekd.ir.graph import FUSED_ACTIVATION, FUSED_ADD
from edgekd.passes.canonicalize import ops_to_decompose
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.quant.placement import plan_quantization, target_plan
from edgekd.runtime import run_onnx
from edgekd.specs import load_target

SHAPE = (1, 4, 8, 8)
RNG = np.random.default_rng(7)


def _model(nodes, inits: dict, opset: int = 17, shape=SHAPE) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v), k)
            for k, v in inits.items()
        ],
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _conv(x: str, out: str, w: str, relu: bool = False) -> list:
    nodes = [
        helper.make_node(
            "Conv", [x, w, f"{w}_b"], [out + ("_pre" if relu else "")], name=out, pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        )
    ]
    if relu:
        nodes.append(helper.make_node("Relu", [out + "_pre"], [out], name=f"{out}_relu"))
    return nodes


def _weights(*names: str, c: int = 4) -> dict:
    out = {}
    for n in names:
        out[n], out[f"{n}_b"] = RNG.standard_normal((c, c, 3, 3)) * 0.3, RNG.standard_normal(c) * 0.1
    return out


def _residual() -> onnx.ModelProto:
    """Two ResNet basic blocks: relu(conv(relu(conv(x))) + x)."""
    nodes, x = [], "x"
    for k in range(2):
        nodes += _conv(x, f"a{k}", f"wa{k}", relu=True) + _conv(f"a{k}", f"b{k}", f"wb{k}")
        nodes += [
            helper.make_node("Add", [f"b{k}", x], [f"s{k}"], name=f"add{k}"),
            helper.make_node("Relu", [f"s{k}"], ["y" if k == 1 else f"r{k}"], name=f"relu{k}"),
        ]
        x = f"r{k}"
    return _model(nodes, _weights("wa0", "wb0", "wa1", "wb1"))


def _compile(model: onnx.ModelProto, tmp_path: Path, target: str):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib.npy"
    np.save(calib, RNG.standard_normal((32,) + SHAPE[1:]).astype(np.float32))
    return compile_quick(path, target, tmp_path / Path(target).stem, SHAPE, calib)


def _fused(model: onnx.ModelProto, conv_add: bool = False) -> ir.Model:
    m = ir.from_proto(model)

    class State:
        onnx_model = m

    FuseConvBnReluPass(mark_activations=True, mark_conv_add=conv_add).run(State())
    return m


def test_an_add_and_its_relu_are_quantized_once():
    """TFLite's ADD, oneDNN and TensorRT fuse the ReLU: one rounding, after it (measured on the
    conformance ResNet-18 on rpi4: 11 output steps from the simulation with a Q/DQ between them, 0 without)."""
    m = _fused(_residual())
    adds = [n for n in m.graph if n.op_type == "Add"]
    assert adds and all(n.metadata_props.get(FUSED_ACTIVATION) == "Relu" for n in adds)
    plan = plan_quantization(m, "outputs")
    assert not {"s0", "s1"} & set(plan.activations) and {"r0", "y"} <= set(plan.activations)


def test_openvino_residual_add_is_summed_into_the_conv_before_it():
    m = _fused(_residual(), conv_add=True)
    marked = {n.name for n in m.graph if n.metadata_props.get(FUSED_ADD)}
    assert marked == {"b0", "b1"}  # the Conv feeding each Add, not the skip
    assert not {"b0", "b1"} & set(plan_quantization(m, "outputs").activations)
    assert not any(n.metadata_props.get(FUSED_ADD) for n in _fused(_residual()).graph)  # other targets


@pytest.mark.skipif(not get_backend("openvino").available(), reason="openvino is not installed")
def test_openvino_artifact_matches_the_simulation_on_residual_blocks(tmp_path):
    """Under the ``outputs`` placement (a spec that overrides openvino-cpu's quantizable-inputs, which
    quantizes both Add inputs as NNCF does) the summed convolution keeps no pair of its own."""
    spec = tmp_path / "spec" / "openvino-outputs.toml"
    spec.parent.mkdir()
    spec.write_text(
        (ROOT / "targets" / "openvino-cpu.toml")
        .read_text()
        .replace('placement = "quantizable-inputs"', 'placement = "outputs"')
    )
    m = _compile(_residual(), tmp_path, str(spec)).manifest
    assert next(p for p in m["passes"] if p["name"] == "fuse")["metrics"]["conv_add_marked"] == 2
    assert m["fidelity"]["max_output_steps"] <= 1.01


def test_target_facts_reach_the_passes():
    assert FuseConvBnReluPass.from_config(None, load_target("openvino-cpu")).mark_conv_add
    assert not FuseConvBnReluPass.from_config(None, load_target("onnx-cpu")).mark_conv_add
    rpi, cpu = load_target("rpi4"), load_target("onnx-cpu")
    assert rpi.constant_operands and rpi.concat_grid and not cpu.constant_operands and not cpu.concat_grid
    # one plan for calibration, sensitivity, the accuracy budget, QAT and quantize: the spec's facts in it
    model = ir.from_proto(
        _model(
            _conv("x", "c", "w") + [helper.make_node("Add", ["c", "shift"], ["y"], name="add")],
            {**_weights("w"), "shift": RNG.standard_normal((1, 4, 1, 1))},
        )
    )
    assert target_plan(model, rpi, "outputs").constants and not target_plan(model, cpu, "outputs").constants


def test_constant_operands_become_int8_constants_only_where_asked():
    model = _model(
        _conv("x", "c", "w") + [helper.make_node("Add", ["c", "shift"], ["y"], name="add")],
        {**_weights("w"), "shift": RNG.standard_normal((1, 4, 1, 1))},
    )
    assert plan_quantization(ir.from_proto(model), "outputs").constants == []
    plan = plan_quantization(ir.from_proto(model), "outputs", constant_operands=True)
    assert [(s.node, s.input_index) for s in plan.constants] == [("add", 1)]


def test_a_producer_read_only_by_a_concat_takes_its_grid():
    model = _model(
        _conv("x", "a", "w1")
        + _conv("x", "b", "w2")
        + [helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1)],
        _weights("w1", "w2"),
    )
    plan = plan_quantization(ir.from_proto(model), "outputs", concat_grid=True)
    assert plan.activations["a"].same_as == "y" and plan.activations["b"].same_as == "y"
    assert plan_quantization(ir.from_proto(model), "outputs").activations["a"].same_as is None


def test_gelu_written_with_erf_gets_one_qdq_after_it():
    nodes = _conv("x", "c", "w") + [
        helper.make_node("Div", ["c", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["c", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    model = _model(
        nodes, {**_weights("w"), "sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    )
    plan = plan_quantization(ir.from_proto(model), "outputs", constant_operands=True)
    assert not {"d", "e", "a", "m"} & set(plan.activations) and {"c", "y"} <= set(plan.activations)
    assert plan.constants == []  # the constants inside GELU stay what the GELU op computes with


def _layernorm_model(opset: int = 17) -> onnx.ModelProto:
    return _model(
        _conv("x", "c", "w")
        + [
            helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["y"], name="ln", epsilon=1e-5),
        ],
        {**_weights("w"), "gamma": RNG.uniform(0.5, 1.5, 4), "beta": RNG.standard_normal(4) * 0.1},
        opset,
    )


@pytest.mark.parametrize(
    "target,decomposed",
    [("onnx-cpu", False), ("openvino-cpu", False), ("jetson-xavier", True), ("ascend310", True), ("rpi4", True)],
)
def test_layernorm_is_written_out_where_the_target_lacks_it(target, decomposed):
    spec = load_target(target)
    assert ("LayerNormalization" in ops_to_decompose(spec)) == decomposed
    model = _layernorm_model()
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    canonical, report = canonicalize(ir.from_proto(model), SHAPE, spec.opset_range, spec.opset, ops_to_decompose(spec))
    ops = {n.op_type for n in canonical.graph}
    assert ("LayerNormalization" in ops) != decomposed and ("Sqrt" in ops) == decomposed
    assert report.rewrites.get("layernorm_decomposed", 0) == int(decomposed)
    np.testing.assert_allclose(
        run_onnx(ir.to_proto(canonical).SerializeToString(), x)[0],
        run_onnx(model.SerializeToString(), x)[0],
        rtol=1e-4,
        atol=1e-4,
    )
    assert not get_backend(spec.backend).unsupported(ir.to_proto(canonical), spec)


def test_channel_shuffle_becomes_one_gather_of_the_same_values():
    nodes = _conv("x", "c", "w", relu=True) + [
        helper.make_node("Reshape", ["c", "split"], ["v"]),
        helper.make_node("Transpose", ["v"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "back"], ["y"]),
    ]
    model = _model(
        nodes, {**_weights("w"), "split": np.array([1, 2, 2, 8, 8], np.int64), "back": np.array([1, 4, 8, 8], np.int64)}
    )
    canonical, report = canonicalize(ir.from_proto(model), SHAPE, (13, 17), 17)
    assert report.rewrites["channel_shuffle_to_gather"] == 1
    assert "Gather" in {n.op_type for n in canonical.graph} and "Transpose" not in {n.op_type for n in canonical.graph}
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(
        run_onnx(ir.to_proto(canonical).SerializeToString(), x)[0], run_onnx(model.SerializeToString(), x)[0]
    )


def test_square_as_pow_becomes_a_mul():
    model = _model(
        _conv("x", "c", "w") + [helper.make_node("Pow", ["c", "two"], ["y"])], {**_weights("w"), "two": np.float32(2)}
    )
    canonical, report = canonicalize(ir.from_proto(model), SHAPE, (13, 17), 17)
    assert report.rewrites["square_to_mul"] == 1 and "Pow" not in {n.op_type for n in canonical.graph}

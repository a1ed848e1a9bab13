"""FuseConvBnReluPass: BN folding is exact, activations are marked, and nothing else changes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import realistic
from edgekd.config import InputSpec
from edgekd.ir.graph import FUSED_ACTIVATION, FUSED_INTO
from edgekd.models import build_model
from edgekd.passes.export_onnx import ExportOnnxPass
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.runtime import run_onnx
from edgekd.specs import load_target
from edgekd.state import CompileState


def _state(model: ir.Model | None = None, torch_model=None, shape=(1, 3, 32, 32)) -> CompileState:
    from edgekd.config import CompileConfig

    spec = load_target("onnx-cpu")
    return CompileState(
        spec=spec,
        config=CompileConfig("m", "onnx-cpu", "out"),
        input=InputSpec(shape=shape),
        workdir=None,
        torch_model=torch_model,
        onnx_model=model,
    )


def _proto(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


@pytest.mark.parametrize(
    "name,shape",
    [
        ("resnet20", (1, 3, 32, 32)),
        ("mobilenetv2-cifar:0.5", (1, 3, 32, 32)),
        ("mobilenetv3-small-cifar:0.5", (1, 3, 32, 32)),
        ("yolo-det:0.25", (1, 3, 64, 64)),
    ],
)
def test_fusion_is_numerically_equivalent_on_zoo_models(name, shape):
    torch.manual_seed(0)
    model = build_model(name).eval()
    realistic(model)
    state = ExportOnnxPass(opset=17, fold_constants=False).run(_state(torch_model=model, shape=shape)).state
    bn_before = sum(1 for n in state.onnx_model.graph if n.op_type == "BatchNormalization")
    assert bn_before > 0, "the unfolded export must leave BN for this test to mean anything"
    before = _proto(state.onnx_model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = run_onnx(before, x)

    result = FuseConvBnReluPass().run(state)

    assert result.changed and result.metrics["bn_folded"] == bn_before and result.metrics["bn_left"] == 0
    got = run_onnx(_proto(result.state.onnx_model), x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 1e-5
    onnx.checker.check_model(ir.to_proto(result.state.onnx_model))


def _conv_bn_graph(
    *, conv_bias: bool, act: str | None, bn_is_output: bool = False, second_reader: bool = False, training_mode: int = 0
):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((w, "w"), (gamma, "g"), (beta, "beta"), (mean, "m"), (var, "v"))
    ]
    conv_inputs = ["x", "w"]
    if conv_bias:
        inits.append(numpy_helper.from_array(b, "b"))
        conv_inputs.append("b")
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c", "g", "beta", "m", "v"],
            ["bn"],
            name="bn",
            epsilon=1e-3,
            **({"training_mode": training_mode} if training_mode else {}),
        ),
    ]
    outputs = ["bn"]
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["bn"], ["y"], name="act"))
    elif act and act.startswith("Clip"):
        hi = float(act[4:])
        inits += [
            numpy_helper.from_array(np.array(0, np.float32), "lo"),
            numpy_helper.from_array(np.array(hi, np.float32), "hi"),
        ]
        nodes.append(helper.make_node("Clip", ["bn", "lo", "hi"], ["y"], name="act"))
    if act:
        outputs = ["y"]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["c2"], name="other"))
        outputs.append("c2")
    if bn_is_output and act:
        outputs.append("bn")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ref = dict(w=w, b=b if conv_bias else np.zeros(4, np.float32), gamma=gamma, beta=beta, mean=mean, var=var)
    return proto, ref


@pytest.mark.parametrize("conv_bias", [True, False])
def test_folded_weights_match_closed_form(conv_bias):
    proto, r = _conv_bn_graph(conv_bias=conv_bias, act="Relu")
    model = ir.from_proto(proto)
    result = FuseConvBnReluPass().run(_state(model))
    graph = result.state.onnx_model.graph
    assert [n.op_type for n in graph] == ["Conv", "Relu"]
    conv = next(iter(graph))
    factor = r["gamma"].astype(np.float64) / np.sqrt(r["var"].astype(np.float64) + 1e-3)
    np.testing.assert_allclose(conv.inputs[1].const_value.numpy(), r["w"] * factor[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(
        conv.inputs[2].const_value.numpy(), (r["b"] - r["mean"]) * factor + r["beta"], rtol=1e-5, atol=1e-6
    )
    x = np.random.default_rng(2).standard_normal((1, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(
        run_onnx(_proto(result.state.onnx_model), x)[0], run_onnx(proto.SerializeToString(), x)[0], atol=1e-5
    )
    # old weights no longer referenced are dropped, not left as dead initializers
    assert set(graph.initializers) == {conv.inputs[1].name, conv.inputs[2].name}


def test_bn_that_is_a_graph_output_keeps_the_output_name():
    proto, _ = _conv_bn_graph(conv_bias=True, act=None)
    result = FuseConvBnReluPass().run(_state(ir.from_proto(proto)))
    assert [o.name for o in result.state.onnx_model.graph.outputs] == ["bn"]
    assert [n.op_type for n in result.state.onnx_model.graph] == ["Conv"]


@pytest.mark.parametrize("kwargs", [dict(second_reader=True), dict(training_mode=1)])
def test_bn_is_left_alone_when_folding_would_change_the_graph(kwargs):
    proto, _ = _conv_bn_graph(conv_bias=True, act="Relu", **kwargs)
    result = FuseConvBnReluPass().run(_state(ir.from_proto(proto)))
    assert result.metrics["bn_folded"] == 0 and result.metrics["bn_left"] == 1


@pytest.mark.parametrize("act,kind", [("Relu", "Relu"), ("Clip6", "Relu6"), ("Clip4", "Clip(0,4)")])
def test_activation_after_conv_is_marked(act, kind):
    proto, _ = _conv_bn_graph(conv_bias=True, act=act)
    result = FuseConvBnReluPass().run(_state(ir.from_proto(proto)))
    conv, a = list(result.state.onnx_model.graph)
    assert conv.metadata_props[FUSED_ACTIVATION] == kind
    assert a.metadata_props[FUSED_INTO] == "conv"
    # the mark survives serialization, so backends reading the saved ONNX see it
    saved = ir.to_proto(result.state.onnx_model)
    assert {p.key: p.value for p in saved.graph.node[0].metadata_props}[FUSED_ACTIVATION] == kind


def test_marking_can_be_turned_off_and_second_run_is_a_no_op():
    proto, _ = _conv_bn_graph(conv_bias=True, act="Relu")
    state = FuseConvBnReluPass(mark_activations=False).run(_state(ir.from_proto(proto))).state
    assert FUSED_ACTIVATION not in next(iter(state.onnx_model.graph)).metadata_props
    once = FuseConvBnReluPass().run(state)
    twice = FuseConvBnReluPass().run(once.state)
    assert once.changed and not twice.changed


def test_empty_graph_is_unchanged():
    graph = helper.make_graph(
        [],
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = FuseConvBnReluPass().run(_state(model))
    assert not result.changed and result.metrics == {
        "bn_folded": 0,
        "activations_marked": 0,
        "bn_left": 0,
        "conv_add_marked": 0,
    }

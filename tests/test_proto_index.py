"""edgekd.ir.proto_index: the read-only index the backends' rules read ONNX protos through."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.ir.proto_index import GraphIndex, attr, constant_node_value, default_opset, node_attrs


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _qdq_conv() -> onnx.ModelProto:
    """x → Q → DQ → Conv(DQ(int8 weight)) → y, with scales from Constant nodes of every attribute kind."""
    w_int8 = np.arange(-8, 8, dtype=np.int8).reshape(2, 2, 2, 2)
    nodes = [
        helper.make_node("Constant", [], ["x_scale"], value_float=0.5),
        helper.make_node("Constant", [], ["x_zp"], value=numpy_helper.from_array(np.array(0, np.int8))),
        helper.make_node("Constant", [], ["w_scale"], value_floats=[0.1, 0.2]),
        helper.make_node("Constant", [], ["pads"], value_ints=[0, 0, 0, 0]),
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w_dq"], axis=0),
        helper.make_node("Identity", ["w_dq"], ["w_id"]),
        helper.make_node("Conv", ["x_dq", "w_id"], ["y"], name="conv", kernel_shape=[2, 2]),
        helper.make_node("Relu", ["x_dq"], ["r"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "r")]
    return _model(nodes, [x], outputs, [numpy_helper.from_array(w_int8, "w_q")])


def test_constants_hold_initializers_and_every_kind_of_constant_node():
    g = GraphIndex(_qdq_conv())
    assert g.constants["w_q"].dtype == np.int8 and g.constants["w_q"].shape == (2, 2, 2, 2)
    assert g.constants["x_scale"].dtype == np.float32 and float(g.constants["x_scale"]) == 0.5
    assert g.constants["x_zp"].dtype == np.int8
    np.testing.assert_array_equal(g.constants["w_scale"], np.array([0.1, 0.2], np.float32))
    assert g.constants["pads"].dtype == np.int64 and g.constants["pads"].tolist() == [0, 0, 0, 0]
    assert "x_q" not in g.constants and "w_dq" not in g.constants
    assert g.shapes["w_scale"] == [2] and g.dtypes["pads"] == "int64"


def test_producer_consumers_outputs_and_opset():
    model = _qdq_conv()
    g = GraphIndex(model)
    dq = g.producer["x_dq"]
    assert dq.op_type == "DequantizeLinear"
    assert [(n.op_type, i) for n, i in g.consumers["x_dq"]] == [("Conv", 0), ("Relu", 0)]
    assert [n.op_type for n in g.readers("x_scale")] == ["QuantizeLinear", "DequantizeLinear"]
    assert g.readers("y") == []
    assert g.outputs == {"y", "r"}
    assert g.opset == default_opset(model) == 17
    assert g.produced_by("x_q", "QuantizeLinear").op_type == "QuantizeLinear"
    assert g.produced_by("x_q", "DequantizeLinear") is None
    assert g.produced_by(None, "QuantizeLinear") is None


def test_const_input_and_weight_behind_dequantize():
    g = GraphIndex(_qdq_conv())
    q = g.producer["x_q"]
    assert float(g.const(q, 1)) == 0.5 and g.const(q, 0) is None
    assert g.input(q, 2) == "x_zp" and g.input(q, 5) is None
    w_dq = g.producer["w_dq"]
    assert g.input(w_dq, 2) is None and g.const(w_dq, 2) is None
    # the weight as stored: through the DequantizeLinear to its int8 initializer
    matmul_like = helper.make_node("Conv", ["x_dq", "w_dq"], ["z"])
    assert g.weight(matmul_like).dtype == np.int8
    # an Identity in between is not looked through by weight(): that is constants_through's job
    assert g.weight(g.producer["y"]) is None
    assert g.weight(helper.make_node("Conv", ["x_dq", "w_q"], ["z"])).dtype == np.int8
    assert g.weight(helper.make_node("Conv", ["x_dq"], ["z"])) is None


def test_constants_through_identity_and_dequantize():
    g = GraphIndex(_qdq_conv())
    through = g.constants_through()
    assert through["w_dq"] is g.constants["w_q"] and through["w_id"] is g.constants["w_q"]
    assert "x_dq" not in through  # an activation stays run-time, Q/DQ or not
    assert "w_id" not in g.constants_through(("DequantizeLinear",))
    assert "w_dq" not in g.constants_through(("Identity",))


def test_with_shapes_pins_the_input_and_infers_the_rest():
    model = _qdq_conv()
    declared = GraphIndex(model)
    assert declared.shapes["x"] == ["N", 2, 4, 4] and "y" not in declared.shapes
    pinned = GraphIndex.with_shapes(model, (3, 2, 4, 4))
    assert pinned.shapes["x"] == [3, 2, 4, 4]
    assert pinned.shapes["y"] == [3, 2, 3, 3] and pinned.dtypes["y"] == "float32"
    assert pinned.shapes["x_q"] == [3, 2, 4, 4] and pinned.dtypes["x_q"] == "int8"
    unpinned = GraphIndex.with_shapes(model)
    assert unpinned.shapes["y"] == ["N", 2, 3, 3]
    assert GraphIndex.with_shapes(model, (3, 2, 4)).shapes["x"] == ["N", 2, 4, 4]  # another rank: not pinned
    # the model handed in is not changed
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][0] == "N"
    assert not model.graph.value_info


def test_a_graph_onnx_cannot_infer_keeps_its_declared_shapes_and_constants():
    """A custom-domain op stops inference behind it; an inference error leaves the declared shapes."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Mystery", ["a", "k"], ["b"], domain="x.y"),
        helper.make_node("Relu", ["b"], ["c"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    k = numpy_helper.from_array(np.ones(4, np.float32), "k")
    model = _model(nodes, [x], [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], [k])
    model.opset_import.append(helper.make_opsetid("x.y", 1))
    g = GraphIndex.with_shapes(model, (2, 4))
    assert g.shapes["a"] == [2, 4]
    assert "b" not in g.shapes and "c" not in g.shapes
    assert g.shapes["k"] == [4] and g.constants["k"].shape == (4,)
    assert [n.op_type for n in g.readers("a")] == ["Mystery"]


def test_an_inference_error_keeps_the_declared_shapes(monkeypatch):
    def refuse(model, *args, **kwargs):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] cannot infer")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    g = GraphIndex.with_shapes(_qdq_conv(), (3, 2, 4, 4))
    assert g.shapes["x"] == [3, 2, 4, 4]  # the pin still holds
    assert "y" not in g.shapes
    assert g.constants["w_q"].dtype == np.int8


def test_attribute_helpers():
    node = helper.make_node("Resize", ["x"], ["y"], mode="linear", axes=[2, 3])
    assert attr(node, "mode") == b"linear" and attr(node, "absent", 7) == 7
    assert node_attrs(node) == {"mode": b"linear", "axes": [2, 3]}
    assert constant_node_value(node) is None
    string_constant = helper.make_node("Constant", [], ["s"], value_string="hi")
    assert constant_node_value(string_constant) is None


@pytest.mark.parametrize("opset_imports, want", [([("", 13)], 13), ([("ai.onnx", 19)], 19), ([("x.y", 1)], None)])
def test_default_opset(opset_imports, want):
    model = helper.make_model(
        helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid(d, v) for d, v in opset_imports]
    )
    assert default_opset(model) == want

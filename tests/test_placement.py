"""Q/DQ placement per runtime: the sites each placement chooses on a small residual graph, and what each
runtime makes of them (ONNX Runtime's optimized graph, OpenVINO's IR and compiled CPU model)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, compile_zoo_int8
from edgekd.ir.graph import FUSED_ACTIVATION
from edgekd.quant.placement import plan_quantization


def residual_graph() -> ir.Model:
    """x → Conv+Relu (stem) → Conv+Relu → Conv → Add(stem) → Relu → GlobalAveragePool → Flatten → Gemm,
    with the Conv+Relu pairs marked as the fuse pass marks them."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.2)  # noqa: E731
    inits = []
    for name, shape in (("w0", (8, 3, 3, 3)), ("w1", (8, 8, 3, 3)), ("w2", (8, 8, 3, 3)), ("fc", (10, 8))):
        t = w(*shape)
        t.name = name
        inits.append(t)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="stem_relu"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r0"], ["sum"], name="join"),
        helper.make_node("Relu", ["sum"], ["r2"], name="join_relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="pool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for node in model.graph:
        if node.name in ("stem", "conv1"):
            node.metadata_props[FUSED_ACTIVATION] = "Relu"
    return model


def sites(placement: str) -> dict[str, list[str]]:
    plan = plan_quantization(residual_graph(), placement)
    assert [w.node for w in plan.weights] == ["stem", "conv1", "conv2", "fc"]  # weights: every placement
    return {
        t: sorted(n for n, _ in s.consumers) + (["<output>"] if s.to_graph_output else [])
        for t, s in plan.activations.items()
    }


def test_outputs_quantizes_every_value_changing_output():
    got = sites("outputs")
    assert set(got) == {"x", "r0", "r1", "c2", "sum", "r2", "gap", "flat", "logits"}
    assert got["logits"] == ["<output>"] and got["sum"] == ["join_relu"]


def test_qlinear_quantizes_an_add_after_its_relu_and_leaves_gemm_logits_float():
    got = sites("qlinear")
    # DQ → Add → Q(after the ReLU) is one QLinearAdd unit; QGemm writes float logits itself
    assert "sum" not in got and "logits" not in got
    assert got["r2"] == ["pool"] and got["r0"] == ["conv1", "join"] and got["c2"] == ["join"]
    assert set(got) == {"x", "r0", "r1", "c2", "r2", "gap", "flat"}


def test_qlinear_leaves_a_final_softmax_and_the_gemm_before_it_float():
    """A 1000-class softmax on the fixed 1/256 grid rounds most probabilities to 0; ORT runs both in float
    at no cost (measured, realistic light GoogLeNet on onnx-cpu: 26.1 → 36.8 dB vs float)."""
    model = residual_graph()
    probs = ir.Value(name="probs")
    model.graph.append(ir.node("Softmax", [model.graph.outputs[0]], outputs=[probs], name="softmax"))
    model.graph.outputs[0] = probs
    plan = plan_quantization(model, "qlinear")
    assert "logits" not in plan.activations and "probs" not in plan.activations and "flat" in plan.activations
    assert "probs" in plan_quantization(model, "outputs").activations  # TFLite's SOFTMAX is int8 at 1/256


def _class_token_graph() -> ir.Model:
    """Patch tokens [1, 4, 8] (a MatMul), a constant class token joined in front, a position embedding added,
    then a layer."""
    rng = np.random.default_rng(0)
    const = lambda name, *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["tokens"], name="embed"),
        helper.make_node("Concat", ["cls", "tokens"], ["joined"], name="join", axis=1),
        helper.make_node("Add", ["joined", "pos"], ["y"], name="position"),
        helper.make_node("MatMul", ["y", "w2"], ["out"], name="block"),
        helper.make_node("Relu", ["out"], ["act"], name="block_relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("act", TensorProto.FLOAT, [1, 5, 8])],
        [const("w", 8, 8), const("cls", 1, 1, 8), const("pos", 1, 5, 8), const("w2", 8, 8)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.from_proto(onnx.shape_inference.infer_shapes(model))


def test_qlinear_joins_a_class_token_in_float_before_the_position_embedding():
    """ORT's QLinearConcat needs every input dequantized, so a constant's Concat runs in float anyway; a pair
    on it only rounded the class token onto the patches' grid before the Add rounded the sum again."""
    ort = plan_quantization(_class_token_graph(), "qlinear").activations
    assert "joined" not in ort and {"tokens", "y"} <= set(ort)
    assert "joined" in plan_quantization(_class_token_graph(), "outputs").activations  # int8 CONCATENATION
    model = _class_token_graph()  # a Concat read by a layer keeps its pair: the layer's integer kernel needs it
    joined = model.graph.node("join").outputs[0]
    model.graph.append(ir.node("MatMul", [joined, model.graph.initializers["w2"]], name="head"))
    assert set(plan_quantization(model, "qlinear").activations["joined"].consumers) == {("head", 0), ("position", 0)}


def test_quantizable_inputs_quantize_only_what_an_integer_layer_reads():
    got = sites("quantizable-inputs")
    # the GlobalAveragePool output is quantized above the Flatten (the plugin folds it into the pooling);
    # nothing on the Add's output nor on the logits
    assert got == {
        "x": ["stem"],
        "r0": ["conv1", "join"],
        "r1": ["conv2"],
        "c2": ["join"],
        "r2": ["pool"],
        "gap": ["flatten"],
    }


def test_quantizable_inputs_round_an_average_pool_onto_its_inputs_grid():
    """OpenVINO's int8 AvgPool writes its input's grid: the pair a convolution reads after a local average
    is not hoisted above the pool (the average is not on the input's grid) and copies the input's
    parameters (light Inception-v2's pooled branch: 33 → 39 dB from the simulation at the pool's reader)."""
    model = residual_graph()
    conv1 = next(n for n in model.graph if n.name == "conv1")
    pooled = ir.Value(name="pooled")
    pool = ir.node("AveragePool", [conv1.inputs[0]], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, outputs=[pooled])
    pool.name = "avg"
    model.graph.insert_before(conv1, pool)
    conv1.replace_input_with(0, pooled)
    plan = plan_quantization(model, "quantizable-inputs")
    assert plan.activations["r0"].consumers == (("avg", 0), ("join", 1))
    assert plan.activations["pooled"].consumers == (("conv1", 0),) and plan.activations["pooled"].same_as == "r0"
    assert plan_quantization(model, "inputs").activations["pooled"].same_as is None  # TensorRT: as written


def test_inputs_keeps_tensorrts_placement():
    got = sites("inputs")
    assert got == {"x": ["stem"], "r0": ["conv1", "join"], "r1": ["conv2"], "c2": ["join"], "flat": ["fc"]}


def test_weighted_inputs_quantizes_only_what_a_weighted_layer_reads():
    """Ascend: AMCT quantizes the data input of each Conv/Gemm/MatMul; ATC computes the rest in float16."""
    assert sites("weighted-inputs") == {"x": ["stem"], "r0": ["conv1"], "r1": ["conv2"], "flat": ["fc"]}


def test_keep_float_layers_read_float_in_consumer_placements():
    plan = plan_quantization(residual_graph(), "quantizable-inputs", frozenset({"conv1"}))
    assert [n for n, _ in plan.activations["r0"].consumers] == ["join"]  # conv1 reads float r0
    assert "conv1" not in [w.node for w in plan.weights]


def test_unknown_placement_is_named():
    with pytest.raises(ValueError, match="unknown placement 'anywhere'; known: outputs, qlinear"):
        plan_quantization(residual_graph(), "anywhere")


# --- what the runtimes make of it --------------------------------------------------------------------


def ort_optimized_ops(model_path, tmp_path) -> Counter:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_onnxruntime_runs_every_conv_add_and_the_gemm_on_integer_kernels(tmp_path, zoo_models):
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "onnx-cpu")
    assert result.manifest["calibration"]["placement"] == "qlinear"
    source = Counter(n.op_type for n in onnx.load(str(result.output / "model.onnx")).graph.node)
    ops = ort_optimized_ops(result.output / "model.onnx", tmp_path)
    assert ops["QLinearConv"] == source["Conv"] == 21 and ops["QLinearAdd"] == source["Add"] == 9
    assert ops["QGemm"] == 1 and ops["QLinearGlobalAveragePool"] == 1
    assert not {"Conv", "Add", "Gemm", "DequantizeLinear"} & set(ops)  # no float island left
    assert ops["QuantizeLinear"] == 1  # the input, once


def test_onnxruntime_with_int8_activations_leaves_shared_tensors_in_float(tmp_path, zoo_models):
    """Why onnx-cpu uses uint8: with int8 activations ORT's x86 selectors skip every Conv whose Q/DQ is
    shared by two readers (the ResNet's block inputs)."""
    result = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "onnx-cpu", activation_scheme="asymmetric-int8")
    ops = ort_optimized_ops(result.output / "model.onnx", tmp_path)
    assert ops["Conv"] > 0 and ops["QLinearConv"] < 21


def openvino_spec_with(tmp_path, placement: str):
    text = (ROOT / "targets" / "openvino-cpu.toml").read_text()
    path = tmp_path / f"openvino-{placement}.toml"
    # the placement before quantizable-inputs: every output, the summed convolutions' too
    text = text.replace('placement = "quantizable-inputs"', f'placement = "{placement}"')
    path.write_text(text.replace("fuse_conv_add = true", "fuse_conv_add = false"))
    return path


def openvino_graphs(xml):
    import openvino as ov

    core = ov.Core()
    ir_ops = Counter(op.get_type_name() for op in core.read_model(str(xml)).get_ops())
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    runtime = Counter(n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops())
    return ir_ops, runtime


def test_openvino_needs_fewer_fake_quantize_for_the_same_integer_layers(tmp_path, zoo_models):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    new = compile_zoo_int8(tmp_path, zoo_models, "resnet20", "openvino-cpu", "new")
    old = compile_zoo_int8(tmp_path, zoo_models, "resnet20", str(openvino_spec_with(tmp_path, "outputs")), "old")
    assert new.manifest["calibration"]["placement"] == "quantizable-inputs"
    new_ir, new_rt = openvino_graphs(new.output / "model.xml")
    old_ir, old_rt = openvino_graphs(old.output / "model.xml")
    # no pair on the Flatten's output nor on the logits (each Add's output has none under either: the ReLU
    # after it is fused, and the pair goes after the ReLU)
    assert new_ir["FakeQuantize"] == old_ir["FakeQuantize"] - 2
    assert sum(new_rt.values()) <= sum(old_rt.values()) and "FakeQuantize" not in new_rt
    for result in (new, old):
        report = result.manifest["backend_report"]
        assert report["float_layers"] == 0 and report["int8_layers"] == 22
    # fewer rounding points: the simulation is no further from float
    new_db, old_db = (r.manifest["quantization"]["error_vs_float"]["sqnr_db"] for r in (new, old))
    assert new_db >= old_db - 0.5


def test_a_node_kept_in_float_leaves_its_graph_output_in_float():
    """Pooled logits as the graph output (SqueezeNet): the accuracy budget keeping the pool in float must
    free the logits from their int8 grid, or ties that grid makes stay flipped with every layer in float."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["logits"], name="pool"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10, 1, 1])],
        [w],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert plan_quantization(model, "qlinear").activations["logits"].to_graph_output
    kept = plan_quantization(model, "qlinear", frozenset({"pool"}))
    assert not kept.activations["logits"].to_graph_output and not kept.activations["r"].consumers


def pooled_graph() -> ir.Model:
    """x → Conv → MaxPool → GlobalAveragePool (the output): OpenVINO's pair for the average pool is hoisted
    above the MaxPool, which moves values only."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("MaxPool", ["c"], ["m"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("GlobalAveragePool", ["m"], ["logits"], name="pool"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10, 1, 1])],
        [w],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_every_int8_site_can_be_returned_to_float_through_the_nodes_that_ask_for_it():
    """With every weighted layer and every node without weights that reads int8 data kept in float, no pair
    is left, under each placement. OpenVINO's hoisting names the op a pair moved above (the MaxPool) as its
    reader, so the average pool it was moved for must be offered too."""
    from edgekd.quant.simulate import unweighted_readers

    for placement in ("qlinear", "quantizable-inputs"):
        plan = plan_quantization(pooled_graph(), placement)
        keep = frozenset([w.node for w in plan.weights] + unweighted_readers(plan))
        left = plan_quantization(pooled_graph(), placement, keep)
        assert not [t for t, s in left.activations.items() if s.consumers or s.to_graph_output], placement
    assert plan_quantization(pooled_graph(), "quantizable-inputs").hoisted_for == {"pool"}

"""Activation ranges bounded by what their readers can tell apart (edgekd.quant.reader_bounds): a
convolution feeding SiLU starts its grid at -8, one feeding a Sigmoid (through value-moving ops) spans
±8, exact floors for ReLU/HardSwish/Clip; nothing for graph outputs, for a grid shared with an unbounded
reader, or where OpenVINO reads the Sigmoid's input in float. The bounded range reaches the QParams, and
the QDQ simulation stays as close to float as before, closer where the range shrank. Calibration, which
measures those ranges, keeps a batch's activations within its memory budget."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.metrics import sqnr_db
from edgekd.quant.calibrate import Calibration
from edgekd.quant.observers import MinMaxObserver
from edgekd.quant.placement import plan_quantization
from edgekd.quant.qparams import dequantize, quantize, scheme_for
from edgekd.quant.reader_bounds import SIGMOID_BOUND, SILU_FLOOR


def _model(activation: list, out_shape=(1, 4, 8, 8)) -> ir.Model:
    """x → Conv "conv" (output c) → ``activation`` nodes (reading c, writing y) → y."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    limits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), *activation]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape[1:]])],
        [w, *limits],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


SILU = [
    helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
    helper.make_node("Mul", ["c", "s"], ["y"], name="silu"),
]


def _bounds(model: ir.Model, placement: str = "outputs"):
    return plan_quantization(model, placement).activations["c"].bounds


@pytest.mark.parametrize(
    "activation, want",
    [
        (SILU, (SILU_FLOOR, None)),
        ([helper.make_node("Relu", ["c"], ["y"], name="r")], (0.0, None)),
        ([helper.make_node("HardSwish", ["c"], ["y"], name="hs")], (-3.0, None)),
        ([helper.make_node("HardSigmoid", ["c"], ["y"], name="hsig", alpha=0.2, beta=0.5)], (-2.5, 2.5)),
        ([helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")], (0.0, 6.0)),
        ([helper.make_node("Sigmoid", ["c"], ["y"], name="sig")], (-SIGMOID_BOUND, SIGMOID_BOUND)),
        ([helper.make_node("Tanh", ["c"], ["y"], name="t")], None),
    ],
)
def test_each_reader_bounds_the_convolution_output(activation, want):
    assert _bounds(_model(activation)) == (pytest.approx(want) if want else want)


def test_bounds_are_found_through_value_moving_ops():
    moved = [
        helper.make_node("Transpose", ["c"], ["t"], name="tr", perm=[0, 2, 3, 1]),
        helper.make_node("Sigmoid", ["t"], ["y"], name="sig"),
    ]
    assert _bounds(_model(moved, (1, 8, 8, 4))) == (-SIGMOID_BOUND, SIGMOID_BOUND)


def test_a_second_unbounded_reader_or_a_graph_output_removes_the_bounds():
    both = [
        helper.make_node("Relu", ["c"], ["r"], name="r"),
        helper.make_node("Add", ["c", "r"], ["y"], name="add"),
    ]
    assert _bounds(_model(both)) is None
    out = _model([helper.make_node("Relu", ["c"], ["y"], name="r")])
    out.graph.outputs.append(next(v for n in out.graph for v in n.outputs if v.name == "c"))
    assert _bounds(out) is None


def test_no_silu_floor_where_the_sigmoid_reads_the_float_input():
    # OpenVINO's placement quantizes the Mul's input only; the Sigmoid reads c in float
    site = plan_quantization(_model(SILU), "quantizable-inputs").activations.get("c")
    assert site is None or site.bounds is None


def _calibration(model: ir.Model, x: np.ndarray, placement: str = "outputs") -> tuple[Calibration, dict]:
    from edgekd.runtime import ort_session

    plan = plan_quantization(model, placement)
    proto = ir.to_proto(model)
    proto.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in plan.observed])
    outs = ort_session(proto.SerializeToString()).run(None, {"x": x})
    names = [o.name for o in proto.graph.output]
    observers = {}
    for t in plan.observed:
        observers[t] = MinMaxObserver()
        observers[t].update(outs[names.index(t)])
    cal = Calibration("asymmetric-int8", plan, observers, len(x), "test", "", "minmax")
    return cal, {t: outs[names.index(t)] for t in plan.observed}


def test_the_qparams_start_at_the_floor_and_the_silu_output_gets_closer_to_float():
    x = np.random.default_rng(1).normal(0, 3, (16, 3, 8, 8)).astype(np.float32)
    cal, observed = _calibration(_model(SILU), x)
    c = observed["c"]
    assert c.min() < SILU_FLOOR  # the test is about a range the floor shrinks
    qp = cal.activation_qparams(cal.plan)["c"]
    low = float((scheme_for("asymmetric-int8").qmin - int(qp.zero_point)) * qp.scale)
    assert low == pytest.approx(SILU_FLOOR, abs=float(qp.scale))
    unbounded = MinMaxObserver()
    unbounded.update(c)
    full = unbounded.qparams(scheme_for("asymmetric-int8"))

    def silu(v):
        return v / (1 + np.exp(-v))

    bounded_out = silu(dequantize(quantize(c, qp), qp))
    full_out = silu(dequantize(quantize(c, full), full))
    assert sqnr_db(silu(c), bounded_out) > sqnr_db(silu(c), full_out) + 3.0
    assert np.abs(bounded_out - silu(c)).max() < float(qp.scale)  # clamped values lose < one step


def test_onnx_checker_accepts_the_models():
    onnx.checker.check_model(ir.to_proto(_model(SILU)))


def test_calibration_batches_shrink_to_the_memory_budget():
    """One sample's observed activations are measured; a batch holds as many as fit the budget (the people-det
    teacher at 640 in batches of 32 took a compile to 23 GB)."""
    from edgekd.quant.calibrate import observe

    model = _model([helper.make_node("Relu", ["c"], ["y"], name="r")])
    proto = ir.to_proto(model)
    plan = plan_quantization(model, "outputs")
    x = np.random.default_rng(2).normal(0, 1, (40, 3, 8, 8)).astype(np.float32)
    per_sample = 2 * 4 * 8 * 8 * 4  # the observed conv output and the graph output, float32
    steps: list[int] = []
    observers, seen = observe(
        proto, plan.observed, [x], lambda t: MinMaxObserver(), 32, progress=steps.append, memory_budget=10 * per_sample
    )
    assert seen == 40 and steps[:2] == [10, 20]  # batches of 10, not 32
    lo, hi = observers["c"].min_max()
    full = MinMaxObserver()
    full.update(_calibration(model, x)[1]["c"])
    assert (lo, hi) == full.min_max()  # the same ranges whatever the batching

"""Channel equalization across concatenations (edgekd/quant/equalize.py, the ``equalize`` pass): the float
function is unchanged, the concatenated channels share one range, regions that a factor cannot pass
through are left alone, and a full-int8 DenseNet tracks its float model more closely for it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conformance_models import ARCHITECTURES, calibration_images, export, realistic_weights
from conftest import compile_quick
from edgekd.backends import get_backend
from edgekd.metrics import sqnr_db
from edgekd.quant.equalize import MAX_FACTOR, concat_regions, equalize, factors
from edgekd.runtime import onnx_run_fn, ort_session


def dense_block(concat_reader: str = "Mul") -> onnx.ModelProto:
    """stem Conv (4 narrow channels) → BN's Mul → Relu → a growth Conv (4 wide ones); stem and growth →
    Concat → BN as Mul + Add → Relu → Conv: DenseNet's join. ``concat_reader`` "Conv" reads the Concat
    with a Conv instead (no factor can be divided out there), "output" makes the Concat a graph output too."""
    rng = np.random.default_rng(0)
    inits = {
        "w_stem": rng.normal(0, 0.05, (4, 3, 3, 3)),
        "b_stem": rng.normal(0, 0.01, 4),
        "pre_scale": rng.uniform(8, 12, (4, 1, 1)),
        "w_grow": rng.normal(0, 0.2, (4, 4, 3, 3)),
        "bn_scale": np.concatenate([rng.uniform(8, 12, 4), rng.uniform(0.3, 0.6, 4)]).reshape(8, 1, 1),
        "bn_shift": rng.normal(0, 0.1, (8, 1, 1)),
        "w_out": rng.normal(0, 0.3, (6, 8, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w_stem", "b_stem"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["stem", "pre_scale"], ["pre"], name="pre_mul"),
        helper.make_node("Relu", ["pre"], ["pre_act"], name="pre_act"),
        helper.make_node("Conv", ["pre_act", "w_grow"], ["grow"], name="grow", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["stem", "grow"], ["cat"], name="cat", axis=1),
    ]
    if concat_reader == "Conv":
        nodes.append(helper.make_node("Conv", ["cat", "w_out"], ["y"], name="out"))
    else:
        nodes += [
            helper.make_node("Mul", ["cat", "bn_scale"], ["bn_mul"], name="bn_mul"),
            helper.make_node("Add", ["bn_mul", "bn_shift"], ["bn_add"], name="bn_add"),
            helper.make_node("Relu", ["bn_add"], ["act"], name="act"),
            helper.make_node("Conv", ["act", "w_out"], ["y"], name="out"),
        ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 16, 16])]
    if concat_reader == "output":
        outputs.append(helper.make_tensor_value_info("cat", TensorProto.FLOAT, ["N", 8, 16, 16]))
    graph = helper.make_graph(
        nodes,
        "dense_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        outputs,
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _run(model: ir.Model | onnx.ModelProto, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    for name in outputs:
        if name not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return ort_session(proto.SerializeToString()).run(outputs, {"x": x})


def _channel_ranges(a: np.ndarray) -> np.ndarray:
    return np.abs(a).max(axis=(0, 2, 3))


def test_equalize_keeps_the_function_and_evens_the_concatenated_channels():
    proto = dense_block()
    x = np.random.default_rng(1).normal(0, 1, (16, 3, 16, 16)).astype(np.float32)
    y, cat, stem, grow = _run(onnx.ModelProto.FromString(proto.SerializeToString()), x, ["y", "cat", "stem", "grow"])
    assert _channel_ranges(cat).max() / _channel_ranges(cat).min() > 5  # the narrow stem beside the growth

    model = ir.from_proto(proto)
    regions = concat_regions(model.graph)
    assert len(regions) == 1
    assert sorted(p.name for p in regions[0].producers) == ["grow", "stem"]
    assert sorted(m.name for m, _ in regions[0].readers) == ["bn_mul", "pre_mul"]
    per = factors(regions, {"stem": _channel_ranges(stem), "grow": _channel_ranges(grow)})[0]
    equalize(model.graph, regions[0], per)

    y2, cat2 = _run(model, x, ["y", "cat"])
    np.testing.assert_allclose(y2, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())
    ranges = _channel_ranges(cat2)
    assert ranges.max() / ranges.min() < 1.01  # the calibration images themselves: every channel at the top


def test_a_factor_is_bounded_where_a_channel_barely_moves():
    proto = dense_block()
    model = ir.from_proto(proto)
    regions = concat_regions(model.graph)
    ranges = {"stem": np.array([1e-6, 1.0, 0.0, 1.0]), "grow": np.full(4, 2.0)}
    per = factors(regions, ranges)[0]
    assert per["stem"][0] == MAX_FACTOR  # a near-dead channel is not blown up 2e6 times
    assert per["stem"][2] == 1.0  # a channel that never moved keeps its weights
    np.testing.assert_allclose(per["grow"], 1.0)


@pytest.mark.parametrize("reader", ["Conv", "output"])
def test_a_region_a_factor_cannot_leave_is_not_touched(reader):
    model = ir.from_proto(dense_block(reader))
    assert concat_regions(model.graph) == []


def test_full_int8_densenet_tracks_float_closer_for_it(tmp_path):
    """The conformance DenseNet (BatchNorm statistics measured on real images) for rpi4, whose int8
    concatenation puts every channel on one grid: with the pass against ``--skip equalize``."""
    import torch

    shape = (1, 3, 32, 32)
    images = calibration_images(shape, 64)
    torch.manual_seed(0)
    model = realistic_weights(ARCHITECTURES["densenet"](), images[:32])
    path = export(model, tmp_path / "densenet.onnx", shape, 17, dynamic=False)
    np.save(tmp_path / "calib.npy", images)
    want = np.concatenate([onnx_run_fn(ort_session(path))(images[i : i + 1])[0] for i in range(len(images))])

    def sqnr(skip: tuple[str, ...], out: str) -> tuple[float, dict]:
        result = compile_quick(path, "rpi4", tmp_path / out, shape, tmp_path / "calib.npy", skip=("sensitivity", *skip))
        m = result.manifest
        run = get_backend(m["artifact"]["backend"]).session(result.output / m["artifact"]["model_file"])
        got = np.concatenate([run(images[i : i + 1])[0] for i in range(len(images))])
        record = next((p for p in m["passes"] if p["name"] == "equalize"), None)
        return sqnr_db(want, got), record

    with_pass, record = sqnr((), "equalized")
    without, none = sqnr(("equalize",), "plain")
    assert none is None and record["metrics"]["regions"] == 2  # one per dense block
    assert record["metrics"]["spread_before"] > 4 * record["metrics"]["spread_after"]
    assert with_pass > without + 3, (with_pass, without)

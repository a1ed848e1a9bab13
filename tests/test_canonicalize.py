"""The import canonicalization: binding dynamic dims, opset conversion, folding, pattern rewrites,
Q/DQ placement on foreign graphs, and the grouped check-support report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from conformance_models import calibration_images, export, hswish, light_model_dir, silu
from edgekd import api
from edgekd.errors import ConfigError, InputShapeError, OpsetConversionError, PassFailedError, UnsupportedOpsError
from edgekd.frontend import model_input
from edgekd.ir.bind import bind_shape
from edgekd.ir.canonical import canonicalize
from edgekd.ir.dataflow import data_values
from edgekd.ir.einsum import batched_matmul
from edgekd.ir.graph import op_counts
from edgekd.ir.opset import convert_opset
from edgekd.models.load import load_model
from edgekd.quant.placement import plan_quantization
from edgekd.runtime import run_onnx

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 3, 32, 32)


def _run(model: ir.Model | onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    return run_onnx(proto.SerializeToString(), x)


class Shuffle(nn.Module):
    """Run-time shapes (view through x.size()), BN, hard-swish and SiLU written out, dropout."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc, self.drop = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.Linear(8, 10),
            nn.Dropout(0.2),
        )

    def forward(self, x):
        x = self.bn(self.conv(x))
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = silu(hswish(x))
        return self.fc(self.drop(x.mean((2, 3))))


@pytest.fixture(scope="module")
def shuffle_onnx(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("shuffle")
    return {
        (op, dyn): export(Shuffle().eval(), d / f"s{op}{dyn}.onnx", SHAPE, op, dyn)
        for op in (11, 17)
        for dyn in (False, True)
    }


def test_bind_shape_binds_symbols_and_names_a_fixed_mismatch():
    assert bind_shape("x", ["N", 3, None, "W"], (2, 3, 48, 192)) == (2, 3, 48, 192)
    assert bind_shape("x", [None, 3, 224, 224], None) == (1, 3, 224, 224)
    with pytest.raises(InputShapeError, match=r"\(N, 3, \?, \?\).*fixed dim 1 is 3"):
        bind_shape("x", ["N", 3, None, None], (1, 4, 48, 192))
    with pytest.raises(InputShapeError, match="dynamic dimensions"):
        bind_shape("x", ["N", 3, "H", "W"], None)


def test_dynamic_model_compiles_at_the_given_shape(shuffle_onnx, tmp_path):
    """The issue's refusal: a (-1, 3, '?', '?') model with --input-shape now binds and compiles."""
    result = api.compile(
        api.make_config(
            str(shuffle_onnx[(11, True)]), "onnx-cpu", tmp_path / "out", input_shape=(1, 3, 48, 64), verify_samples=2
        )
    )
    canon = next(p["metrics"] for p in result.manifest["passes"] if p["name"] == "canonicalize")
    assert canon["bound_dims"] == ["N", "H", "W"] and canon["opset"] == {"from": 11, "to": 17}
    assert canon["removed_ops"]["Shape"] >= 4 and canon["rewrites"]["hard_activation_fused"] == 1
    assert canon["patterns"] == {"hardswish": 1, "silu": 1}
    assert result.manifest["inputs"][0]["shape"] == [1, 3, 48, 64]


@pytest.mark.parametrize("opset,dynamic", [(11, True), (11, False), (17, True)])
def test_canonical_form_computes_what_the_source_computes(shuffle_onnx, opset, dynamic):
    source = onnx.load(str(shuffle_onnx[(opset, dynamic)]))
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    model, report = canonicalize(ir.from_proto(source), SHAPE, (13, 17), 17)
    ops = op_counts(model.graph)
    assert not {"Shape", "Identity", "Dropout", "BatchNormalization", "Div"} & set(ops)
    assert ops.get("Gather", 0) == report.rewrites.get("channel_shuffle_to_gather", 0) == 1  # the shuffle, not shapes
    assert ops["HardSwish"] == 1 and ops["GlobalAveragePool"] == 1 and "ReduceMean" not in ops
    np.testing.assert_allclose(_run(model, x)[0], _run(source, x)[0], rtol=1e-4, atol=1e-5)
    assert report.nodes_after < report.nodes_before


class PaddedWindows(nn.Module):
    """A Swin-style block: the window padding and partition sizes computed from the input's run-time shape."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(8, 8)

    def forward(self, x):
        b, h, w, c = x.shape
        y = nn.functional.pad(x, (0, 0, 0, (7 - w % 7) % 7, 0, (7 - h % 7) % 7))
        _, ph, pw, _ = y.shape
        y = y.view(b, ph // 7, 7, pw // 7, 7, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 49, c)
        y = self.mix(y).view(b, ph // 7, pw // 7, 7, 7, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        return x + y[:, :h, :w, :].contiguous()


def test_shape_subgraphs_fold_through_a_deep_stack_of_blocks(tmp_path):
    """Each folding round resolves about one block's shapes (a Reshape's shape folds, then the Shape ops
    below it): torchvision's Swin-T, 12 such blocks, kept 120 Shape ops after 8 rounds and was refused for
    rpi4 and ascend310. Twelve blocks here; every Shape folds and the function is unchanged."""
    torch.manual_seed(0)
    shape = (1, 12, 12, 8)
    path = export(
        nn.Sequential(*[PaddedWindows() for _ in range(12)]).eval(), tmp_path / "windows.onnx", shape, 17, False
    )
    source = onnx.load(path)
    assert op_counts(ir.from_proto(source).graph)["Shape"] >= 48
    model, _ = canonicalize(ir.from_proto(source), shape, (11, 17), 17)
    assert "Shape" not in op_counts(model.graph)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(source, x)[0], rtol=1e-5, atol=1e-5)


def test_light_caffe2_model_folds_its_generated_weights_and_converts_from_opset_9():
    source = onnx.load(str(light_model_dir() / "light_resnet50.onnx"))
    model, report = canonicalize(ir.from_proto(source), (1, 3, 224, 224), (13, 17), 17)
    ops = op_counts(model.graph)
    assert report.opset_from == 9 and report.opset_to == 17 and report.initializer_inputs_removed > 200
    assert report.removed_ops["ConstantOfShape"] == 239 and report.rewrites["sum_to_add"] == 16
    assert not {"ConstantOfShape", "Sum", "BatchNormalization"} & set(ops)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(source, x)[0], atol=1e-6)


def _graph(nodes, inits, shape=(1, 4, 8, 8), opset=17, outputs=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    outs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_standalone_batchnorm_and_affine_chains_become_one_mul_add():
    rng = np.random.default_rng(1)
    c = 4
    inits = {
        "g": rng.random(c, np.float32) + 0.5,
        "b": rng.standard_normal(c).astype(np.float32),
        "m": rng.standard_normal(c).astype(np.float32),
        "v": rng.random(c, np.float32) + 0.5,
        "s": rng.standard_normal((c, 1, 1)).astype(np.float32),
        "t": rng.standard_normal((c, 1, 1)).astype(np.float32),
        "six": np.array(6.0, np.float32),
    }
    proto = _graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["bn"]),
            helper.make_node("Mul", ["bn", "s"], ["ms"]),
            helper.make_node("Add", ["ms", "t"], ["at"]),
            helper.make_node("Div", ["at", "six"], ["y"]),
        ],
        inits,
    )
    model, report = canonicalize(ir.from_proto(proto), (1, c, 8, 8), (13, 17), 17)
    assert op_counts(model.graph) == {"Add": 1, "Mul": 1, "Relu": 1}
    assert report.rewrites == {"batchnorm_to_mul_add": 1, "div_by_constant_to_mul": 1, "affine_chain_merged": 1}
    x = rng.standard_normal((1, c, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(proto, x)[0], rtol=1e-5, atol=1e-5)


def test_per_channel_affine_after_conv_folds_into_it():
    rng = np.random.default_rng(2)
    inits = {
        "w": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
        "s": rng.random((1, 6, 1, 1), np.float32) + 0.5,
        "t": rng.standard_normal((6, 1, 1)).astype(np.float32),
    }
    proto = _graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Mul", ["c", "s"], ["m"]),
            helper.make_node("Add", ["m", "t"], ["y"]),
        ],
        inits,
    )
    model, report = canonicalize(ir.from_proto(proto), (1, 4, 8, 8), (13, 17), 17)
    assert op_counts(model.graph) == {"Conv": 1} and report.rewrites == {"affine_folded_into_conv": 2}
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(proto, x)[0], rtol=1e-4, atol=1e-4)


def test_softmax_over_the_last_axis_behind_flatten_and_reshape_is_one_softmax():
    """How ONNX's converter writes an opset-11 Softmax whose input rank it cannot see (an Ultralytics DFL
    exported at opset 11 with dynamic axes): Flatten → Softmax → Reshape back. Over the last axis that is
    one Softmax, which the float decode then recognizes; over more axes the detour stays."""

    def detour(axis: int) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"], axis=axis),
            helper.make_node("Softmax", ["f"], ["s"], axis=-1),
            helper.make_node("Shape", ["r"], ["shape"]),
            helper.make_node("Reshape", ["s", "shape"], ["y"]),
        ]
        return _graph(nodes, {}, shape=(1, 4, 8, 16), opset=13)

    x = np.random.default_rng(3).standard_normal((1, 4, 8, 16)).astype(np.float32)
    model, report = canonicalize(ir.from_proto(detour(3)), (1, 4, 8, 16), (13, 17), 17)
    assert op_counts(model.graph) == {"Relu": 1, "Softmax": 1} and report.rewrites == {"softmax_unflattened": 1}
    np.testing.assert_allclose(_run(model, x)[0], _run(detour(3), x)[0], rtol=1e-5, atol=1e-6)
    model, report = canonicalize(ir.from_proto(detour(2)), (1, 4, 8, 16), (13, 17), 17)
    assert "softmax_unflattened" not in report.rewrites and op_counts(model.graph)["Flatten"] == 1
    np.testing.assert_allclose(_run(model, x)[0], _run(detour(2), x)[0], rtol=1e-5, atol=1e-6)


def test_a_division_by_a_tensor_stays_a_division():
    proto = _graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Div", ["x", "r"], ["y"])], {})
    model, report = canonicalize(ir.from_proto(proto), (1, 4, 8, 8), (13, 17), 17)
    assert op_counts(model.graph) == {"Div": 1, "Relu": 1} and "div_by_constant_to_mul" not in report.rewrites


def test_opset_conversion_names_the_op_it_cannot_convert():
    w = np.ones((4, 4), np.float32)
    proto = _graph(
        [helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-1)], {"s": w[0]}, shape=(1, 4, 4, 4)
    )
    with pytest.raises(OpsetConversionError, match="op LayerNormalization does not convert") as e:
        convert_opset(proto, 15)
    assert "opset 15" in e.value.hint


def test_going_down_an_opset_whose_ops_did_not_change_is_a_relabel():
    proto = _graph([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": np.ones((2, 4, 1, 1), np.float32)}, opset=17)
    assert next(o.version for o in convert_opset(proto, 15).opset_import if o.domain == "") == 15


def test_an_opset_20_reduction_as_torch_dynamo_writes_it_converts_down_to_17():
    """torch 2.14's default exporter writes ReduceMean-18 with ``noop_with_empty_axes=0`` spelled out;
    onnx's adapter kept the flag and the rpi4 target (opsets up to 17) refused every such model."""
    axes = np.array([-1, -2], np.int64)
    proto = _graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1, noop_with_empty_axes=0)],
        {"axes": axes},
        opset=20,
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4, 1, 1))],
    )
    converted = convert_opset(proto, 17)
    (node,) = converted.graph.node
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == {"keepdims": 1, "axes": [-1, -2]}
    x = np.random.default_rng(0).normal(size=(1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(converted.SerializeToString(), x)[0], x.mean((2, 3), keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_an_opset_20_gelu_is_written_out_for_a_target_of_opset_17(approximate):
    """torch 2.14's default exporter writes Gelu-20, which has no earlier version to convert to: ONNX's own
    definition of it (Erf or Tanh arithmetic) replaces it, counted, and computes the same."""
    proto = _graph([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], {}, opset=20)
    model, report = canonicalize(ir.from_proto(proto), (1, 4, 8, 8), (17, 17), 17)
    assert report.opset_to == 17 and report.rewrites["gelu_expanded"] == 1
    assert "Gelu" not in op_counts(model.graph) and ("Erf" if approximate == "none" else "Tanh") in op_counts(
        model.graph
    )
    x = np.random.default_rng(0).normal(0, 3, size=(1, 4, 8, 8)).astype(np.float32)
    want = run_onnx(proto.SerializeToString(), x)[0]
    np.testing.assert_allclose(run_onnx(ir.to_proto(model).SerializeToString(), x)[0], want, atol=1e-5)


def test_an_op_in_the_targets_opset_is_not_written_out():
    proto = _graph([helper.make_node("Gelu", ["x"], ["y"])], {}, opset=20)
    model, report = canonicalize(ir.from_proto(proto), (1, 4, 8, 8), (13, 21), 17)
    assert op_counts(model.graph) == {"Gelu": 1} and "gelu_expanded" not in report.rewrites


@pytest.mark.parametrize(
    "equation,shapes",
    [
        ("B G H I D, B G H J D -> B G H I J", [(1, 2, 3, 5, 4), (1, 2, 3, 6, 4)]),  # MaxViT's q·kᵀ
        ("B G H I J, B G H J D -> B G H I D", [(1, 2, 3, 5, 6), (1, 2, 3, 6, 4)]),  # its weights times v
        ("bji,bkj->bik", [(2, 4, 3), (2, 5, 4)]),  # both operands stored the other way round
    ],
)
def test_an_einsum_that_is_a_batched_matrix_product_becomes_matmul(equation, shapes):
    a, b = (np.random.default_rng(k).normal(size=s).astype(np.float32) for k, s in enumerate(shapes))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shapes[0]))
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "k"], ["y"], equation=equation)],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(b, "k")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, report = canonicalize(ir.from_proto(proto), shapes[0], (13, 17), 17)
    assert report.rewrites["einsum_to_matmul"] == 1 and "Einsum" not in op_counts(model.graph)
    np.testing.assert_allclose(
        run_onnx(ir.to_proto(model).SerializeToString(), a)[0], np.einsum(equation.replace(" ", ""), a, b), rtol=1e-5
    )


@pytest.mark.parametrize("equation", ["ij,jk->ki", "ii->i", "bij,bjk->bik,", "bi,bj->bij", "...ij,...jk->...ik"])
def test_an_einsum_that_is_not_one_matrix_product_stays(equation):
    assert batched_matmul(equation) is None


def _pad_and_fill(opset: int, pad_inputs: list[str]):
    """Pad → Add(a ConstantOfShape fill), as torch's dynamo exporter writes Swin's window padding and mask."""
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 1, 2], np.int64), "shape": np.array([1, 4, 10, 12], np.int64)}
    if "axes" in pad_inputs:
        inits.update(pads=np.array([1, 2, 1, 2], np.int64), axes=np.array([2, 3], np.int64))
    fill = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.5])
    nodes = [
        helper.make_node("Pad", ["x", *pad_inputs], ["p"], mode="constant"),
        helper.make_node("ConstantOfShape", ["shape"], ["c"], value=fill),
        helper.make_node("Add", ["p", "c"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4, 10, 12))]
    return _graph(nodes, inits, opset=opset, outputs=outputs)


def test_an_opset_20_pad_and_fill_convert_down_as_the_older_ops_they_are():
    """ONNX's converter has no adapter for Pad 18 → 17 nor ConstantOfShape 20 → 19; a node that uses
    nothing the later versions added is the older op (Swin exported by torch 2.14 was refused for rpi4)."""
    proto = _pad_and_fill(20, ["pads", ""])
    converted = convert_opset(proto, 17)
    onnx.checker.check_model(converted)
    assert [o.domain for o in converted.opset_import] == [""] and {n.domain for n in converted.graph.node} == {""}
    x = np.random.default_rng(0).normal(size=(1, 4, 8, 8)).astype(np.float32)
    want = run_onnx(proto.SerializeToString(), x)[0]
    np.testing.assert_array_equal(run_onnx(converted.SerializeToString(), x)[0], want)


def test_an_opset_18_split_into_n_outputs_converts_down_with_its_sizes_given():
    """Split-18's ``num_outputs`` (torch.chunk as the dynamo exporter writes it) has no older form and no
    adapter: the sizes it cuts (ceil(7 / 3) = 3, 3, then 1) become the sizes input every version takes."""
    outputs = [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, (1, n, 2, 2)) for k, n in enumerate((3, 3, 1))]
    split = helper.make_node("Split", ["x"], ["y0", "y1", "y2"], axis=1, num_outputs=3)
    proto = _graph([split], {}, shape=(1, 7, 2, 2), opset=18, outputs=outputs)
    converted = convert_opset(proto, 17)
    x = np.random.default_rng(0).normal(size=(1, 7, 2, 2)).astype(np.float32)
    got = run_onnx(converted.SerializeToString(), x)
    assert [g.shape[1] for g in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(got, 1), x)


def test_a_pad_over_chosen_axes_has_no_older_form_and_is_refused_by_name():
    with pytest.raises(OpsetConversionError, match="op Pad does not convert"):
        convert_opset(_pad_and_fill(20, ["pads", "", "axes"]), 17)


def test_run_time_shape_subgraphs_get_no_qdq_even_without_canonicalization(shuffle_onnx, tmp_path):
    """Calibration used to die with `Type (tensor(float)) of output arg ... of node Concat does not match
    expected type (tensor(int64))`: the placement must see the shape chain as not data."""
    model = ir.from_proto(onnx.load(str(shuffle_onnx[(17, True)])))
    data = data_values(model.graph)
    shapes = [v for n in model.graph if n.op_type in ("Shape", "Gather", "Concat", "Unsqueeze") for v in n.outputs]
    assert shapes and not set(shapes) & data
    plan = plan_quantization(model, "outputs")
    assert not {v.name for v in shapes} & set(plan.activations)
    result = api.compile(
        api.make_config(
            str(shuffle_onnx[(17, True)]),
            "onnx-cpu",
            tmp_path / "out",
            input_shape=SHAPE,
            precision="int8",
            calib=_calib(tmp_path),
            skip=("canonicalize", "sensitivity"),
            calib_samples=16,
            verify_samples=4,
        )
    )
    assert result.manifest["fidelity"]["max_abs_error"] >= 0


def _calib(tmp_path, n=16, shape=SHAPE):
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(0).standard_normal((n,) + shape[1:]).astype(np.float32))
    return path


def test_check_support_groups_nodes_by_op_and_marks_what_canonicalize_removes(shuffle_onnx, tmp_path):
    with pytest.raises(Exception) as e:
        api.compile(
            api.make_config(
                str(shuffle_onnx[(17, True)]),
                "rpi4",
                tmp_path / "out",
                input_shape=SHAPE,
                precision="fp32",
                skip=("canonicalize",),
            )
        )
    err = e.value.cause
    assert isinstance(err, UnsupportedOpsError)
    lines = err.message.splitlines()
    assert lines[0].endswith("cannot run on rpi4:")
    assert len(lines) - 1 == len({line.split(" ×")[0] for line in lines[1:]})  # one line per op type
    shape_line = next(line for line in lines if line.strip().startswith("Shape ×"))
    names = shape_line.split(" — ")[1].replace(" [canonicalize removes all]", "")
    assert "[canonicalize removes all]" in shape_line and names == "/Shape, /Shape_1, /Shape_2, …"
    info = api.inspect(str(shuffle_onnx[(17, True)]), input_shape=SHAPE, target="rpi4")
    assert {g["op"]: g["canonicalize_removes"] == g["count"] for g in info["unsupported_groups"]}["Shape"]


def test_multi_output_models_keep_and_verify_every_output(tmp_path):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            f = torch.relu(self.body(x))
            return self.a(f), torch.sigmoid(self.b(f))

    torch.manual_seed(0)
    path = tmp_path / "two.onnx"
    torch.onnx.export(
        TwoHeads().eval(),
        (torch.zeros(SHAPE),),
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["x"],
        output_names=["boxes", "scores"],
        dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}},
    )
    for target in ("onnx-cpu", "rpi4"):
        result = api.compile(
            api.make_config(
                str(path),
                target,
                tmp_path / target,
                input_shape=SHAPE,
                precision="int8",
                calib=_calib(tmp_path),
                skip=("sensitivity",),
                calib_samples=16,
                verify_samples=4,
            )
        )
        assert [o["name"] for o in result.manifest["outputs"]] == ["boxes", "scores"]
        assert len(result.manifest["fidelity"]["max_abs_per_output"]) == 2


def test_a_bias_shared_through_identity_compiles_below_opset_16(tmp_path):
    """torch's exporter aliases equal initializers through Identity (the YOLO heads' equal biases): ONNX's
    converter has no Identity adapter below opset 16, and once the Identity is gone two layers read one
    bias, each needing its own int32 bias on its own input x weight scale."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
        "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32) * 3,
        "b": np.full(4, 0.5, np.float32),
    }
    nodes = [
        helper.make_node("Identity", ["b"], ["b_alias"], name="alias"),
        helper.make_node("Conv", ["x", "w1", "b"], ["h"], name="conv1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b_alias"], ["y"], name="conv2"),
    ]
    path = tmp_path / "shared_bias.onnx"
    shape = (1, 4, 8, 8)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    onnx.save(_graph(nodes, inits, outputs=[out]), path)
    config = api.make_config(
        str(path), "ascend310", tmp_path / "out", input_shape=shape, precision="int8",
        calib=_calib(tmp_path, shape=shape), skip=("sensitivity",),
    )  # fmt: skip
    result = api.compile(config)
    canon = next(p["metrics"] for p in result.manifest["passes"] if p["name"] == "canonicalize")
    assert canon["opset"] == {"from": 17, "to": 15} and result.manifest["status"] == "ok"
    biases = [n for n in onnx.load(result.output / "model.onnx").graph.node if n.name.startswith("b_Dequantize")]
    assert len(biases) == 2 and len({n.input[1] for n in biases}) == 2  # one bias scale per layer


def _uint8_input_model(cast_only: bool = True, front: str = "") -> onnx.ModelProto:
    """Raw pixels in, as many exported models take them: uint8 → Cast to float → ×1/255 → Conv → pooled logits.
    ``front`` "nhwc": channels-last pixels, a Transpose before the Cast (TF exports); "integer": a MaxPool on the
    integers before the Cast."""
    rng = np.random.default_rng(0)
    first = {"nhwc": "Transpose", "integer": "MaxPool"}.get(front)
    attrs = {"Transpose": {"perm": [0, 3, 1, 2]}, "MaxPool": {"kernel_shape": [1, 1]}}.get(first, {})
    nodes = [helper.make_node(first, ["pixels"], ["moved"], name="front", **attrs)] if first else []
    nodes += [
        helper.make_node("Cast", ["moved" if first else "pixels"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "s"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])]
    if not cast_only:  # the pixels also leave as they are
        nodes.append(helper.make_node("Identity", ["pixels"], ["echo"]))
        outputs.append(helper.make_tensor_value_info("echo", TensorProto.UINT8, list(SHAPE)))
    graph = helper.make_graph(
        nodes,
        "raw_pixels",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, _nhwc(SHAPE) if front == "nhwc" else list(SHAPE))],
        outputs,
        [
            numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_an_integer_pixel_input_read_through_cast_becomes_a_float_input():
    model, report = canonicalize(ir.from_proto(_uint8_input_model()), SHAPE, (13, 17), 17)
    assert report.rewrites["integer_input_to_float"] == 1 and "Cast" not in op_counts(model.graph)
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT
    pixels = np.random.default_rng(1).integers(0, 256, SHAPE)
    want = run_onnx(_uint8_input_model().SerializeToString(), pixels.astype(np.float32))  # cast by run_onnx
    np.testing.assert_array_equal(_run(model, pixels.astype(np.float32))[0], want[0])
    kept, report = canonicalize(ir.from_proto(_uint8_input_model(cast_only=False)), SHAPE, (13, 17), 17)
    assert not report.rewrites.get("integer_input_to_float")  # read as integers too: not a float input


def _nhwc(shape) -> list[int]:
    return [shape[0], *shape[2:], shape[1]]


@pytest.mark.parametrize("target", ["onnx-cpu", "rpi4"])
def test_channels_last_uint8_pixels_moved_by_a_transpose_before_the_cast_compile_int8(tmp_path, target):
    model, report = canonicalize(ir.from_proto(_uint8_input_model(front="nhwc")), _nhwc(SHAPE), (13, 17), 17)
    assert report.rewrites["integer_input_to_float"] == 1 and "Cast" not in op_counts(model.graph)
    path, calib = tmp_path / "nhwc.onnx", tmp_path / "nhwc.npy"
    onnx.save(_uint8_input_model(front="nhwc"), path)
    np.save(calib, np.random.default_rng(0).integers(0, 256, [16, *_nhwc(SHAPE)[1:]]).astype(np.float32))
    result = api.compile(
        api.make_config(
            str(path), target, tmp_path / "out", precision="int8", calib=calib, skip=("sensitivity",),
            scale=1.0, layout="NHWC", calib_samples=16, verify_samples=4,
        )
    )  # fmt: skip
    assert result.manifest["status"] == "ok"


def test_pixels_computed_on_as_integers_get_a_named_error_for_int8_and_compile_in_fp32(tmp_path):
    path, calib = tmp_path / "integer.onnx", tmp_path / "integer.npy"
    onnx.save(_uint8_input_model(front="integer"), path)
    np.save(calib, np.random.default_rng(0).integers(0, 256, (16,) + SHAPE[1:]).astype(np.float32))

    def config(precision, out):
        return api.make_config(
            str(path), "onnx-cpu", tmp_path / out, precision=precision, calib=calib, skip=("sensitivity",),
            scale=1.0, verify_samples=4,
        )  # fmt: skip

    with pytest.raises(PassFailedError) as e:
        api.compile(config("int8", "int8"))
    assert e.value.pass_name == "calibrate" and isinstance(e.value.cause, UnsupportedOpsError)
    assert "computes on as integers (MaxPool 'front')" in e.value.cause.message and "Cast" in e.value.cause.hint
    assert api.compile(config("fp32", "fp32")).manifest["status"] == "ok"


@pytest.mark.parametrize("target", ["onnx-cpu", "openvino-cpu", "rpi4"])
def test_a_uint8_input_model_compiles_int8_with_raw_pixels(tmp_path, target):
    path, calib = tmp_path / "pixels.onnx", tmp_path / "pixels.npy"
    onnx.save(_uint8_input_model(), path)
    np.save(calib, np.random.default_rng(0).integers(0, 256, (16,) + SHAPE[1:]).astype(np.float32))

    def config(out, **kw):
        return api.make_config(
            str(path), target, tmp_path / out, precision="int8", calib=calib, skip=("sensitivity",), **kw
        )

    with pytest.raises(ConfigError, match="is uint8: it takes the pixels") as e:
        api.compile(config("scaled"))
    assert "--scale 1" in e.value.hint
    result = api.compile(config("raw", scale=1.0, calib_samples=16, verify_samples=4))
    m = result.manifest
    assert m["status"] == "ok" and m["inputs"][0]["dtype"] == ("int8" if target == "rpi4" else "float32")
    assert m["quantization"]["error_vs_float"]["top1_agreement"] >= 0.75  # against the uint8 source model


@pytest.mark.parametrize("precision, target", [("fp32", "onnx-cpu"), ("int8", "onnx-cpu"), ("int8", "rpi4")])
def test_a_half_precision_model_compiles_from_float32(tmp_path, precision, target):
    """``model.half()`` exports: float16 weights, input and output. The graph is widened to float32 (exact) and
    verified against the float16 model (run on float16 input) with verify's usual limits."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
    )
    model = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval().half()
    path = tmp_path / "half.onnx"
    torch.onnx.export(model, (torch.zeros(SHAPE).half(),), str(path), dynamo=False, opset_version=13)
    result = api.compile(
        api.make_config(
            str(path), target, tmp_path / "out", precision=precision, calib=_calib(tmp_path), skip=("sensitivity",)
        )
    )
    m = result.manifest
    canon = next(p["metrics"] for p in m["passes"] if p["name"] == "canonicalize")
    assert canon["rewrites"]["float16_to_float32"] >= 5  # the initializers and the input
    assert m["status"] == "ok" and m["inputs"][0]["dtype"] in ("float32", "int8")


def test_a_trained_half_precision_model_is_verified_with_float16s_own_rounding_allowed(tmp_path):
    """The CIFAR-10 teacher exported with ``model.half()``: its float16 rounding puts it 1.04e-3 of its output
    range from the float32 artifact, past the float limit of 1e-3; verify allows float16's own error."""
    card = model_input(str(ROOT / "examples" / "cifar10" / "model.toml"))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (card.input.preprocess.mean, card.input.preprocess.std))

    class Normalized(nn.Module):  # as other exporters write it: the normalization in the graph, in float16 too
        def __init__(self):
            super().__init__()
            self.net = load_model(card.source, card.weights).torch_module
            self.register_buffer("mean", mean), self.register_buffer("std", std)

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    path = tmp_path / "teacher-half.onnx"
    torch.onnx.export(Normalized().eval().half(), (torch.zeros(SHAPE).half(),), str(path), dynamo=False)
    images = tmp_path / "images.npy"
    np.save(images, calibration_images(SHAPE, 16))
    result = api.compile(api.make_config(str(path), "onnx-cpu", tmp_path / "out", precision="fp32", calib=images))
    verify = next(p["metrics"] for p in result.manifest["passes"] if p["name"] == "verify")
    assert result.manifest["status"] == "ok"
    assert 1e-3 < verify["relative_error"] < 1e-2


class Norms(nn.Module):
    """LayerNorm over the last axis (as a transformer's tokens) and over the last two, with and without
    an affine, as torch writes them out in primitives below opset 17."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, 4)
        self.ln1, self.ln2 = nn.LayerNorm(8), nn.LayerNorm([8, 8], elementwise_affine=False)
        with torch.no_grad():
            self.ln1.weight.uniform_(0.5, 1.5), self.ln1.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)  # (N, 64 tokens, 8)
        return self.ln2(self.ln1(t).reshape(-1, 8, 8, 8))


@pytest.mark.parametrize("opset", [11, 13])
def test_a_layernorm_written_out_below_opset_17_becomes_the_fused_op_where_the_target_has_it(tmp_path, opset):
    torch.manual_seed(0)
    source_path = export(Norms().eval(), tmp_path / "norms.onnx", SHAPE, opset, False)
    source = onnx.load(str(source_path))
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    model, report = canonicalize(ir.from_proto(source), SHAPE, (13, 21), 17)  # onnx-cpu's range
    ops = op_counts(model.graph)
    assert report.opset_to == 17 and report.rewrites["layernorm_fused"] == 2
    assert ops["LayerNormalization"] == 2 and not {"ReduceMean", "Sqrt", "Div", "Pow"} & set(ops)
    assert "square_to_mul" not in report.rewrites  # the replaced nodes are not counted by later rewrites
    np.testing.assert_allclose(_run(model, x)[0], _run(source, x)[0], rtol=1e-4, atol=1e-4)

    kept, kept_report = canonicalize(
        ir.from_proto(source), SHAPE, (13, 21), 17, decompose=frozenset({"LayerNormalization"})
    )
    assert "LayerNormalization" not in op_counts(kept.graph)  # rpi4, Ascend: their lowering takes the primitives
    capped, _ = canonicalize(ir.from_proto(source), SHAPE, (11, 15), 13)  # a range below 17
    assert "LayerNormalization" not in op_counts(capped.graph)


def test_a_decomposed_layernorm_writes_no_mul_by_one_or_add_of_zero(tmp_path):
    """A LayerNorm as initialized (torch shares its identical ones and zeros through Identity nodes): no
    Mul/Add for them, whose int8 grids a converter that drops them finds unequal at the next Gather."""

    class Fresh(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, 4)
            self.ln1, self.ln2 = nn.LayerNorm(8), nn.LayerNorm(8)
            with torch.no_grad():
                self.ln2.weight.uniform_(0.5, 1.5)  # ln2's bias stays zero

        def forward(self, x):
            return self.ln2(self.ln1(self.conv(x).flatten(2).transpose(1, 2)))

    torch.manual_seed(0)
    source = onnx.load(str(export(Fresh().eval(), tmp_path / "fresh.onnx", SHAPE, 17, False)))
    model, report = canonicalize(
        ir.from_proto(source), SHAPE, (13, 17), 17, decompose=frozenset({"LayerNormalization"})
    )
    assert report.rewrites["layernorm_decomposed"] == 2 and op_counts(model.graph)["Sqrt"] == 2
    affine = [n.name for n in model.graph if n.name.endswith(("_scaled", "_shifted"))]
    assert affine == ["/ln2/LayerNormalization_scaled"]
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(source, x)[0], rtol=1e-4, atol=1e-4)


class NormThenProject(nn.Module):
    """A LayerNorm read by two biased projections (attention's query and value), one without a shift by a
    projection without bias, and one also read by a residual Add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, 4)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(8), nn.LayerNorm(8, bias=False), nn.LayerNorm(8)
        self.q, self.v, self.plain, self.fc = (
            nn.Linear(8, 6),
            nn.Linear(8, 6),
            nn.Linear(8, 6, bias=False),
            nn.Linear(8, 8),
        )
        with torch.no_grad():
            for ln in (self.ln1, self.ln2, self.ln3):
                ln.weight.uniform_(0.5, 1.5)
                if ln.bias is not None:
                    ln.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        a = self.ln1(t)
        b = self.ln3(t)
        return self.q(a) * self.v(a), self.plain(self.ln2(t)), self.fc(b) + b


def test_a_written_out_layernorms_scale_and_shift_move_into_the_projections_it_feeds(tmp_path):
    torch.manual_seed(0)
    source = onnx.load(str(export(NormThenProject().eval(), tmp_path / "ln.onnx", SHAPE, 17, False)))
    model, report = canonicalize(
        ir.from_proto(source), SHAPE, (13, 17), 17, decompose=frozenset({"LayerNormalization"})
    )
    # ln1 (both readers biased projections): scale and shift folded; ln2 (a scale, into a projection without
    # bias): folded; ln3 (a residual Add reads it too): neither
    assert report.rewrites["affine_folded_into_matmul"] == 3
    affine = sorted(n.name for n in model.graph if n.name.endswith(("_scaled", "_shifted")))
    assert affine == ["/ln3/LayerNormalization_scaled", "/ln3/LayerNormalization_shifted"]
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    for got, want in zip(_run(model, x), _run(source, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_gelus_half_before_a_projection_stays_for_the_pattern_a_backend_lowers_whole(tmp_path):
    """GELU as exporters write it ends in ``· 0.5``; folded into the next projection, the erf form would no
    longer be recognized, and rpi4 refused the bare Erf (it has no TFLite op)."""
    mlp = nn.Sequential(nn.Flatten(2), nn.Linear(32 * 32, 16), nn.GELU(), nn.Linear(16, 10)).eval()
    source = onnx.load(str(export(mlp, tmp_path / "mlp.onnx", SHAPE, 17, False)))
    model, report = canonicalize(ir.from_proto(source), SHAPE, (13, 17), 17)
    assert "affine_folded_into_matmul" not in report.rewrites and op_counts(model.graph)["Erf"] == 1


def test_a_folded_transpose_of_a_constant_is_deduplicated_like_any_other():
    """Swin-T's relative position bias (a table transposed and unsqueezed, folded to a constant) came out of
    folding as a strided view, which onnx-ir's deduplication could not hash: every Swin was refused."""
    table = np.random.default_rng(0).standard_normal((7, 7, 4)).astype(np.float32)
    proto = _graph(
        [
            helper.make_node("Transpose", ["t"], ["tt"], perm=[2, 0, 1]),
            helper.make_node("Unsqueeze", ["tt", "axes"], ["bias"]),
            helper.make_node("Add", ["x", "bias"], ["y"]),
        ],
        {"t": table, "axes": np.array([0], np.int64)},
        shape=(1, 4, 7, 7),
    )
    model, _ = canonicalize(ir.from_proto(proto), (1, 4, 7, 7), (13, 17), 17)
    assert op_counts(model.graph) == {"Add": 1}
    x = np.random.default_rng(1).standard_normal((1, 4, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(proto, x)[0])


def test_twin_layers_on_one_input_become_one():
    """Two convolutions with equal weights (separate initializers) reading one tensor, as the light Inception's
    constant weights make its 1×1 branches: one is left, read by both branches. The TFLite converter merged the
    twins itself and then found two int8 grids on one tensor (the model was refused as not fully int8)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w_a"], ["a"], name="branch_a"),
        helper.make_node("Conv", ["x", "w_b"], ["b"], name="branch_b"),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Sigmoid", ["b"], ["sb"]),
        helper.make_node("Concat", ["ra", "sb"], ["y"], axis=1),
    ]
    source = _graph(nodes, {"w_a": w, "w_b": w.copy()}, shape=(1, 3, 4, 4))
    model, report = canonicalize(ir.from_proto(source), (1, 3, 4, 4), (13, 17), 17)
    assert op_counts(model.graph)["Conv"] == 1 and report.removed_ops["Conv"] == 1
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(source, x)[0], rtol=1e-6)


def test_an_int8_vit_exported_at_opset_13_tracks_float_as_its_opset_17_export_does(tmp_path):
    """The coverage ViT's finding: at opset 13 its written-out LayerNorms got Q/DQ on their statistics
    (22 dB against float on onnx-cpu) where the opset-17 export's fused op got none (28 dB)."""
    from conformance_models import ARCHITECTURES, calibration_images, realistic_weights
    from edgekd.backends import get_backend
    from edgekd.metrics import sqnr_db
    from edgekd.runtime import onnx_run_fn, ort_session

    shape = (1, 3, 32, 32)
    images = calibration_images(shape, 48)
    np.save(tmp_path / "calib.npy", images)
    torch.manual_seed(0)
    model = realistic_weights(ARCHITECTURES["vit"](tokens=16), images[:16])  # 16 patches of 8×8
    sqnr = {}
    for opset in (13, 17):
        path = export(model, tmp_path / f"vit{opset}.onnx", shape, opset, False)
        result = api.compile(
            api.make_config(
                str(path),
                "onnx-cpu",
                tmp_path / f"out{opset}",
                input_shape=shape,
                precision="int8",
                calib=tmp_path / "calib.npy",
                skip=("sensitivity",),
                verify_samples=4,
            )
        )
        m = result.manifest
        run = get_backend(m["artifact"]["backend"]).session(result.output / m["artifact"]["model_file"])
        want = np.concatenate([onnx_run_fn(ort_session(path))(images[i : i + 1])[0] for i in range(len(images))])
        got = np.concatenate([run(images[i : i + 1])[0] for i in range(len(images))])
        sqnr[opset] = sqnr_db(want, got)
    assert abs(sqnr[13] - sqnr[17]) < 1.0, sqnr


def test_a_model_in_range_keeps_its_opset_when_the_optional_raise_for_layernorm_cannot_convert(tmp_path, monkeypatch):
    import edgekd.ir.canonical as canonical

    def refuse(model, opset):
        raise OpsetConversionError(f"cannot convert the model to opset {opset}: op X does not convert")

    monkeypatch.setattr(canonical, "convert_opset", refuse)
    source = onnx.load(str(export(Norms().eval(), tmp_path / "norms.onnx", SHAPE, 13, False)))
    model, report = canonicalize(ir.from_proto(source), SHAPE, (13, 21), 17)
    assert report.opset_to is None and "LayerNormalization" not in op_counts(model.graph)
    with pytest.raises(OpsetConversionError):  # below the range, conversion is not optional
        canonicalize(ir.from_proto(source), SHAPE, (14, 21), 17)


def test_a_normalization_by_another_power_is_not_taken_for_a_layernorm():
    """(x - mean) / sqrt(mean((x - mean)³) + ε) has LayerNorm's shape but not its arithmetic."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["c"]),
        helper.make_node("Pow", ["c", "three"], ["p"]),
        helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Div", ["c", "s"], ["y"]),
    ]
    shape = [1, 4, 8]
    graph = helper.make_graph(
        nodes,
        "cubed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [
            numpy_helper.from_array(np.array(3.0, np.float32), "three"),
            numpy_helper.from_array(np.array(9.0, np.float32), "eps"),
        ],
    )
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.abs(np.random.default_rng(0).standard_normal(shape)).astype(np.float32)
    model, report = canonicalize(ir.from_proto(source), shape, (13, 21), 17)
    assert "LayerNormalization" not in op_counts(model.graph) and not report.rewrites.get("layernorm_fused")
    np.testing.assert_allclose(_run(model, x)[0], _run(source, x)[0], rtol=1e-5, atol=1e-6)

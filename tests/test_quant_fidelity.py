"""Issue 11's two fidelity outliers in miniature: DenseNet's BatchNorm reading a Concat of parts whose
ranges differ, and ViT's LayerNorm with a token of tiny variance (the class token) and its logits,
calibrated one sample at a time. Each test measures the simulation against float."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import compile_quick
from edgekd.backends import get_backend
from edgekd.ir.canonical import canonicalize
from edgekd.ir.patterns import composites
from edgekd.metrics import sqnr_db
from edgekd.quant.calibrate import Calibration, observe
from edgekd.quant.observers import make_observer
from edgekd.quant.placement import plan_quantization
from edgekd.quant.simulate import quantized_copy
from edgekd.runtime import run_onnx, simulation_fn

SCHEMES = {"outputs": "asymmetric-int8", "qlinear": "asymmetric-uint8", "quantizable-inputs": "symmetric-by-sign"}


def _init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def _model(nodes, inits, shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def simulation_sqnr(model: onnx.ModelProto, placement: str, x: np.ndarray, **facts) -> float:
    """SQNR of the QDQ simulation against float on ``x``, calibrated on ``x`` (EMA, batches of 32)."""
    m = ir.from_proto(model)
    plan = plan_quantization(m, placement, **facts)
    observers, n = observe(ir.to_proto(m), plan.observed, [x], lambda t: make_observer("ema"), 32)
    calibration = Calibration(SCHEMES[placement], plan, observers, n, "test", "", "ema")
    simulate = simulation_fn(quantized_copy(m, plan, calibration.activation_qparams(plan)))
    want = [run_onnx(model.SerializeToString(), x[i : i + 1])[0] for i in range(len(x))]
    got = [simulate(x[i : i + 1])[0] for i in range(len(x))]
    return sqnr_db(np.concatenate(want), np.concatenate(got))


# --- DenseNet: a BatchNorm reading a Concat ----------------------------------------------------------


def _conv(x: str, out: str, cin: int, cout: int, gain: float, rng: np.random.Generator) -> tuple[list, list]:
    w, b = rng.standard_normal((cout, cin, 3, 3)) * 0.3 * gain, rng.standard_normal(cout) * 0.1 * gain
    node = helper.make_node("Conv", [x, f"{out}_w", f"{out}_b"], [out], name=out, pads=[1, 1, 1, 1])
    return [node], [_init(f"{out}_w", w), _init(f"{out}_b", b)]


def _batchnorm_relu(x: str, out: str, scale: list[float], rng: np.random.Generator) -> tuple[list, list]:
    """``relu(x * scale + shift)`` per channel: a BatchNorm no convolution absorbed, written out."""
    nodes = [
        helper.make_node("Mul", [x, f"{out}_scale"], [f"{out}_scaled"], name=f"{out}_mul"),
        helper.make_node("Add", [f"{out}_scaled", f"{out}_shift"], [f"{out}_shifted"], name=f"{out}_add"),
        helper.make_node("Relu", [f"{out}_shifted"], [out], name=f"{out}_relu"),
    ]
    shift = rng.standard_normal((len(scale), 1, 1)) * 0.1
    return nodes, [_init(f"{out}_scale", np.reshape(scale, (-1, 1, 1))), _init(f"{out}_shift", shift)]


def dense_block() -> onnx.ModelProto:
    """Two DenseNet layers: ``cat1 = [a, b]`` with ``a`` 100× narrower than ``b``; ``d = conv(bn1(cat1))``;
    ``cat2 = [cat1, d]``; ``y = conv(bn2(cat2))``, each BatchNorm scaling its parts back to similar spreads."""
    rng = np.random.default_rng(1)
    parts = [
        _conv("x", "a", 4, 4, 0.03, rng),
        _conv("x", "b", 4, 4, 3.0, rng),
        ([helper.make_node("Concat", ["a", "b"], ["cat1"], name="cat1", axis=1)], []),
        _batchnorm_relu("cat1", "p1", [10.0] * 4 + [0.2] * 4, rng),
        _conv("p1", "d", 8, 4, 1.0, rng),
        ([helper.make_node("Concat", ["cat1", "d"], ["cat2"], name="cat2", axis=1)], []),
        _batchnorm_relu("cat2", "p2", [10.0] * 4 + [0.2] * 4 + [1.0] * 4, rng),
        _conv("p2", "y", 12, 4, 1.0, rng),
    ]
    return _model([n for nodes, _ in parts for n in nodes], [i for _, inits in parts for i in inits], (1, 4, 8, 8))


@pytest.mark.parametrize("placement", ["qlinear", "quantizable-inputs"])
def test_a_batchnorm_over_a_concat_reads_each_part_on_its_own_grid(placement):
    """One grid over [a, b] left ``a`` a few codes, which the BatchNorm multiplied by 10 (measured on this
    block with a pair on the Concats: 12.3 dB under qlinear, 16.8 dB under quantizable-inputs; without,
    34.2 and 38.2 dB)."""
    x = np.random.default_rng(2).standard_normal((32, 4, 8, 8)).astype(np.float32)
    plan = plan_quantization(ir.from_proto(dense_block()), placement)
    assert "cat1" not in plan.activations and "cat2" not in plan.activations
    assert simulation_sqnr(dense_block(), placement, x) > 30


def test_a_target_with_one_grid_per_concat_keeps_the_concat_pair():
    plan = plan_quantization(ir.from_proto(dense_block()), "outputs", concat_grid=True)
    assert {"cat1", "cat2"} <= set(plan.activations)  # TFLite's int8 CONCATENATION writes one grid


def test_a_concat_read_by_a_convolution_keeps_its_pair():
    rng = np.random.default_rng(1)
    (a, wa), (b, wb), (conv, wc) = (
        _conv(x, out, cin, 4, 1.0, rng) for x, out, cin in (("x", "a", 4), ("x", "b", 4), ("cat1", "y", 8))
    )
    nodes = [*a, *b, helper.make_node("Concat", ["a", "b"], ["cat1"], name="cat1", axis=1), *conv]
    inits = wa + wb + wc
    plan = plan_quantization(ir.from_proto(_model(nodes, inits, (1, 4, 8, 8))), "qlinear")
    assert "cat1" in plan.activations  # the convolution's integer kernel reads it


# --- ViT: calibration of a graph that runs one sample at a time ---------------------------------------


def _classifier(flatten: str) -> onnx.ModelProto:
    """Conv → flatten → Gemm logits. ``flatten``: "any" (Reshape to [-1, 256]), "baked" (to [1, 256]: the batch
    size baked in, as static exports write it) or "gather" (every value to one row, then a Gather of the first
    256: torch's dynamo exporter's ``as_strided``, which runs at any batch size and reads the first sample)."""
    rng = np.random.default_rng(0)  # the same weights either way
    conv, inits = _conv("x", "c", 4, 4, 1.0, rng)
    shape = [-1, 256] if flatten == "any" else [1, 256]
    flat_input = "c"
    nodes = list(conv)
    if flatten == "gather":
        flat_input = "picked"
        nodes += [
            helper.make_node("Reshape", ["c", "row"], ["all"], name="all"),
            helper.make_node("Gather", ["all", "first"], ["picked"], name="picked", axis=1),
        ]
        inits += [
            numpy_helper.from_array(np.asarray([1, -1], np.int64), "row"),
            numpy_helper.from_array(np.arange(256, dtype=np.int64), "first"),
        ]
    nodes.append(helper.make_node("Reshape", [flat_input, "shape"], ["flat"], name="flat"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc"], ["y"], name="fc", transB=1))
    inits += [numpy_helper.from_array(np.asarray(shape, np.int64), "shape"), _init("fc", rng.normal(0, 0.1, (10, 256)))]
    return _model(nodes, inits, (1, 4, 8, 8))


def test_a_graph_that_takes_one_sample_at_a_time_is_calibrated_in_whole_batches():
    """The EMA observer moves once per batch: one update per sample left it near the first sample's range
    (the coverage ViT's logits calibrated to [-2.0, 2.7] against [-4.7, 6.1] on held-out images)."""
    x = np.random.default_rng(2).standard_normal((64, 4, 8, 8)).astype(np.float32)

    def logits_range(model: onnx.ModelProto) -> tuple:
        plan = plan_quantization(ir.from_proto(model), "outputs")
        observers, seen = observe(model, plan.observed, [x], lambda t: make_observer("ema"), 32)
        assert seen == 64
        return tuple(float(v) for v in observers["y"].min_max())

    assert logits_range(_classifier("baked")) == pytest.approx(logits_range(_classifier("any")), rel=1e-5)


def test_a_graph_that_runs_a_batch_but_reads_only_its_first_sample_is_calibrated_one_sample_at_a_time():
    """A Gather of constant indices over the flattened batch runs at any batch size: batched, every sample's
    logits would be the first one's, and the observers would see one sample in 32."""
    x = np.random.default_rng(2).standard_normal((64, 4, 8, 8)).astype(np.float32)
    x[1::2] *= 4  # every second sample reaches four times as far

    def logits_range(model: onnx.ModelProto) -> tuple:
        plan = plan_quantization(ir.from_proto(model), "outputs")
        observers, _ = observe(model, plan.observed, [x], lambda t: make_observer("minmax"), 32)
        return tuple(float(v) for v in observers["y"].min_max())

    assert logits_range(_classifier("gather")) == pytest.approx(logits_range(_classifier("any")), rel=1e-5)


# --- ViT: a LayerNorm with a token of tiny variance, written out for int8 targets ----------------------

TOKENS, FEATURES = 8, 16
SHAPE = (1, 1, TOKENS, FEATURES)


def token_layernorm() -> onnx.ModelProto:
    """8 tokens of 16 features (the rows of a 1×8×16 image), LayerNorm over the features, a MatMul."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["tokens"], name="tokens"),
        helper.make_node("LayerNormalization", ["tokens", "gamma", "beta"], ["n"], name="ln", epsilon=1e-5),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="fc"),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([1, TOKENS, FEATURES], np.int64), "shape"),
        _init("gamma", rng.uniform(0.5, 1.5, FEATURES)),
        _init("beta", rng.standard_normal(FEATURES) * 0.1),
        _init("w", rng.standard_normal((FEATURES, FEATURES)) * 0.3),
    ]
    return _model(nodes, inits, SHAPE)


def with_class_token(n: int) -> np.ndarray:
    """``n`` samples whose token 0 is one small constant, as a ViT's class token is at its first LayerNorm."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, *SHAPE[1:])).astype(np.float32)
    x[:, 0, 0] = rng.standard_normal(FEATURES) * 0.05
    return x


def written_out(model: onnx.ModelProto) -> tuple[ir.Model, dict]:
    """``model`` canonicalized for a target without LayerNormalization; the rewrites it made."""
    canonical, report = canonicalize(ir.from_proto(model), SHAPE, (13, 17), 17, frozenset({"LayerNormalization"}))
    return canonical, report.rewrites


def test_a_written_out_layernorm_normalizes_by_one_reciprocal_square_root():
    model = token_layernorm()
    canonical, rewrites = written_out(model)
    assert rewrites["div_by_sqrt_to_rsqrt"] == 1
    assert [c.kind for c in composites(canonical.graph)] == ["rsqrt"]
    x = with_class_token(1)
    np.testing.assert_allclose(
        run_onnx(ir.to_proto(canonical).SerializeToString(), x)[0], run_onnx(model.SerializeToString(), x)[0], atol=1e-5
    )


@pytest.mark.parametrize("placement", ["outputs", "qlinear", "quantizable-inputs"])
def test_a_token_whose_variance_rounds_to_zero_is_not_divided_by_one_step(placement):
    """The class token's variance rounds to zero on its int8 grid. Divided by one step of the square root's
    grid it came out many times too large; multiplied by the saturated reciprocal, by about its own 1/σ
    (measured on this model, divided: 10.0, 7.1 and 0.4 dB against float; multiplied: 14.4 to 14.5 dB)."""
    canonical, _ = written_out(token_layernorm())
    assert simulation_sqnr(ir.to_proto(canonical), placement, with_class_token(32)) > 13


@pytest.mark.skipif(not get_backend("tflite").available(), reason="ai_edge_litert/tensorflow is not installed")
def test_tflite_rsqrt_of_a_zero_variance_matches_the_simulation(tmp_path):
    """TFLite's int8 RSQRT maps a zero input to its largest output, as the simulation's 1/sqrt(0) saturates
    (with a DIV by the square root instead, the artifact was 2 output steps from the simulation)."""
    onnx.save(token_layernorm(), tmp_path / "ln.onnx")
    np.save(tmp_path / "calib.npy", with_class_token(32))
    result = compile_quick(tmp_path / "ln.onnx", "rpi4", tmp_path / "out", SHAPE, tmp_path / "calib.npy")
    quantize = next(p for p in result.manifest["passes"] if p["name"] == "quantize")
    assert quantize["metrics"]["sqnr_db"] > 13
    assert result.manifest["fidelity"]["max_output_steps"] <= 1.01

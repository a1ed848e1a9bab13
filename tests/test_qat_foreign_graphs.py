"""QAT on graphs other exporters write: LayerNormalization (whole, or decomposed as the TFLite targets
lower it), GELU's Erf, attention's batched MatMul and Softmax, a class token joined by Concat, channel
shuffles by Gather. The torch graph runs what ONNX Runtime runs in float, and what the QDQ simulation
runs once quantized."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from conformance_models import ARCHITECTURES, calibration_images, export, realistic_weights
from edgekd import api
from edgekd.ir.canonical import canonicalize
from edgekd.ir.normalize import decompose_layernorm, div_by_sqrt
from edgekd.models.export import export_onnx
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.qat.graph import QuantGraph, SiteRanges
from edgekd.quant.calibrate import Calibration, observe
from edgekd.quant.observers import MinMaxObserver
from edgekd.quant.placement import plan_quantization
from edgekd.quant.qparams import SCHEMES
from edgekd.quant.simulate import quantized_copy
from edgekd.runtime import ort_session, simulation_fn

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return calibration_images(SHAPE, 12)


def _foreign_graph(arch: str, layernorm: str, images: np.ndarray) -> ir.Model:
    torch.manual_seed(0)
    model = realistic_weights(ARCHITECTURES[arch](), images)
    graph, _ = canonicalize(ir.from_proto(export_onnx(model, SHAPE, 17)), SHAPE, (13, 17), 17)
    FuseConvBnReluPass().run(type("State", (), {"onnx_model": graph})())
    if layernorm == "decomposed":
        assert decompose_layernorm(graph.graph, 17) > 0
        div_by_sqrt(graph.graph)
    return graph


def _each(run, images: np.ndarray) -> np.ndarray:
    return np.concatenate([run(images[i : i + 1])[0] for i in range(len(images))])


@pytest.mark.parametrize(
    "arch, layernorm",
    [("vit", "one op"), ("vit", "decomposed"), ("convnext", "one op"), ("convnext", "decomposed")]
    + [("shufflenetv2", "")],
)
@pytest.mark.parametrize("placement", ["outputs", "qlinear"])
def test_qat_runs_transformer_and_shuffle_graphs_as_onnx_runtime_and_the_simulation(arch, layernorm, placement, images):
    graph = _foreign_graph(arch, layernorm, images)
    proto = ir.to_proto(graph)
    ops = {n.op_type for n in proto.graph.node}
    expected = {"vit": {"Erf", "Softmax", "Concat"}, "convnext": {"Erf"}, "shufflenetv2": {"Gather"}}[arch]
    expected |= {"": set(), "one op": {"LayerNormalization"}, "decomposed": {"Sqrt", "ReduceMean"}}[layernorm]
    assert expected <= ops, ops
    session = ort_session(proto.SerializeToString())
    float_ref = _each(lambda x: session.run(None, {proto.graph.input[0].name: x}), images)
    float_graph = QuantGraph(graph)
    with torch.no_grad():
        float_got = float_graph(torch.from_numpy(images)).numpy()
    assert float_graph._one_at_a_time is False  # the whole batch at once
    np.testing.assert_allclose(float_got, float_ref, atol=2e-5 * np.abs(float_ref).max(), rtol=0)

    plan = plan_quantization(graph, placement)
    observers, seen = observe(proto, plan.observed, [images], lambda t: MinMaxObserver())
    calibration = Calibration("asymmetric-int8", plan, observers, seen, "", "", "minmax")
    qparams = calibration.activation_qparams(plan)
    fixed = {t: qparams[t] for t, s in plan.activations.items() if s.fixed_range is not None and t in qparams}
    ranges = {t: tuple(float(v) for v in o.min_max()) for t, o in observers.items()}
    quantized = QuantGraph(graph, plan, SiteRanges(SCHEMES["asymmetric-int8"], ranges, fixed)).eval()
    sim = _each(simulation_fn(quantized_copy(graph, plan, qparams)), images)
    with torch.no_grad():
        got = quantized(torch.from_numpy(images)).numpy()
    # Erf, Sqrt and Softmax round in the last bit differently in torch and ONNX Runtime; a value that lands
    # on a rounding boundary then moves one step, so the two agree closely, not bit for bit.
    assert np.abs(got - sim).max() <= 0.02 * np.abs(sim).max(), np.abs(got - sim).max()
    assert (got.argmax(1) == sim.argmax(1)).all()
    assert np.abs(got - float_ref).max() > 0  # it is quantized


@pytest.mark.parametrize("target", ["rpi4", "openvino-cpu"])
def test_compile_with_qat_epochs_trains_a_vision_transformer(tmp_path, images, labelled, target):
    """Through compile: LayerNormalization whole (OpenVINO) or decomposed (LiteRT), and the artifact verified."""
    torch.manual_seed(0)
    model = export(realistic_weights(ARCHITECTURES["vit"](), images), tmp_path / "vit.onnx", SHAPE, 17, False)
    config = api.make_config(
        str(model),
        target,
        tmp_path / "out",
        input_shape=SHAPE,
        precision="int8",
        calib=labelled,
        calib_samples=32,
        data=labelled,
        qat_epochs=1,
        verify_samples=8,
        skip=("sensitivity",),
        train_options={"batch_size": 16},
    )
    m = api.compile(config).manifest
    assert m["quantization"]["ranges_from"] == "qat" and m["qat"]["weights_changed"] > 0
    assert m["fidelity"].get("decisive_disagreements", 0) == 0


class _TorchAttention(torch.nn.Module):
    """torch's own nn.MultiheadAttention (torchvision's ViT uses it): its export folds the heads into the
    leading axis ([heads, tokens, dim] at batch 1), where a batch is no longer the leading dimension alone."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 16, 16, 16)
        self.attention = torch.nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(mixed.mean(1))


def test_a_batch_runs_through_attention_whose_export_folds_the_heads_into_the_leading_axis(images):
    torch.manual_seed(0)
    model = _TorchAttention().eval()
    graph, _ = canonicalize(ir.from_proto(export_onnx(model, SHAPE, 17)), SHAPE, (13, 17), 17)
    proto = ir.to_proto(graph)
    session = ort_session(proto.SerializeToString())
    expected = _each(lambda x: session.run(None, {proto.graph.input[0].name: x}), images)
    torch_graph = QuantGraph(graph)
    with torch.no_grad():
        got = torch_graph(torch.from_numpy(images)).numpy()
        np.testing.assert_allclose(got, model(torch.from_numpy(images)).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert torch_graph._one_at_a_time is True

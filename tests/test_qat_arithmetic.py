"""Quantization-aware training computes what the artifact computes: the torch fake quantization against the
numpy arithmetic every backend reuses, and the trainable graph against the QDQ simulation, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from edgekd.ir.canonical import canonicalize
from edgekd.models.export import export_onnx
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.qat.graph import QuantGraph, SiteRanges
from edgekd.quant.activation_quant import FixedQuantizer, RangeQuantizer
from edgekd.quant.calibrate import Calibration
from edgekd.quant.fakequant import fake_quantize, fake_quantize_bias, fake_quantize_weight, range_qparams, weight_scale
from edgekd.quant.fixed_ranges import FixedRange, with_ranges
from edgekd.quant.placement import plan_quantization
from edgekd.quant.qparams import (
    SCHEMES,
    SymmetricBySign,
    dequantize,
    qparams_from_range,
    quantize,
    quantize_bias,
    resolve_scheme,
    weight_qparams,
)
from edgekd.quant.qparams import fake_quantize as np_fake_quantize
from edgekd.quant.simulate import quantized_copy
from edgekd.runtime import simulation_fn
from edgekd.specs import DEFAULT_PLACEMENT as PLACEMENT

SCHEME_NAMES = list(SCHEMES)


def _tricky(rng: np.random.Generator, scale: float, zp: float, n: int = 4000) -> np.ndarray:
    """Values at exact rounding ties, just beside them, far outside the range, and at random."""
    k = rng.integers(-300, 300, n).astype(np.float64)
    ties = ((k + 0.5 - zp) * scale).astype(np.float32)
    nudged = np.nextafter(ties, np.float32(np.inf) * np.sign(rng.standard_normal(n)).astype(np.float32))
    wild = (rng.standard_normal(n) * 400 * scale).astype(np.float32)
    return np.concatenate([ties, nudged, wild, np.float32([0.0, -0.0, 1e30, -1e30])])


@pytest.mark.parametrize("scheme_name", SCHEME_NAMES)
def test_fake_quantize_is_quantize_linear_then_dequantize_linear(scheme_name):
    rng = np.random.default_rng(0)
    for lo, hi in [(-1.3, 2.7), (0.0, 6.0), (-0.02, 0.001), (-5.0, -1.0), (0.0, 0.0), (-3e-9, 4e-9)]:
        scheme = resolve_scheme(SCHEMES[scheme_name], lo, hi)
        qp = qparams_from_range(lo, hi, scheme)
        scale, zero_point = range_qparams(
            torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64), scheme
        )
        assert scale.dtype == torch.float32 and scale.item() == float(qp.scale)
        assert zero_point.item() == float(qp.zero_point)
        x = _tricky(rng, float(qp.scale), float(qp.zero_point))
        got = fake_quantize(torch.from_numpy(x), scale, zero_point, scheme).numpy()
        assert np.array_equal(got, np_fake_quantize(x, qp)), (lo, hi)


def test_weights_and_biases_follow_the_quantize_pass():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((8, 3, 3, 3)) * rng.uniform(0.01, 2, (8, 1, 1, 1))).astype(np.float32)
    w[3] = 0.0  # an all-zero channel gets the smallest scale, not a division by zero
    for axis, weights in [(0, w), (1, w.reshape(8, -1).T.copy())]:  # Conv [O, I, kh, kw]; MatMul [K, N]
        wq = weight_qparams(weights, axis=axis)
        grid, scales = fake_quantize_weight(torch.from_numpy(weights), axis)
        assert np.array_equal(scales.numpy(), wq.scale)
        assert np.array_equal(grid.numpy(), dequantize(quantize(weights, wq), wq))
        assert np.array_equal(weight_scale(torch.from_numpy(weights), axis).numpy(), wq.scale)
    bias = (rng.standard_normal(8) * 3).astype(np.float32)
    wq = weight_qparams(w, axis=0)
    q, bias_scale = quantize_bias(bias, 0.0173, wq.scale)
    got = fake_quantize_bias(torch.from_numpy(bias), torch.tensor(np.float32(0.0173)), torch.tensor(wq.scale))
    assert np.array_equal(got.numpy(), q.astype(np.float32) * bias_scale)


def test_gradients_are_straight_through_and_give_the_range_an_lsq_gradient():
    scheme = SCHEMES["asymmetric-int8"]
    x = torch.tensor([-3.0, -0.26, 0.1, 0.74, 5.0], requires_grad=True)
    lo = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    hi = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    scale, zp = range_qparams(lo, hi, scheme)
    out = fake_quantize(x, scale, zp, scheme)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # saturated values pass no gradient
    # d out / d scale: round(v) − v inside, q − zp at the two saturated ends
    s, z = scale.item(), zp.item()
    v = x.detach().double() / s
    inside = (v.round() + z >= -128) & (v.round() + z <= 127)
    expected = torch.where(inside, v.round() - v, torch.clamp(v.round() + z, -128, 127) - z).sum().item()
    scale_only = torch.tensor(s, requires_grad=True)
    fake_quantize(x.detach(), scale_only, torch.tensor(z), scheme).sum().backward()
    assert scale_only.grad.item() == pytest.approx(expected, rel=1e-5)
    assert lo.grad is not None and hi.grad is not None and hi.grad.item() > 0


def test_ema_ranges_follow_training_batches_and_stay_put_in_eval():
    q = RangeQuantizer(-1.0, 1.0, SCHEMES["asymmetric-int8"], "ema", averaging_constant=0.5)
    q.train()(torch.tensor([-3.0, 5.0]))
    assert q.range() == (-2.0, 3.0)
    q.eval()(torch.tensor([-100.0, 100.0]))
    assert q.range() == (-2.0, 3.0)
    assert not list(q.parameters())  # EMA ranges are buffers, not trained


# ----------------------------------------------------------------------------- the graph vs the simulation


class _Block(nn.Module):
    """Conv+ReLU (fused), a residual Add, max pooling (a grid-preserving copy), a sigmoid gate (a fixed range),
    global pooling and a classifier: every kind of Q/DQ site."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = self.conv2(a) + a
        b = self.pool(b) * torch.sigmoid(b.mean(dim=(2, 3), keepdim=True))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(b, 1), 1))


def _power_of_two_weights(model: nn.Module, rng: np.random.Generator) -> None:
    """Weights: integer multiples of 2^-k whose per-channel maximum is 127·2^-k, the int8 grid itself, so every
    product and sum in the graph is exact in float32 and any mismatch is a real difference. Biases are off
    their int32 grid: both sides must round them the same way."""
    with torch.no_grad():
        for m in (model.conv1, model.conv2, model.fc):
            w = rng.integers(-127, 128, m.weight.shape).astype(np.float32)
            w.reshape(w.shape[0], -1)[:, 0] = 127
            m.weight.copy_(torch.from_numpy(w * 2.0**-9))
            m.bias.copy_(torch.from_numpy(rng.standard_normal(m.bias.shape).astype(np.float32) * 0.1))  # int32 off-grid


def _graph(model: nn.Module, shape) -> ir.Model:
    graph, _ = canonicalize(ir.from_proto(export_onnx(model, shape, 17)), shape, (13, 17), 17)
    state = type("S", (), {"onnx_model": graph})()
    FuseConvBnReluPass().run(state)
    return graph


def _fixed_calibration(scheme_name: str, plan, graph) -> Calibration:
    """Power-of-two scales on every observed tensor (asymmetric: [-128·s, 127·s] or its uint8 shift)."""
    observers = {}
    for i, t in enumerate(plan.observed):
        s = 2.0 ** -(4 + i % 3)
        # 255 steps around zero (asymmetric: zero point -1 or 127), or ±127 steps (symmetric): scale exactly s;
        # by sign, every other tensor never negative: the uint8 grid from 0
        by_sign = isinstance(SCHEMES[scheme_name], SymmetricBySign)
        if by_sign and i % 3 == 1:
            observers[t] = FixedRange(0.0, 255 * s)
        elif by_sign and i % 3 == 2:  # lopsided: asymmetric uint8 where the scheme puts a zero point there
            skewed = resolve_scheme(SCHEMES[scheme_name], -s, 254 * s)
            observers[t] = FixedRange(-s, 254 * s) if not skewed.symmetric else FixedRange(-127 * s, 127 * s)
        else:
            symmetric = resolve_scheme(SCHEMES[scheme_name], -1.0, 1.0).symmetric
            observers[t] = FixedRange(-127 * s, (127 if symmetric else 128) * s)
    return Calibration(scheme_name, plan, observers, 0, "", "", "fixed")


@pytest.mark.parametrize("scheme_name", SCHEME_NAMES)
def test_quantized_graph_is_the_qdq_simulation_bit_for_bit(scheme_name):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _Block().eval()
    _power_of_two_weights(model, rng)
    shape = (1, 3, 8, 8)
    graph = _graph(model, shape)
    plan = plan_quantization(graph, PLACEMENT[scheme_name])
    cal = _fixed_calibration(scheme_name, plan, graph)
    qparams = cal.activation_qparams(plan)
    fixed = {t: qparams[t] for t, s in plan.activations.items() if s.fixed_range is not None}
    ranges = {t: tuple(float(v) for v in o.min_max()) for t, o in cal.observers.items()}
    trained = QuantGraph(graph, plan, SiteRanges(SCHEMES[scheme_name], ranges, fixed)).eval()
    sim = simulation_fn(quantized_copy(graph, plan, qparams))
    fixed_sites = any(isinstance(q, FixedQuantizer) for q in trained.quantizers.values())
    assert fixed_sites == (PLACEMENT[scheme_name] == "outputs")  # the sigmoid's Q/DQ: only "outputs" places one
    for trial in range(8):
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        if PLACEMENT[scheme_name] == "inputs":  # the input is not quantized there: put it on a grid
            x = np.round(x * 64) / 64
        with torch.no_grad():
            got = trained(torch.from_numpy(x)).numpy()
        assert np.array_equal(got, sim(x)[0]), (trial, np.abs(got - sim(x)[0]).max())
    # and the float graph is the float model
    with torch.no_grad():
        assert torch.allclose(QuantGraph(graph)(torch.from_numpy(x)), model(torch.from_numpy(x)), atol=1e-5)


def test_trained_ranges_and_weights_reach_the_graph_unchanged():
    """What the quantize pass writes from a fixed-range calibration is exactly what the quantizers used."""
    torch.manual_seed(0)
    model = _Block().eval()
    graph = _graph(model, (1, 3, 8, 8))
    plan = plan_quantization(graph, "outputs")
    cal = _fixed_calibration("asymmetric-int8", plan, graph)
    ranges = {t: tuple(float(v) for v in o.min_max()) for t, o in cal.observers.items()}
    trained = QuantGraph(graph, plan, SiteRanges(SCHEMES["asymmetric-int8"], ranges, {}))
    with torch.no_grad():  # as if training had moved everything
        for q in trained.quantizers.values():
            if isinstance(q, RangeQuantizer):
                q.lo.mul_(1.37).sub_(0.011)
                q.hi.mul_(0.71)
        for p in trained.params.values():
            p.mul_(1.1)
    assert trained.write_weights(graph) == len(trained.params)
    learned = with_ranges(cal, trained.ranges(), "qat")
    written = quantized_copy(graph, plan, learned.activation_qparams(plan))
    inits = {n: v.const_value.numpy() for n, v in written.graph.initializers.items()}
    for key, q in trained.quantizers.items():
        if not isinstance(q, RangeQuantizer):
            continue
        tensor = trained._roots[key]
        scale, zp = q.qparams_tensors()
        assert inits[f"{tensor}_scale"] == scale.item() and inits[f"{tensor}_zero_point"] == zp.item()
    for key, name in trained.param_names.items():
        assert np.array_equal(graph.graph.initializers[name].const_value.numpy(), trained.params[key].detach().numpy())


def test_unsupported_operators_are_named_before_training():
    from edgekd.errors import QATError

    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    graph = _graph(Odd(), (1, 3, 4, 4))
    with pytest.raises(QATError, match="CumSum"):
        QuantGraph(graph)

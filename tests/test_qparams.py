"""Quantization arithmetic: hand-computed scales and zero points, exact zero, bit-exact agreement
with ONNX Runtime's QuantizeLinear / DequantizeLinear, per-channel weights, int32 bias, SQNR."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekd.errors import ConfigError, DataError
from edgekd.metrics import sqnr_db
from edgekd.quant.qparams import (
    ACT_INT8_ASYM,
    ACT_INT8_SYM,
    ACT_UINT8_ASYM,
    SCALE_EPS,
    SCHEMES,
    WEIGHT_INT8,
    QParams,
    QScheme,
    dequantize,
    fake_quantize,
    qparams_from_range,
    quantize,
    quantize_bias,
    scheme_for,
    weight_qparams,
)
from edgekd.specs import ACTIVATION_SCHEMES

ALL_SCHEMES = [WEIGHT_INT8, ACT_INT8_ASYM, ACT_UINT8_ASYM, ACT_INT8_SYM]


def f32(x) -> np.float32:
    return np.float32(x)


# --- schemes ---------------------------------------------------------------------------------


def test_scheme_ranges():
    assert (WEIGHT_INT8.qmin, WEIGHT_INT8.qmax) == (-127, 127)
    assert (ACT_INT8_ASYM.qmin, ACT_INT8_ASYM.qmax) == (-128, 127)
    assert (ACT_UINT8_ASYM.qmin, ACT_UINT8_ASYM.qmax) == (0, 255)
    assert (ACT_INT8_SYM.qmin, ACT_INT8_SYM.qmax) == (-127, 127)
    assert ACT_UINT8_ASYM.np_dtype is np.uint8 and ACT_INT8_ASYM.np_dtype is np.int8


def test_scheme_for_covers_every_spec_name_and_lists_them_otherwise():
    assert set(SCHEMES) == set(ACTIVATION_SCHEMES)
    assert scheme_for("symmetric-int8") == ACT_INT8_SYM
    assert scheme_for("asymmetric-uint8") == ACT_UINT8_ASYM
    with pytest.raises(ConfigError) as e:
        scheme_for("int4")
    assert "asymmetric-int8" in e.value.hint and "symmetric-int8" in e.value.hint


def test_symmetric_by_sign_puts_no_zero_point_on_any_activation():
    by_sign = scheme_for("symmetric-by-sign")
    relu = qparams_from_range(0.0, 6.0, by_sign)  # never negative: the whole uint8 grid over [0, max]
    assert relu.scheme == ACT_UINT8_ASYM and int(relu.zero_point) == 0
    assert np.isclose(float(relu.scale), 6.0 / 255)
    signed = qparams_from_range(-1.0, 4.0, by_sign)  # goes negative: symmetric int8 over the larger end
    assert signed.scheme == ACT_INT8_SYM and int(signed.zero_point) == 0
    assert np.isclose(float(signed.scale), 4.0 / 127)
    assert qparams_from_range(-1e-6, 4.0, by_sign).scheme == ACT_INT8_SYM  # any negative value is signed


@pytest.mark.parametrize(
    "lo, hi, asymmetric",
    [
        (-0.28, 6.0, True),  # a SiLU output: symmetric int8 would spend half its codes on [-6, -0.28]
        (-6.0, 0.5, True),  # lopsided the other way
        (-5.0, -1.0, True),  # never positive
        (-2.0, 5.0, False),  # both sides carry: zero-point-free, as NNCF's CPU preset
        (0.0, 6.0, False),  # never negative: uint8 from 0
    ],
)
def test_by_sign_skewed_puts_a_zero_point_only_on_lopsided_signed_tensors(lo, hi, asymmetric):
    qp = qparams_from_range(lo, hi, scheme_for("by-sign-skewed-asymmetric"))
    if asymmetric:
        assert qp.scheme == ACT_UINT8_ASYM and int(qp.zero_point) not in (0,)
        assert np.isclose(float(qp.scale), (max(hi, 0) - min(lo, 0)) / 255, rtol=1e-6)
    else:
        assert int(qp.zero_point) == 0 and qp == qparams_from_range(lo, hi, scheme_for("symmetric-by-sign"))


def test_bad_schemes_are_refused():
    with pytest.raises(ConfigError):
        QScheme("int4", symmetric=False)
    with pytest.raises(ConfigError, match="signed"):
        QScheme("uint8", symmetric=True)


# --- scale and zero point, by hand -----------------------------------------------------------


def test_asymmetric_int8_by_hand():
    qp = qparams_from_range(-1.0, 3.0, ACT_INT8_ASYM)
    assert qp.scale == f32(4 / 255) and qp.scale.dtype == np.float32 and qp.scale.shape == ()
    assert qp.zero_point == -64 and qp.zero_point.dtype == np.int8  # round(-128 + 63.75) = round(-64.25)


def test_asymmetric_uint8_by_hand():
    qp = qparams_from_range(-1.0, 3.0, ACT_UINT8_ASYM)
    assert qp.scale == f32(4 / 255)
    assert qp.zero_point == 64 and qp.zero_point.dtype == np.uint8


def test_symmetric_int8_by_hand():
    qp = qparams_from_range(-1.0, 3.0, ACT_INT8_SYM)
    assert qp.scale == f32(3 / 127) and qp.zero_point == 0
    assert quantize(3.0, qp) == 127 and quantize(-3.0, qp) == -127


def test_range_is_extended_to_contain_zero():
    assert qparams_from_range(2.0, 5.0, ACT_INT8_ASYM) == qparams_from_range(0.0, 5.0, ACT_INT8_ASYM)
    qp = qparams_from_range(2.0, 5.0, ACT_INT8_ASYM)
    assert qp.scale == f32(5 / 255) and qp.zero_point == -128
    negative = qparams_from_range(-5.0, -2.0, ACT_UINT8_ASYM)
    assert negative.scale == f32(5 / 255) and negative.zero_point == 255


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
@pytest.mark.parametrize("value", [0.0, 1e-12, -3e-9, 7.0])
def test_constant_tensor_gets_a_valid_scale_and_exact_zero(scheme, value):
    qp = qparams_from_range(value, value, scheme)
    assert np.isfinite(qp.scale) and qp.scale >= f32(SCALE_EPS)
    assert quantize(0.0, qp) == qp.zero_point and dequantize(quantize(0.0, qp), qp) == 0.0
    assert abs(fake_quantize(value, qp) - value) <= qp.scale / 2


def test_all_zero_range_uses_the_epsilon_floor():
    qp = qparams_from_range(0.0, 0.0, ACT_INT8_ASYM)
    assert qp.scale == f32(SCALE_EPS) and qp.zero_point == -128


def test_per_channel_range():
    qp = qparams_from_range(np.array([-1.0, 0.0, 2.0]), np.array([3.0, 0.0, 5.0]), ACT_UINT8_ASYM, axis=1)
    np.testing.assert_array_equal(qp.scale, np.float32([4 / 255, SCALE_EPS, 5 / 255]))
    np.testing.assert_array_equal(qp.zero_point, np.uint8([64, 0, 0]))
    assert qp.axis == 1


def test_zero_is_exact_and_error_is_half_a_step_for_random_ranges():
    rng = np.random.default_rng(0)
    for _ in range(300):
        magnitude = 10.0 ** rng.uniform(-9, 4)
        lo, hi = np.sort(rng.uniform(-1, 1, size=2) * magnitude)
        for scheme in ALL_SCHEMES:
            qp = qparams_from_range(lo, hi, scheme)
            assert quantize(np.float32(0.0), qp) == qp.zero_point
            assert dequantize(qp.zero_point, qp) == 0.0
            x = rng.uniform(min(lo, 0.0), max(hi, 0.0), size=64).astype(np.float32)
            x[:2] = min(lo, 0.0), max(hi, 0.0)
            error = np.abs(fake_quantize(x, qp).astype(np.float64) - x)
            assert np.all(error <= qp.scale * (0.5 + 1e-5) + 1e-6 * np.abs(x)), (lo, hi, scheme)


def test_bad_ranges_are_refused():
    with pytest.raises(ConfigError, match="min > max"):
        qparams_from_range(1.0, -1.0, ACT_INT8_ASYM)
    with pytest.raises(DataError, match="not finite"):
        qparams_from_range(-np.inf, 1.0, ACT_INT8_ASYM)
    with pytest.raises(DataError):
        qparams_from_range(np.nan, 1.0, ACT_INT8_ASYM)
    with pytest.raises(ConfigError):
        qparams_from_range(np.zeros(3), np.ones(3), ACT_INT8_ASYM)  # per-channel without an axis
    with pytest.raises(ConfigError):
        qparams_from_range(0.0, 1.0, ACT_INT8_ASYM, axis=0)


def test_qparams_validate_and_round_trip_through_json():
    with pytest.raises(ConfigError):
        QParams(np.float32(0.0), np.int8(0), None, ACT_INT8_ASYM)
    with pytest.raises(ConfigError):
        QParams(np.float32(1.0), np.array(200), None, ACT_INT8_ASYM)
    for qp in (
        qparams_from_range(-1.0, 3.0, ACT_UINT8_ASYM),
        weight_qparams(np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)),
    ):
        d = json.loads(json.dumps(qp.to_dict()))
        assert QParams.from_dict(d) == qp
    assert not qp.scale.flags.writeable


# --- quantize / dequantize -------------------------------------------------------------------


def test_quantize_rounds_half_to_even_and_saturates():
    qp = QParams(np.float32(0.5), np.int8(0), None, ACT_INT8_ASYM)
    x = np.float32([0.25, 0.75, 1.25, -0.25, -0.75, 1e9, -1e9, np.inf, -np.inf])
    np.testing.assert_array_equal(quantize(x, qp), np.int8([0, 2, 2, 0, -2, 127, -128, 127, -128]))
    with pytest.raises(DataError, match="NaN"):
        quantize(np.float32([np.nan]), qp)


def test_narrow_range_shapes_the_scale_but_saturation_is_the_dtypes_like_quantizelinear():
    qp = qparams_from_range(-3.0, 3.0, ACT_INT8_SYM)
    np.testing.assert_array_equal(quantize(np.float32([-3.0, -3.05, -1e9]), qp), np.int8([-127, -128, -128]))


def test_per_channel_broadcasts_along_the_axis_including_negative_axes():
    x = np.random.default_rng(2).normal(size=(2, 3, 4)).astype(np.float32)
    qp = qparams_from_range(x.min(axis=(0, 2)), x.max(axis=(0, 2)), ACT_INT8_ASYM, axis=1)
    q = quantize(x, qp)
    for c in range(3):
        single = QParams(qp.scale[c], qp.zero_point[c], None, ACT_INT8_ASYM)
        np.testing.assert_array_equal(q[:, c], quantize(x[:, c], single))
    negative = QParams(qp.scale, qp.zero_point, -2, ACT_INT8_ASYM)
    np.testing.assert_array_equal(quantize(x, negative), q)
    np.testing.assert_array_equal(dequantize(q, negative), dequantize(q, qp))
    with pytest.raises(ConfigError, match="channels"):
        quantize(x.transpose(2, 1, 0).copy()[:, :2], qp)


def _ort_qdq(x: np.ndarray, qp: QParams) -> tuple[np.ndarray, np.ndarray]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    zp_type = TensorProto.INT8 if qp.scheme.dtype == "int8" else TensorProto.UINT8
    axis = {} if qp.axis is None else {"axis": qp.axis}
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], **axis),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], **axis),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [
            helper.make_tensor_value_info("q", zp_type, list(x.shape)),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape)),
        ],
        initializer=[numpy_helper.from_array(qp.scale, "scale"), numpy_helper.from_array(qp.zero_point, "zp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the Q→DQ pair
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    q, y = session.run(None, {"x": x})
    return q, y


def _hard_values(qp: QParams, shape: tuple[int, ...], rng) -> np.ndarray:
    """Random values in range, exact .5 rounding boundaries, and values far out of range."""
    scale = qp.scale.max()
    x = rng.normal(size=shape) * 200 * scale
    flat = x.reshape(-1)
    k = rng.integers(-300, 300, size=flat.size // 3)
    flat[: k.size] = (k + 0.5) * scale  # at or a float32 ulp from the rounding boundary
    flat[-4:] = [1e6, -1e6, 3e38, -3e38]
    return x.astype(np.float32)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: f"{s.dtype}-{'sym' if s.symmetric else 'asym'}")
def test_bit_exact_with_onnxruntime_per_tensor(scheme):
    rng = np.random.default_rng(3)
    cases = [
        qparams_from_range(-1.7, 2.3, scheme),
        qparams_from_range(0.0, 6.0, scheme),
        QParams(np.float32(0.25), np.zeros((), scheme.np_dtype), None, scheme),
    ]  # exact .5 ties
    for qp in cases:
        x = _hard_values(qp, (4, 257), rng)
        q_ref, y_ref = _ort_qdq(x, qp)
        np.testing.assert_array_equal(quantize(x, qp), q_ref)
        np.testing.assert_array_equal(dequantize(q_ref, qp), y_ref)
        np.testing.assert_array_equal(fake_quantize(x, qp), y_ref)


@pytest.mark.parametrize("shape, axis", [((3, 5, 7), 1), ((6, 1, 3, 3), 0), ((5, 4), 1)])
@pytest.mark.parametrize("scheme", [ACT_INT8_ASYM, ACT_UINT8_ASYM, WEIGHT_INT8], ids=["int8", "uint8", "weights"])
def test_bit_exact_with_onnxruntime_per_channel(shape, axis, scheme):
    rng = np.random.default_rng(4)
    channels = shape[axis]
    lo, hi = -rng.uniform(0, 3, channels), rng.uniform(0, 3, channels)
    lo[0] = hi[0] = 0.0  # an all-zero channel: epsilon scale
    qp = qparams_from_range(lo, hi, scheme, axis=axis)
    x = (rng.normal(size=shape) * 2).astype(np.float32)
    x.reshape(-1)[:3] = [1e6, -1e6, 0.0]
    q_ref, y_ref = _ort_qdq(x, qp)
    np.testing.assert_array_equal(quantize(x, qp), q_ref)
    np.testing.assert_array_equal(dequantize(q_ref, qp), y_ref)


# --- weights and bias ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis", [((8, 4, 3, 3), 0), ((6, 1, 3, 3), 0), ((10, 16), 0), ((16, 10), 1), ((16, 10), -1)]
)
def test_weight_scales_are_max_abs_over_127_per_channel(shape, axis):
    w = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    w[(slice(None),) * (axis % w.ndim) + (1,)] = 0.0  # channel 1 all zero
    qp = weight_qparams(w, axis)
    others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.abs(w).max(axis=others)
    expected = np.maximum(amax.astype(np.float64) / 127, SCALE_EPS).astype(np.float32)
    np.testing.assert_array_equal(qp.scale, expected)
    assert qp.scale[1] == f32(SCALE_EPS) and qp.axis == axis % w.ndim
    assert np.all(qp.zero_point == 0) and qp.scheme == WEIGHT_INT8
    q = quantize(w, qp)
    peak = np.abs(q.astype(np.int32)).max(axis=others)
    assert peak[1] == 0 and np.all(np.delete(peak, 1) == 127)


def test_weight_qparams_per_tensor_and_broken_weights():
    w = np.float32([[0.5, -2.0], [1.0, 0.0]])
    assert weight_qparams(w, axis=None).scale == f32(2.0 / 127)
    with pytest.raises(DataError, match="1 non-finite"):
        weight_qparams(np.float32([1.0, np.nan]))


def test_bias_is_int32_with_input_times_weight_scale():
    weight_scales = np.float32([0.01, 0.02, 0.005])
    bias = np.float32([0.3, -0.7, 1.2345])
    q, bias_scale = quantize_bias(bias, 0.05, weight_scales)
    assert q.dtype == np.int32 and bias_scale.dtype == np.float32
    np.testing.assert_array_equal(bias_scale, np.float32(0.05) * weight_scales)
    np.testing.assert_array_equal(q, np.rint(bias.astype(np.float64) / bias_scale.astype(np.float64)))
    assert np.all(np.abs(q * bias_scale.astype(np.float64) - bias) <= bias_scale / 2)


def test_bias_per_tensor_weight_scale_and_saturation():
    q, bias_scale = quantize_bias(np.float32([1e30, -1e30, 0.0]), 1e-3, np.float32(1e-3))
    np.testing.assert_array_equal(q, np.int32([2**31 - 1, -(2**31), 0]))
    assert bias_scale.shape == (3,)
    with pytest.raises(ConfigError):
        quantize_bias(np.float32([1.0]), 0.0, np.float32([1.0]))


# --- SQNR ------------------------------------------------------------------------------------


def test_sqnr_on_known_signals():
    ref = np.ones(4)
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)
    assert sqnr_db(ref, np.zeros(4)) == pytest.approx(0.0)
    # A full-scale uniform signal through an 8-bit quantizer: about 6.02·8 dB.
    x = np.random.default_rng(6).uniform(-1, 1, 100_000).astype(np.float32)
    qp = qparams_from_range(-1.0, 1.0, ACT_INT8_ASYM)
    assert sqnr_db(x, fake_quantize(x, qp)) == pytest.approx(6.02 * 8, abs=0.5)
    with pytest.raises(ConfigError):
        sqnr_db(np.ones(3), np.ones(4))

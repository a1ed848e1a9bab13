"""Quantization arithmetic shared by every pass and backend: schemes, scale and zero point,
quantize / dequantize exactly as ONNX QuantizeLinear / DequantizeLinear, int32 bias, SQNR.

Conventions (the ones ONNX Runtime, TensorRT and TFLite agree on):
- real = (q - zero_point) * scale; q = saturate(rint(real / scale) + zero_point), rounding half to even,
  saturating to the dtype's full range (narrow range only shapes the scale; see ``quantize``).
- A range always contains 0, so 0.0 quantizes to exactly the zero point and back to exactly 0.0
  (zero padding and ReLU outputs stay exact).
- A scale is never below ``SCALE_EPS`` (float32 machine epsilon, as torch.ao's observers use), so a
  constant or all-zero tensor still gets a valid, positive, finite scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.errors import ConfigError, DataError

SCALE_EPS = float(np.finfo(np.float32).eps)  # 1.19e-07

_DTYPES = {"int8": (np.int8, -128, 127), "uint8": (np.uint8, 0, 255)}
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class QScheme:
    """How a tensor is quantized. ``narrow_range`` drops the lowest code (int8 → [-127, 127])."""

    dtype: str
    symmetric: bool
    narrow_range: bool = False

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ConfigError(f"unknown quantized dtype {self.dtype!r}", f"use one of {', '.join(_DTYPES)}")
        if self.symmetric and self.dtype != "int8":
            # A symmetric unsigned range needs a mid-scale zero point; no target of ours wants that.
            raise ConfigError(
                f"symmetric quantization needs a signed dtype, not {self.dtype}",
                "use QScheme('int8', symmetric=True) or an asymmetric uint8 scheme",
            )

    @property
    def np_dtype(self) -> type[np.integer]:
        return _DTYPES[self.dtype][0]

    @property
    def qmin(self) -> int:
        return _DTYPES[self.dtype][1] + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        return _DTYPES[self.dtype][2]

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "symmetric": self.symmetric, "narrow_range": self.narrow_range}


WEIGHT_INT8 = QScheme("int8", symmetric=True, narrow_range=True)
ACT_INT8_ASYM = QScheme("int8", symmetric=False)
ACT_UINT8_ASYM = QScheme("uint8", symmetric=False)
# TensorRT style: scale = amax / 127, zero point 0, so +amax and -amax are both representable.
ACT_INT8_SYM = QScheme("int8", symmetric=True, narrow_range=True)


# A signed range whose short side is under this share of its long side: symmetric int8 spends half its codes
# on the short side, a zero point makes the grid at least 1.5x finer (3.5 dB).
SKEWED = 1 / 3


@dataclass(frozen=True)
class SymmetricBySign:
    """Zero point 0 on every activation, the sign picked per tensor from its range: uint8 over [0, max] for
    a tensor that never goes negative (ReLU outputs), symmetric int8 for one that does. This is NNCF's CPU
    preset; OpenVINO's CPU plugin then runs each int8 convolution without zero-point compensation (a u8
    source with a zero point costs it a compensation term and an extra post-op per convolution).

    With ``skewed``, a signed tensor whose short side is under ``SKEWED`` of its long side (SiLU, GELU and
    HardSwish outputs: [-0.28, max]) gets that scheme instead: the zero point is paid only where it buys
    resolution."""

    unsigned: QScheme = ACT_UINT8_ASYM
    signed: QScheme = ACT_INT8_SYM
    skewed: QScheme | None = None

    def for_range(self, lo, hi) -> QScheme:
        lo, hi = float(np.min(lo)), float(np.max(hi))
        if lo >= 0.0:
            return self.unsigned
        if self.skewed is not None and min(-lo, hi) < SKEWED * max(-lo, hi):
            return self.skewed
        return self.signed


ActivationScheme = QScheme | SymmetricBySign

SCHEMES: dict[str, ActivationScheme] = {
    "asymmetric-int8": ACT_INT8_ASYM,
    "asymmetric-uint8": ACT_UINT8_ASYM,
    "symmetric-int8": ACT_INT8_SYM,
    "symmetric-by-sign": SymmetricBySign(),
    "by-sign-skewed-asymmetric": SymmetricBySign(skewed=ACT_UINT8_ASYM),
}


def resolve_scheme(scheme: ActivationScheme, lo, hi) -> QScheme:
    """The scheme a tensor of range [``lo``, ``hi``] is quantized on."""
    return scheme.for_range(lo, hi) if isinstance(scheme, SymmetricBySign) else scheme


def scheme_for(name: str) -> ActivationScheme:
    """The activation scheme a target spec names (``[quantization] activations``)."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ConfigError(f"unknown activation scheme {name!r}", f"use one of {', '.join(SCHEMES)}") from None


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor: shape () per tensor (``axis`` None), (C,) per channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    scheme: QScheme

    def __post_init__(self):
        scale = np.array(self.scale, dtype=np.float32)
        zp = np.asarray(self.zero_point)
        expected_ndim = 0 if self.axis is None else 1
        if scale.ndim != expected_ndim or zp.shape != scale.shape:
            raise ConfigError(
                f"scale {scale.shape} and zero point {zp.shape} do not fit axis={self.axis}",
                "per tensor: both 0-d with axis None; per channel: both shape (C,) with an int axis",
            )
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ConfigError(f"scale must be finite and positive, got {scale.tolist()}")
        if np.any(zp < self.scheme.qmin) or np.any(zp > self.scheme.qmax):
            raise ConfigError(f"zero point {zp.tolist()} is outside [{self.scheme.qmin}, {self.scheme.qmax}]")
        zp = zp.astype(self.scheme.np_dtype)
        scale.flags.writeable = zp.flags.writeable = False
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QParams):
            return NotImplemented
        return (
            self.axis == other.axis
            and self.scheme == other.scheme
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    __hash__ = None  # arrays are not hashable

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; float32 scales become Python floats, which hold them exactly."""
        return {
            "scale": self.scale.tolist(),
            "zero_point": self.zero_point.tolist(),
            "axis": self.axis,
            "scheme": self.scheme.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QParams:
        return cls(np.asarray(d["scale"]), np.asarray(d["zero_point"]), d["axis"], QScheme(**d["scheme"]))


def qparams_from_range(min_val, max_val, scheme: ActivationScheme, axis: int | None = None) -> QParams:
    """Scale and zero point covering [min_val, max_val] (scalars, or (C,) arrays with ``axis``)."""
    scheme = resolve_scheme(scheme, min_val, max_val)
    lo = np.asarray(min_val, dtype=np.float64)
    hi = np.asarray(max_val, dtype=np.float64)
    expected_ndim = 0 if axis is None else 1
    if lo.shape != hi.shape or lo.ndim != expected_ndim:
        raise ConfigError(
            f"min {lo.shape} and max {hi.shape} do not fit axis={axis}",
            "per tensor: pass scalars and axis=None; per channel: pass (C,) arrays and an axis",
        )
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise DataError(
            f"quantization range is not finite: min={lo.tolist()}, max={hi.tolist()}",
            "the observer saw no data or non-finite values; check the calibration set and the model",
        )
    if np.any(lo > hi):
        raise ConfigError(f"quantization range has min > max: min={lo.tolist()}, max={hi.tolist()}")
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = np.maximum(-lo, hi)
        scale = _scale_f32(amax / ((qmax - qmin) / 2))
        zero_point = np.zeros(scale.shape)
    else:
        scale = _scale_f32((hi - lo) / (qmax - qmin))
        # From the float32 scale the runtime will use, so 0.0 maps to exactly this code.
        zero_point = np.clip(np.rint(qmin - lo / scale.astype(np.float64)), qmin, qmax)
    return QParams(scale, zero_point.astype(scheme.np_dtype), axis, scheme)


def _scale_f32(scale: np.ndarray) -> np.ndarray:
    return np.maximum(scale, SCALE_EPS).astype(np.float32)


def _per_channel(values: np.ndarray, qp: QParams, ndim: int) -> np.ndarray:
    """``values`` shaped to broadcast against a tensor of ``ndim`` dims along ``qp.axis``."""
    if qp.axis is None:
        return values
    axis = _normalize_axis(qp.axis, ndim)
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ConfigError(f"axis {axis} is out of range for a {ndim}-d tensor")
    return axis % ndim


def _check_channels(x: np.ndarray, qp: QParams) -> None:
    if qp.axis is not None:
        channels = x.shape[_normalize_axis(qp.axis, x.ndim)]
        if channels != qp.scale.size:
            raise ConfigError(f"tensor has {channels} channels along axis {qp.axis}, qparams have {qp.scale.size}")


def quantize(x, qp: QParams) -> np.ndarray:
    """ONNX QuantizeLinear bit for bit: float32 divide, round half to even, add zero point, saturate.

    Saturation is to the dtype's full range, as every runtime's QuantizeLinear does: a narrow-range
    scheme only shapes the scale, so in-range values never reach -128, but values beyond the range
    (an activation past its calibrated amax) do, in the runtime and here alike.
    """
    x = np.asarray(x, dtype=np.float32)
    _check_channels(x, qp)
    if np.isnan(x).any():
        raise DataError(f"cannot quantize {int(np.isnan(x).sum())} NaN values")
    scale = _per_channel(qp.scale, qp, x.ndim)
    zero_point = _per_channel(qp.zero_point.astype(np.float32), qp, x.ndim)
    with np.errstate(over="ignore"):  # huge x / tiny scale → inf, which saturates like any large value
        q = np.rint(x / scale) + zero_point
    limits = np.iinfo(qp.scheme.np_dtype)
    return np.clip(q, limits.min, limits.max).astype(qp.scheme.np_dtype)


def dequantize(q, qp: QParams) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale in float32."""
    q = np.asarray(q)
    _check_channels(q, qp)
    scale = _per_channel(qp.scale, qp, q.ndim)
    zero_point = _per_channel(qp.zero_point.astype(np.int32), qp, q.ndim)
    return (q.astype(np.int32) - zero_point).astype(np.float32) * scale


def fake_quantize(x, qp: QParams) -> np.ndarray:
    """What the quantized model sees: float32 values snapped to the quantization grid."""
    return dequantize(quantize(x, qp), qp)


def weight_qparams(w, axis: int | None = 0) -> QParams:
    """Per-channel symmetric int8 [-127, 127] over every axis but ``axis`` (None: one scale).

    Conv [O, I/g, kh, kw] and depthwise [C, 1, kh, kw]: axis 0; Gemm transB=1 [N, K]: axis 0;
    MatMul [K, N]: axis 1.
    """
    w = np.asarray(w, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise DataError(
            f"weights hold {int(w.size - np.isfinite(w).sum())} non-finite values",
            "the model's weights are broken; re-export it or check the training run",
        )
    if axis is None:
        amax = np.abs(w).max(initial=0.0)
    else:
        axis = _normalize_axis(axis, w.ndim)
        others = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=others, initial=0.0)
    return qparams_from_range(-amax, amax, WEIGHT_INT8, axis)


def quantize_bias(bias, input_scale: float, weight_scales) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias for a quantized Conv/Gemm: scale = input scale × weight scale, zero point 0.

    Returns (int32 bias, float32 bias scale per output channel). The division is done in float64;
    values beyond the int32 range saturate.
    """
    bias = np.asarray(bias, dtype=np.float32)
    if not np.all(np.isfinite(bias)):
        raise DataError(f"bias holds {int(bias.size - np.isfinite(bias).sum())} non-finite values")
    bias_scale = np.float32(input_scale) * np.asarray(weight_scales, dtype=np.float32)
    bias_scale = np.broadcast_to(bias_scale, bias.shape).astype(np.float32)
    if not (np.all(np.isfinite(bias_scale)) and np.all(bias_scale > 0)):
        raise ConfigError(
            f"bias scale must be finite and positive (input scale {input_scale}, weight scales "
            f"{np.asarray(weight_scales).tolist()})"
        )
    q = np.rint(bias.astype(np.float64) / bias_scale.astype(np.float64))
    return np.clip(q, _INT32.min, _INT32.max).astype(np.int32), bias_scale

"""Calibration observers: range statistics gathered batch by batch, never holding the data set.

Modelled on torch.ao.quantization's observers (``MinMaxObserver``,
``MovingAveragePerChannelMinMaxObserver`` with ``averaging_constant`` and ``ch_axis``).
Statistics are kept in float64; ``qparams(scheme)`` turns them into scale and zero point.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from edgekd.errors import ConfigError, DataError
from edgekd.quant.qparams import ActivationScheme, QParams, qparams_from_range

_NON_FINITE_HINT = (
    "the model produces NaN/Inf on this input (check the weights and the preprocessing), "
    "or the calibration data itself holds them"
)


class Observer:
    """Running range of one tensor, per tensor (``ch_axis`` None) or per channel along ``ch_axis``."""

    kind: ClassVar[str]

    def __init__(self, ch_axis: int | None = None):
        if ch_axis is not None and (isinstance(ch_axis, bool) or not isinstance(ch_axis, int)):
            raise ConfigError(f"ch_axis must be an int or None, got {ch_axis!r}")
        self.ch_axis = ch_axis
        self.axis: int | None = None  # ch_axis made non-negative once the first batch shows the rank
        self.batches = 0
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    def update(self, x: np.ndarray, *, tensor: str | None = None, sample: int | None = None) -> None:
        """Fold one batch in. Empty batches are skipped (as torch does); NaN/Inf raise DataError."""
        x = np.asarray(x)
        if x.size == 0:
            return
        batch_min, batch_max = self._batch_range(x, tensor)
        if not (np.isfinite(batch_min).all() and np.isfinite(batch_max).all()):  # min/max propagate NaN
            _raise_non_finite(x, tensor, sample)
        self._observe(x, batch_min, batch_max)
        self.batches += 1

    def _batch_range(self, x: np.ndarray, tensor: str | None) -> tuple[np.ndarray, np.ndarray]:
        if self.ch_axis is None:
            return np.float64(x.min()), np.float64(x.max())
        if not -x.ndim <= self.ch_axis < x.ndim:
            raise ConfigError(f"ch_axis {self.ch_axis} is out of range for {_name(tensor)} of shape {x.shape}")
        axis = self.ch_axis % x.ndim
        channels = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        if self._min is not None and self._min.shape[0] != channels.shape[0]:
            raise DataError(
                f"{_name(tensor)} had {self._min.shape[0]} channels along axis {axis}, "
                f"this batch has {channels.shape[0]}",
                "every batch must have the same channel count",
            )
        self.axis = axis
        return channels.min(axis=1).astype(np.float64), channels.max(axis=1).astype(np.float64)

    def _observe(self, x: np.ndarray, batch_min: np.ndarray, batch_max: np.ndarray) -> None:
        raise NotImplementedError

    def min_max(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max): 0-d arrays per tensor, (C,) arrays per channel."""
        if self._min is None:
            raise DataError(
                f"{type(self).__name__} has seen no data",
                "run at least one non-empty calibration batch through the model before asking for qparams",
            )
        return np.array(self._min, dtype=np.float64), np.array(self._max, dtype=np.float64)

    def qparams(self, scheme: ActivationScheme) -> QParams:
        lo, hi = self.min_max()
        return qparams_from_range(lo, hi, scheme, axis=self.axis)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "ch_axis": self.ch_axis, "batches": self.batches, **self._params()}
        if self._min is not None:
            lo, hi = self.min_max()
            d.update(min=lo.tolist(), max=hi.tolist())
        return d

    def _params(self) -> dict[str, Any]:
        return {}


class MinMaxObserver(Observer):
    """Smallest and largest value seen over all batches."""

    kind = "minmax"

    def _observe(self, x, batch_min, batch_max):
        if self._min is None:
            self._min, self._max = batch_min, batch_max
        else:
            self._min, self._max = np.minimum(self._min, batch_min), np.maximum(self._max, batch_max)


class EMAMinMaxObserver(Observer):
    """Exponential moving average of each batch's min and max (torch's MovingAverageMinMaxObserver).

    The first batch sets the range; later ones move it by ``averaging_constant`` of the way. After n
    batches the first still weighs (1 − c)^(n−1), 86 % for 512 samples in batches of 32 at c = 0.01: a
    calibration's ranges are about its first batch's, and what later samples reach beyond them is clipped.
    """

    kind = "ema"

    def __init__(self, averaging_constant: float = 0.01, ch_axis: int | None = None):
        super().__init__(ch_axis)
        if not 0.0 < averaging_constant <= 1.0:
            raise ConfigError(
                f"averaging_constant must be in (0, 1], got {averaging_constant}",
                "0.01 (the default) averages over about 100 batches; 1 keeps only the last batch",
            )
        self.averaging_constant = float(averaging_constant)

    def _observe(self, x, batch_min, batch_max):
        if self._min is None:
            self._min, self._max = batch_min, batch_max
        else:
            c = self.averaging_constant
            self._min = self._min + c * (batch_min - self._min)
            self._max = self._max + c * (batch_max - self._max)

    def _params(self):
        return {"averaging_constant": self.averaging_constant}


class PercentileObserver(Observer):
    """Range from the (100 − p)-th and p-th percentiles of a fixed-size histogram of values.

    Memory is ``bins`` counts whatever the data size. When a batch falls outside the histogram's
    range, the range widens to an integer multiple of the old bin width, aligned with the old bin
    edges, so old bins merge whole into new ones (no count is split). The cost is resolution: after
    widening, a bin may be up to twice as wide as the covered range needs. Percentiles interpolate
    linearly inside a bin, so they agree with np.percentile on all the data to within about one
    final bin width where values are dense; in a sparse tail (fewer values than bins out there) the
    error is bounded instead by the gap between neighbouring sorted values. Results are clamped to
    the true running min/max, and p = 100 gives exactly min/max.
    """

    kind = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = 2048, ch_axis: int | None = None):
        if ch_axis is not None:
            raise ConfigError(
                f"{type(self).__name__} is per tensor only",
                "leave ch_axis unset, or use the 'ema' or 'minmax' observer for per-channel ranges",
            )
        super().__init__(None)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}", "99.99 is the usual choice")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ConfigError(f"bins must be an int ≥ 2, got {bins!r}")
        self.percentile = float(percentile)
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.lo = 0.0  # left edge of bin 0
        self.width = 0.0  # 0 while every value seen so far is the same one (all counts in bin 0)

    def _observe(self, x, batch_min, batch_max):
        batch_min, batch_max = float(batch_min), float(batch_max)
        if self._min is None:
            self._min, self._max = np.float64(batch_min), np.float64(batch_max)
            self.lo, self.width = batch_min, (batch_max - batch_min) / self.bins
        else:
            if batch_min < self.lo or batch_max > self._hi():
                self._widen(batch_min, batch_max)
            self._min, self._max = np.minimum(self._min, batch_min), np.maximum(self._max, batch_max)
        self.counts += self._bin_counts(x.ravel())

    def _hi(self) -> float:
        return self.lo + self.bins * self.width

    def _bin_counts(self, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        if self.width == 0.0:
            index = np.zeros(values.shape, dtype=np.intp)
        else:
            # float32 values are binned in float32 (3× faster than float64): rounding lo to float32 moves the
            # bins by at most half a float32 step at the values' magnitude, below the values' own resolution.
            dtype = np.float32 if values.dtype == np.float32 else np.float64
            scaled = (values.astype(dtype, copy=False) - dtype(self.lo)) * dtype(1.0 / self.width)
            index = np.clip(scaled, 0, self.bins - 1, out=scaled).astype(np.intp)  # ≥ 0: truncation is floor
        return np.bincount(index, weights=weights, minlength=self.bins).astype(np.int64)

    def _widen(self, batch_min: float, batch_max: float) -> None:
        new_min, new_max = min(float(self._min), batch_min), max(float(self._max), batch_max)
        if self.width == 0.0:
            old_centers, old_counts = np.array([self.lo]), self.counts[:1].copy()  # a point mass at lo
        else:
            old_centers = self.lo + (np.arange(self.bins) + 0.5) * self.width
            old_counts = self.counts.copy()
        with np.errstate(over="ignore"):
            shift = np.ceil((self.lo - new_min) / self.width) if self.width and new_min < self.lo else 0.0
            factor = np.ceil(((new_max - self.lo) / self.width + shift) / self.bins) if self.width else np.inf
        if factor < 2.0**40:
            # Aligned with the old edges: each old bin falls whole into one new bin.
            self.lo -= shift * self.width
            self.width *= max(factor, 1.0)
        else:
            # First spread-out batch, or a jump so large the old histogram is one bin anyway.
            self.lo, self.width = new_min, (new_max - new_min) / self.bins
        self.counts = self._bin_counts(old_centers, weights=old_counts.astype(np.float64))

    def min_max(self):
        lo, hi = super().min_max()  # raises when no data was seen
        if self.percentile == 100.0 or self.width == 0.0:
            return lo, hi
        lo_p = max(self._value_at(100.0 - self.percentile), float(lo))
        hi_p = min(self._value_at(self.percentile), float(hi))
        return np.array(min(lo_p, hi_p)), np.array(max(lo_p, hi_p))

    def _value_at(self, percentile: float) -> float:
        # np.percentile's linear rule puts percentile p at sorted index p·(N − 1); with each value
        # spread evenly over its bin, sorted index i sits where the cumulative count is i + 0.5.
        target = percentile / 100.0 * (self.counts.sum() - 1) + 0.5
        cumulative = np.cumsum(self.counts)
        b = min(int(np.searchsorted(cumulative, target, side="left")), self.bins - 1)
        before = cumulative[b] - self.counts[b]
        inside = (target - before) / self.counts[b] if self.counts[b] else 0.0
        return self.lo + (b + inside) * self.width

    def _params(self):
        return {"percentile": self.percentile, "bins": self.bins}


class MSEObserver(PercentileObserver):
    """The range whose int8 grid, clipping included, is closest to the values seen (least squared error).

    The same histogram as the percentile observer; the range is the observed one shrunk by the factor in
    ``(0, 1]`` that minimises the expected squared error of quantize-dequantize over the histogram, on the
    grid the target's scheme makes of that range (its scale, zero point and saturation). Outliers a few
    values strong are clipped; a tail that carries mass keeps its range.
    """

    kind = "mse"
    FACTORS = np.linspace(0.2, 1.0, 81)

    def __init__(self, bins: int = 2048, ch_axis: int | None = None):
        super().__init__(100.0, bins, ch_axis)

    def qparams(self, scheme: ActivationScheme) -> QParams:
        lo, hi = self.min_max()
        if self.width == 0.0:
            return qparams_from_range(lo, hi, scheme, axis=None)
        centers = self.lo + (np.arange(self.bins) + 0.5) * self.width
        used = self.counts > 0
        centers, counts = centers[used], self.counts[used].astype(np.float64)
        best, best_err = None, np.inf
        for f in self.FACTORS:
            qp = qparams_from_range(lo * f, hi * f, scheme, axis=None)
            scale, zp = float(qp.scale), float(qp.zero_point)
            q = np.clip(np.rint(centers / scale) + zp, qp.scheme.qmin, qp.scheme.qmax)
            err = float(np.sum(counts * ((q - zp) * scale - centers) ** 2))
            if err < best_err:
                best, best_err = qp, err
        return best

    def _params(self):
        return {"bins": self.bins}


OBSERVERS: dict[str, type[Observer]] = {
    cls.kind: cls for cls in (EMAMinMaxObserver, MinMaxObserver, PercentileObserver, MSEObserver)
}


def make_observer(kind: str, **kw: Any) -> Observer:
    """An observer by name ("ema", "minmax", "percentile") with its keyword arguments."""
    if kind not in OBSERVERS:
        raise ConfigError(f"unknown observer {kind!r}", f"valid observers: {', '.join(sorted(OBSERVERS))}")
    cls = OBSERVERS[kind]
    try:
        inspect.signature(cls).bind(**kw)
    except TypeError as e:
        accepted = ", ".join(inspect.signature(cls).parameters)
        raise ConfigError(f"observer {kind!r}: {e}", f"it accepts: {accepted}") from None
    return cls(**kw)


def _name(tensor: str | None) -> str:
    return f"tensor {tensor!r}" if tensor is not None else "the observed tensor"


def _where(tensor: str | None, sample: int | None) -> str:
    parts = ([f"tensor {tensor!r}"] if tensor is not None else []) + (
        [f"sample {sample}"] if sample is not None else []
    )
    return " at ".join(parts) + " " if parts else ""


def _raise_non_finite(x: np.ndarray, tensor: str | None, sample: int | None) -> None:
    finite = np.isfinite(x)
    nan = int(np.isnan(x).sum())
    inf = int(x.size - finite.sum()) - nan
    where = _where(tensor, sample) or "a calibration batch "
    raise DataError(
        f"{where}holds {nan + inf} non-finite values ({nan} NaN, {inf} Inf) out of {x.size}", _NON_FINITE_HINT
    )

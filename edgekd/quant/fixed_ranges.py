"""A calibration whose ranges were set, not observed: how ranges learned by quantization-aware training
reach the quantize pass. Every later step (sensitivity, the accuracy budget, quantize, each backend's
emit, verify) reads ranges through ``Calibration.activation_qparams`` and so uses these unchanged."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np

from edgekd.errors import ConfigError
from edgekd.quant.calibrate import Calibration
from edgekd.quant.observers import Observer


class FixedRange(Observer):
    """An observer that holds a given [min, max] and sees no data."""

    kind = "fixed"

    def __init__(self, lo: float, hi: float):
        super().__init__(None)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ConfigError(f"a fixed range must be finite, got [{lo}, {hi}]")
        self._min, self._max = np.float64(lo), np.float64(hi)

    def _observe(self, x, batch_min, batch_max):
        raise ConfigError(
            "a fixed range does not observe data", "calibrate with the ema, minmax or percentile observer"
        )


def with_ranges(calibration: Calibration, ranges: Mapping[str, tuple[float, float]], method: str) -> Calibration:
    """``calibration`` with ``ranges`` (tensor → (min, max)) in place of what was observed for those tensors;
    ``method`` says where they came from (e.g. ``qat``). Tensors not named keep their observed range."""
    unknown = sorted(set(ranges) - set(calibration.observers))
    if unknown:
        raise ConfigError(
            f"ranges for tensors the calibration did not observe: {', '.join(unknown[:5])}",
            "ranges must name tensors of the quantization plan the calibration ran for",
        )
    observers = dict(calibration.observers)
    observers.update({t: FixedRange(lo, hi) for t, (lo, hi) in ranges.items()})
    return replace(calibration, observers=observers, method=method)

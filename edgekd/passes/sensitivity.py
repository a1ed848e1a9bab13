"""Per-layer sensitivity: output SQNR when only that layer is quantized; optionally keeps the N
most sensitive layers in float (``--keep-float N``)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.config import CompileConfig
from edgekd.data.samples import iter_batches
from edgekd.passes.base import Pass, PassResult
from edgekd.quant.calibrate import Calibration
from edgekd.quant.simulate import layer_sensitivity
from edgekd.specs import TargetSpec
from edgekd.state import CALIBRATED, SENSITIVITY, CompileState, LayerSensitivity, PassOutput

# Pixels per layer's measurement: --sensitivity-samples images up to 256×256, fewer above (at least
# MIN_SAMPLES). One layer's SQNR is taken over every output value of every sample, so a 640×640 detector
# image carries as many values as six 256×256 ones; the measurement costs one simulation run per layer
# and sample (measured: the people-det student at 640, 32 samples, 118 s of a 167 s compile).
PIXEL_BUDGET = 256 * 256
MIN_SAMPLES = 4


def samples_for(shape: tuple[int, ...], wanted: int) -> int:
    """How many samples the per-layer measurement runs for an input of ``shape`` (N, C, H, W)."""
    pixels = int(shape[-1]) * int(shape[-2]) if len(shape) == 4 else 0
    if pixels <= PIXEL_BUDGET:
        return wanted
    return max(min(wanted, MIN_SAMPLES), min(wanted, round(wanted * PIXEL_BUDGET / pixels)))


@dataclass(frozen=True)
class SensitivityOutput(PassOutput):
    table: tuple[LayerSensitivity, ...]  # most sensitive first
    kept_float: tuple[str, ...]
    samples: int = 0

    def summary(self) -> dict:
        first = self.table[0] if self.table else None
        return {
            "layers": len(self.table),
            "samples": self.samples,
            "most_sensitive": first.layer if first else None,
            "min_sqnr_db": round(first.sqnr_db, 2) if first else None,
            "kept_float": list(self.kept_float),
        }


class SensitivityPass(Pass):
    name = "sensitivity"
    requires = frozenset({CALIBRATED})
    provides = frozenset({SENSITIVITY})

    def __init__(self, samples: int = 32, keep_float_count: int = 0):
        self.samples, self.keep_float_count = samples, keep_float_count

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "SensitivityPass":
        return cls(config.quantization.sensitivity_samples, config.quantization.keep_float_count)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return (config.precision or spec.default_precision) == "int8"

    def run(self, state: CompileState) -> PassResult:
        cal: Calibration = state.calibration
        shape = tuple(state.input.shape)
        samples = samples_for(shape, self.samples)
        batches = list(iter_batches(cal.source, state.input.preprocess, shape, limit=samples))
        sqnr = layer_sensitivity(state.onnx_model, cal.plan, cal.activation_qparams(cal.plan), batches)
        state.sensitivity = tuple(LayerSensitivity(k, v) for k, v in sorted(sqnr.items(), key=lambda kv: kv[1]))
        chosen = tuple(s.layer for s in state.sensitivity[: self.keep_float_count])
        state.keep_float.update(chosen)
        return PassResult(state, changed=False, output=SensitivityOutput(state.sensitivity, chosen, samples))

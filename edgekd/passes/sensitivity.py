"""Per-layer sensitivity: output SQNR when only that layer is quantized; optionally keeps the N
most sensitive layers in float (``--keep-float N``)."""

from __future__ import annotations

from edgekd.config import CompileConfig
from edgekd.data.samples import iter_batches
from edgekd.passes.base import Pass, PassResult
from edgekd.quant.calibrate import Calibration
from edgekd.quant.simulate import layer_sensitivity
from edgekd.specs import TargetSpec
from edgekd.state import CALIBRATED, SENSITIVITY, CompileState


class SensitivityPass(Pass):
    name = "sensitivity"
    requires = frozenset({CALIBRATED})
    provides = frozenset({SENSITIVITY})

    def __init__(self, samples: int = 32, keep_float_count: int = 0):
        self.samples, self.keep_float_count = samples, keep_float_count

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "SensitivityPass":
        return cls(config.sensitivity_samples, config.keep_float_count)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return (config.precision or spec.default_precision) == "int8"

    def run(self, state: CompileState) -> PassResult:
        cal: Calibration = state.calibration
        batches = list(iter_batches(cal.source, state.input.preprocess, tuple(state.input.shape), limit=self.samples))
        sqnr = layer_sensitivity(state.onnx_model, cal.plan, cal.activation_qparams(cal.plan), batches)
        ranked = sorted(sqnr.items(), key=lambda kv: kv[1])
        state.metrics["sensitivity"] = [{"layer": k, "sqnr_db": v} for k, v in ranked]
        chosen = [k for k, _ in ranked[:self.keep_float_count]]
        state.keep_float.update(chosen)
        return PassResult(state, changed=False, metrics={
            "layers": len(ranked), "most_sensitive": ranked[0][0] if ranked else None,
            "min_sqnr_db": round(ranked[0][1], 2) if ranked else None, "kept_float": chosen})

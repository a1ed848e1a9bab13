"""Turns the calibrated float graph into QDQ ONNX: the simulation every backend is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from edgekd.config import CompileConfig
from edgekd.data.samples import iter_batches
from edgekd.metrics import compare_outputs, sqnr_db
from edgekd.passes.base import Pass, PassResult
from edgekd.quant.calibrate import Calibration
from edgekd.quant.placement import target_plan
from edgekd.quant.qdq import apply_plan
from edgekd.quant.simulate import flatten
from edgekd.runtime import simulation_fn
from edgekd.specs import TargetSpec
from edgekd.state import CALIBRATED, QUANTIZED, CompileState, PassOutput


@dataclass(frozen=True)
class QuantizeOutput(PassOutput):
    scheme: str
    placement: str
    activations: int  # activation tensors quantized
    weights: int  # weight tensors quantized
    kept_float: tuple[str, ...]
    error_vs_float: dict = field(default_factory=dict)  # simulation vs float on calibration samples
    constant_operands: int = 0  # float constants of element-wise ops quantized for integer kernels

    def summary(self) -> dict:
        return {
            "sqnr_db": round(self.error_vs_float["sqnr_db"], 2),
            "top1_vs_float": self.error_vs_float.get("top1_agreement"),
            "scheme": self.scheme,
            "placement": self.placement,
            "activations": self.activations,
            "weights": self.weights,
            "kept_float": list(self.kept_float),
        }


class QuantizePass(Pass):
    name = "quantize"
    requires = frozenset({CALIBRATED})
    provides = frozenset({QUANTIZED})

    def __init__(self, samples: int = 32):
        self.samples = samples  # calibration samples on which the simulation is compared with float

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "QuantizePass":
        return cls(config.quantization.sensitivity_samples)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return (config.precision or spec.default_precision) == "int8"

    def run(self, state: CompileState) -> PassResult:
        cal: Calibration = state.calibration
        keep = frozenset(state.keep_float)
        plan = target_plan(state.onnx_model, state.spec, cal.plan.placement, keep)
        state.float_onnx = ir.to_proto(state.onnx_model).SerializeToString()
        written = apply_plan(state.onnx_model, plan, cal.activation_qparams(plan))
        state.qparams = written
        state.float_region = plan.float_tail
        float_run, state.reference = state.float_reference, simulation_fn(state.onnx_model)
        state.reference_name = "QDQ simulation"
        batches = list(iter_batches(cal.source, state.input.preprocess, tuple(state.input.shape), limit=self.samples))
        simulated, floats = [state.reference(x) for x in batches], [float_run(x) for x in batches]
        error = compare_outputs(simulated, floats)
        error["sqnr_db"] = sqnr_db(flatten(floats), flatten(simulated))
        error["samples"] = sum(len(x) for x in batches)
        weights = len(plan.weights)
        return PassResult(
            state,
            changed=bool(written),
            output=QuantizeOutput(
                cal.scheme,
                plan.placement,
                len(written) - weights,
                weights,
                tuple(sorted(keep)),
                error,
                len(plan.constants),
            ),
        )

"""``--max-drop P --eval DIR``: returns the most sensitive layers to float until the int8 top-1 is
within P points of float; fails with the best trade-off found when it cannot be met."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.runtime import onnx_run_fn, ort_session
from edgekd.config import CompileConfig
from edgekd.data.samples import iter_labelled
from edgekd.errors import AccuracyBudgetError, ConfigError
from edgekd.passes.base import Pass, PassResult
from edgekd.quant.accuracy import greedy_keep_float, top1, within_budget
from edgekd.quant.calibrate import Calibration
from edgekd.quant.placement import plan_quantization
from edgekd.quant.simulate import quantized_copy
from edgekd.specs import TargetSpec
from edgekd.state import CALIBRATED, SENSITIVITY, CompileState, PassOutput
from edgekd.ui import text_table


@dataclass(frozen=True)
class AccuracyBudgetOutput(PassOutput):
    max_drop_pt: float
    float_top1: float
    samples: int
    steps: tuple[dict, ...]  # every trade-off tried: layers in float, top-1, drop
    kept_float: tuple[str, ...]

    def to_manifest(self) -> dict:
        return {"max_drop_pt": self.max_drop_pt, "float_top1": self.float_top1, "samples": self.samples,
                "steps": list(self.steps)}

    def summary(self) -> dict:
        final = self.steps[-1]
        return {"float_top1": round(self.float_top1, 4), "int8_top1": round(final["top1"], 4),
                "drop_pt": round(final["drop_pt"], 2), "kept_float": list(self.kept_float)}


class AccuracyBudgetPass(Pass):
    name = "accuracy-budget"
    requires = frozenset({CALIBRATED, SENSITIVITY})

    def __init__(self, eval_data: Path, max_drop_pt: float, samples: int | None = 1000):
        self.eval_data, self.max_drop_pt, self.samples = Path(eval_data), max_drop_pt, samples

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "AccuracyBudgetPass":
        e = config.evaluation
        if e.data is None:
            raise ConfigError("--max-drop needs a labelled eval set", "pass --eval DIR with DIR/<class>/*.jpg")
        return cls(e.data, e.max_drop, e.samples)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return config.evaluation.max_drop is not None

    def run(self, state: CompileState) -> PassResult:
        import onnx_ir as ir

        cal: Calibration = state.calibration
        data = list(iter_labelled(self.eval_data, state.input.preprocess, tuple(state.input.shape), state.labels,
                                  self.samples))
        float_top1 = top1(state.float_reference, data)
        order = [s.layer for s in state.sensitivity if s.layer not in state.keep_float]

        def evaluate(kept: tuple[str, ...]) -> float:
            plan = plan_quantization(state.onnx_model, cal.plan.placement, frozenset(kept) | state.keep_float)
            model = quantized_copy(state.onnx_model, plan, cal.activation_qparams(plan))
            return top1(onnx_run_fn(ort_session(ir.to_proto(model).SerializeToString())), data)

        steps = greedy_keep_float(order, evaluate, float_top1, self.max_drop_pt)
        table = tuple({"kept_float": len(s.kept_float), "top1": s.top1, "drop_pt": s.drop_pt} for s in steps)
        final = steps[-1]
        output = AccuracyBudgetOutput(self.max_drop_pt, float_top1, sum(len(y) for _, y in data), table,
                                      tuple(final.kept_float))
        if not within_budget(final.drop_pt, self.max_drop_pt):
            best = min(steps, key=lambda s: s.drop_pt)
            rows = [[len(s.kept_float), f"{100 * s.top1:.2f}", f"{s.drop_pt:.2f}"] for s in steps]
            raise AccuracyBudgetError(output=output, message=
                f"int8 top-1 stays {best.drop_pt:.2f} pt below float ({100 * float_top1:.2f} %) even with "
                f"{len(best.kept_float)} layers in float; the budget is {self.max_drop_pt} pt. Trade-offs tried:\n"
                + text_table(["layers in float", "top-1 %", "drop pt"], rows))
        state.keep_float.update(final.kept_float)
        return PassResult(state, changed=False, output=output)

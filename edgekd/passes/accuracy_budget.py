"""``--max-drop P --eval DIR``: returns the most sensitive layers to float until the int8 top-1 is
within P points of float (mAP50 points for a detector evaluated on a data.yaml or COCO JSON; on images
without class subfolders, or an array, its top-1 agrees with float's on all but P % of them); with every
layer in float and the budget still missed, the nodes without weights that read int8 data follow; once
met, the layers it did not need go back to int8. When even
that misses the budget and training images are given (``--data``), it runs quantization-aware training
(``--qat-fallback-epochs``, unless ``--qat-epochs`` already ran; classifiers) and searches again; it
fails with every trade-off tried, before and after QAT, when the budget stays out of reach."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.data.samples import iter_batches
from edgekd.detect.compile_eval import is_detection_data
from edgekd.errors import AccuracyBudgetError, ConfigError
from edgekd.passes.base import Pass, PassResult
from edgekd.passes.qat import QAT_TRAINED, qat_train_config, run_qat
from edgekd.passes.sensitivity import SensitivityOutput
from edgekd.quant.accuracy import (
    BudgetStep,
    greedy_keep_float,
    load_eval_set,
    requantize_unneeded,
    top1,
    within_budget,
)
from edgekd.quant.calibrate import Calibration
from edgekd.quant.placement import target_plan
from edgekd.quant.simulate import layer_sensitivity, quantized_copy, unweighted_readers
from edgekd.runtime import RunFn, onnx_run_fn, ort_session
from edgekd.runtime.batching import in_model_batches
from edgekd.specs import TargetSpec
from edgekd.state import CALIBRATED, SENSITIVITY, CompileState, PassOutput, PassRecord
from edgekd.ui import text_table

if TYPE_CHECKING:
    from edgekd.distill.trainer import TrainConfig


@dataclass(frozen=True)
class AccuracyBudgetOutput(PassOutput):
    max_drop_pt: float
    float_top1: float
    samples: int
    steps: tuple[dict, ...]  # every trade-off tried: layers in float, top-1, drop
    kept_float: tuple[str, ...]
    before_qat: tuple[dict, ...] | None = None  # the trade-offs tried before the QAT fallback ran
    # or agreement (with float, on images without labels), mAP50 (a detector); the "top1" fields hold it
    metric: str = "top-1"

    def to_manifest(self) -> dict:
        out = {
            "metric": self.metric,
            "max_drop_pt": self.max_drop_pt,
            "float_top1": self.float_top1,
            "samples": self.samples,
            "steps": list(self.steps),
        }
        return out | ({"qat_fallback": True, "before_qat": list(self.before_qat)} if self.before_qat else {})

    def summary(self) -> dict:
        final = self.steps[-1]
        out = {
            "float_top1": round(self.float_top1, 4),
            "int8_top1": round(final["top1"], 4),
            "drop_pt": round(final["drop_pt"], 2),
            "kept_float": list(self.kept_float),
        }
        if self.before_qat:
            best = min(self.before_qat, key=lambda s: s["drop_pt"])
            out |= {"qat_fallback": True, "drop_pt_before_qat": round(best["drop_pt"], 2)}
        return out


@dataclass(frozen=True)
class QATFallback:
    """What the pass needs to run QAT when the budget is missed."""

    data: Path
    ranges: str
    train: "TrainConfig"


def _table(steps) -> tuple[dict, ...]:
    return tuple({"kept_float": len(s.kept_float), "top1": s.top1, "drop_pt": s.drop_pt} for s in steps)


def _rows(steps: tuple[dict, ...], metric: str = "top-1") -> str:
    return text_table(
        ["layers in float", f"{metric} %", "drop pt"],
        [[s["kept_float"], f"{100 * s['top1']:.2f}", f"{s['drop_pt']:.2f}"] for s in steps],
    )


class AccuracyBudgetPass(Pass):
    name = "accuracy-budget"
    requires = frozenset({CALIBRATED, SENSITIVITY})

    def __init__(
        self,
        eval_data: Path,
        max_drop_pt: float,
        samples: int | None = 1000,
        fallback: QATFallback | None = None,
        suggest_data: bool = False,
        full_int8: str | None = None,
    ):
        self.eval_data, self.max_drop_pt, self.samples = Path(eval_data), max_drop_pt, samples
        self.fallback, self.suggest_data = fallback, suggest_data  # suggest: QAT would run, given --data
        self.full_int8 = full_int8  # the target's name when its runtime keeps no layer in float

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "AccuracyBudgetPass":
        e = config.evaluation
        if e.data is None:
            raise ConfigError(
                "--max-drop needs an eval set to measure the drop on",
                "pass --eval DIR: DIR/<class>/*.jpg (top-1), images without classes or an .npy (top-1 agreement "
                "with the float model), or a detector's data.yaml / COCO .json (mAP50)",
            )
        fallback = None
        if config.qat.fallback_epochs > 0 and config.training.data is not None:
            fallback = QATFallback(
                config.training.data, config.qat.ranges, qat_train_config(config, config.qat.fallback_epochs)
            )
        return cls(
            e.data,
            e.max_drop,
            e.samples,
            fallback,
            suggest_data=config.qat.fallback_epochs > 0 and config.training.data is None,
            full_int8=None if get_backend(spec.backend).float_layers else spec.name,
        )

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return config.evaluation.max_drop is not None

    def _scorer(self, state: CompileState) -> tuple[str, Callable[[RunFn], float], int]:
        """(metric, score of a run function on the eval set, samples scored)."""
        shape = tuple(state.input.shape)
        if is_detection_data(self.eval_data):
            from edgekd.data.detection import load_detection_set
            from edgekd.detect.evaluate import evaluate

            dataset = load_detection_set(self.eval_data, "val")
            n = min(self.samples or len(dataset), len(dataset))

            def map50(run: RunFn) -> float:
                batched = in_model_batches(run, shape[0])
                return evaluate(batched, dataset, state.input.preprocess, shape[0], limit=n).map50

            return "mAP50", map50, n
        data = load_eval_set(
            self.eval_data, state.input.preprocess, shape, state.labels, self.samples, state.float_reference
        )
        return data.metric, lambda run: top1(run, data.batches), data.samples

    def _search(self, state: CompileState, score: Callable[[RunFn], float], float_top1: float) -> list[BudgetStep]:
        """Weighted layers, most sensitive first; when the budget is still missed with all of them in float,
        the nodes without weights that read int8 data (element-wise ops, pools, concatenations), most
        sensitive first, after them."""
        import onnx_ir as ir

        cal: Calibration = state.calibration
        # a full-int8 runtime keeps no layer in float: only int8 as calibrated (or QAT-trained) is scored
        order = [] if self.full_int8 else [s.layer for s in state.sensitivity if s.layer not in state.keep_float]

        def evaluate(kept: tuple[str, ...]) -> float:
            plan = target_plan(state.onnx_model, state.spec, cal.plan.placement, frozenset(kept) | state.keep_float)
            model = quantized_copy(state.onnx_model, plan, cal.activation_qparams(plan))
            value = score(onnx_run_fn(ort_session(ir.to_proto(model).SerializeToString())))
            if state.emit:
                state.emit(f"  {len(kept)} in float: {100 * value:.2f} % (float {100 * float_top1:.2f} %)")
            return value

        steps = greedy_keep_float(order, evaluate, float_top1, self.max_drop_pt)
        missed = not within_budget(steps[-1].drop_pt, self.max_drop_pt)
        if missed and order and len(steps[-1].kept_float) == len(order):
            rest = self._unweighted_by_sensitivity(state, set(order) | state.keep_float)
            if rest:
                if state.emit:
                    state.emit(
                        f"  every layer with weights in float misses the budget: {len(rest)} nodes without weights next"
                    )
                steps += greedy_keep_float(order + rest, evaluate, float_top1, self.max_drop_pt, start=len(order) + 1)
        return requantize_unneeded(steps, evaluate, float_top1, self.max_drop_pt)

    def _unweighted_by_sensitivity(self, state: CompileState, done: set[str]) -> list[str]:
        cal: Calibration = state.calibration
        plan = target_plan(state.onnx_model, state.spec, cal.plan.placement)
        nodes = [n for n in unweighted_readers(plan) if n not in done]
        measured = state.output(SensitivityOutput)
        batches = list(
            iter_batches(cal.source, state.input.preprocess, tuple(state.input.shape), limit=measured.samples)
        )
        sqnr = layer_sensitivity(state.onnx_model, plan, cal.activation_qparams(plan), batches, layers=nodes)
        return sorted(nodes, key=sqnr.__getitem__)

    def run(self, state: CompileState) -> PassResult:
        metric, score, samples = self._scorer(state)
        # agreement's labels are the float model's own top-1: it scores 1 by construction
        float_top1 = 1.0 if metric == "agreement" else score(state.float_reference)
        steps = self._search(state, score, float_top1)
        before = None
        if not within_budget(steps[-1].drop_pt, self.max_drop_pt) and self._can_fall_back(state, metric):
            before = _table(steps)
            best = min(steps, key=lambda s: s.drop_pt)
            trigger = (
                f"accuracy budget missed: int8 {metric} stays {best.drop_pt:.2f} pt below float with "
                f"{len(best.kept_float)} layers in float; the budget is {self.max_drop_pt} pt"
            )
            if state.emit:
                state.emit(f"  {trigger}: quantization-aware training for {self.fallback.train.epochs} epochs")
            qat = run_qat(state, self.fallback.data, self.fallback.ranges, self.fallback.train, trigger)
            state.records.append(PassRecord("qat", True, qat, qat.seconds))  # it ran, as this pass's fallback
            steps = self._search(state, score, float_top1)
        final = steps[-1]
        output = AccuracyBudgetOutput(
            self.max_drop_pt, float_top1, samples, _table(steps), tuple(final.kept_float), before, metric
        )
        if not within_budget(final.drop_pt, self.max_drop_pt):
            raise self._missed(steps, float_top1, output)
        state.keep_float.update(final.kept_float)
        return PassResult(state, changed=before is not None, output=output)

    def _can_fall_back(self, state: CompileState, metric: str) -> bool:
        # QAT distils a classifier's scores: a detector's budget searches layers in float only
        return self.fallback is not None and QAT_TRAINED not in state.facts and metric in ("top-1", "agreement")

    def _missed(self, steps: list[BudgetStep], float_top1: float, output: AccuracyBudgetOutput) -> AccuracyBudgetError:
        best = min(steps, key=lambda s: s.drop_pt)
        message = f"int8 {output.metric} stays {best.drop_pt:.2f} pt below float ({100 * float_top1:.2f} %) "
        if self.full_int8:
            message += f"and {self.full_int8} runs full int8, so no layer can return to float; "
        else:
            message += f"even with {len(best.kept_float)} layers in float; "
        message += f"the budget is {self.max_drop_pt} pt. "
        if output.before_qat:
            message += f"Trade-offs tried before QAT:\n{_rows(output.before_qat, output.metric)}\nand after QAT:\n"
        else:
            message += "Trade-offs tried:\n"
        ways = []
        if self.suggest_data and output.metric in ("top-1", "agreement"):
            ways.append(
                "pass --data DIR (training images) so quantization-aware training can run when the budget is "
                "missed (--qat-fallback-epochs)"
            )
        if self.full_int8:
            ways.append("compile for a target whose runtime mixes precisions (onnx-cpu, openvino-cpu)")
        hint = ", ".join(ways + ["raise --max-drop, or use --precision fp32"]) if ways else None
        return AccuracyBudgetError(output=output, message=message + _rows(output.steps, output.metric), hint=hint)

"""``--qat-epochs N``: quantization-aware training after calibration, distilled from the float graph.

The fused graph trains in torch with fake quantization exactly where the quantize pass will put Q/DQ
(the same plan, on the same graph), ranges starting from the calibration and then learned (LSQ-style)
or EMA-updated. The trained weights replace the graph's, the trained ranges the calibration's, so the
passes after it (sensitivity, the accuracy budget, quantize, emit, verify) work on them unchanged and
every backend ships them. The accuracy-budget pass also runs it, as its fallback (``run_qat``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.config import CompileConfig
from edgekd.errors import ConfigError
from edgekd.passes.base import Pass, PassResult
from edgekd.passes.distill import train_config
from edgekd.quant.placement import QuantPlan, target_plan
from edgekd.specs import TargetSpec
from edgekd.state import CALIBRATED, CompileState, PassOutput

if TYPE_CHECKING:
    from edgekd.distill.trainer import TrainConfig

QAT_TRAINED = "qat-trained"  # fact: weights and ranges came from quantization-aware training


@dataclass(frozen=True)
class QATOutput(PassOutput):
    section = "qat"

    trigger: str  # what asked for it: --qat-epochs, or the accuracy budget missed after PTQ
    epochs: int
    ranges: str  # learn | ema
    data: str
    train_samples: int
    float_top1: float | None  # holdout top-1 (%) of the float graph (the teacher)
    ptq_top1: float | None  # the same graph fake-quantized with the calibrated ranges, before training
    qat_top1: float | None  # after training
    sites: dict = field(default_factory=dict)
    weights_changed: int = 0
    ranges_moved: dict = field(default_factory=dict)  # how far training moved the ranges
    tensor_ranges: dict = field(default_factory=dict)  # tensor → {"calibrated": [lo, hi], "trained": [lo, hi]}
    seconds: float = 0.0
    training: dict = field(default_factory=dict)
    history: tuple[dict, ...] = ()

    def summary(self) -> dict:
        pct = lambda v: None if v is None else round(v, 2)  # noqa: E731
        return {
            "trigger": self.trigger,
            "epochs": self.epochs,
            "ranges": self.ranges,
            "float_top1": pct(self.float_top1),
            "ptq_top1": pct(self.ptq_top1),
            "qat_top1": pct(self.qat_top1),
        }


def deployment_plan(state: CompileState) -> QuantPlan:
    """The plan the quantize pass will apply to this graph now: the target's placement, the layers kept in
    float. QAT must train exactly these Q/DQ sites (tests/test_qat.py holds them equal)."""
    return target_plan(state.onnx_model, state.spec, state.calibration.plan.placement, frozenset(state.keep_float))


def qat_train_config(config: CompileConfig, epochs: int) -> "TrainConfig":
    """The user's training options (batch size, optimizer, schedule, augmentation, early stop), with what QAT
    sets itself: its epochs, learning rate and KD share, a mild constant temperature, every image when the
    folder has no labels, no feature losses (the graph has no modules to pair), no sparsity ramp.

    KD alone is the default: the float graph is the teacher and the target; on CIFAR-10 (ResNet-20, 2000
    images, one epoch) KD alone brought the int8 holdout top-1 back to the float model's, while 10 % of
    cross-entropy on the labels cost a point against it."""
    from edgekd.data.folder import scan_image_folder
    from edgekd.distill.schedules import Schedule

    cfg = train_config(config, QATPass.name)
    labelled = scan_image_folder(config.training.data).labels is not None
    return replace(
        cfg,
        epochs=epochs,
        lr=config.qat.lr,
        alpha=Schedule("constant", config.qat.alpha),
        temperature=Schedule("constant", 2.0),
        learn_temperature=False,
        hint_weight=0.0,
        attention_weight=0.0,
        feature_pairs=None,
        compensate=False,
        sparsity=None,
        select_fraction=None if labelled else cfg.select_fraction or 1.0,
    )


def _moved(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict:
    if not after:
        return {"tensors": 0}
    changes = sorted(
        abs((a[1] - a[0]) / (b[1] - b[0]) - 1) if b[1] > b[0] else 0.0
        for b, a in ((before[t], after[t]) for t in after)
    )
    return {
        "tensors": len(changes),
        "moved": sum(c > 0 for c in changes),
        "median_width_change": round(changes[len(changes) // 2], 6),
        "max_width_change": round(changes[-1], 6),
    }


def run_qat(state: CompileState, data: Path, ranges: str, cfg: "TrainConfig", trigger: str) -> QATOutput:
    """Trains the state's graph and replaces its weights and calibration ranges; returns the record."""
    from edgekd.distill.student import epoch_reporter, training_summary
    from edgekd.qat.train import train_quantized

    started = time.perf_counter()
    run = train_quantized(
        state.onnx_model,
        deployment_plan(state),
        state.calibration,
        data,
        state.input.preprocess,
        tuple(state.input.shape),
        cfg,
        ranges,
        state.workdir / "training-qat",
        epoch_reporter(state.emit, "qat"),
    )
    state.calibration = run.calibration
    state.facts.add(QAT_TRAINED)
    r = run.result
    last = r.history[-1]["val_top1"] if r.history else None
    return QATOutput(
        trigger,
        r.epochs_run,
        ranges,
        str(data),
        r.kept,
        r.teacher_acc,
        r.initial_acc,
        last,
        run.sites,
        run.weights_changed,
        _moved(run.initial_ranges, run.ranges),
        {t: {"calibrated": list(run.initial_ranges[t]), "trained": list(r)} for t, r in run.ranges.items()},
        round(time.perf_counter() - started, 3),
        training_summary(cfg),
        tuple(r.history),
    )


class QATPass(Pass):
    name = "qat"
    requires = frozenset({CALIBRATED})
    provides = frozenset({CALIBRATED, QAT_TRAINED})

    def __init__(self, data: Path, ranges: str, train: "TrainConfig"):
        from edgekd.quant.activation_quant import RANGE_MODES

        if ranges not in RANGE_MODES:
            raise ConfigError(f"--qat-ranges must be one of {', '.join(RANGE_MODES)}, got {ranges!r}")
        self.data, self.ranges, self.train = Path(data), ranges, train

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "QATPass":
        if config.training.data is None:
            raise ConfigError(
                "--qat-epochs trains and needs training images",
                "pass --data DIR (class subfolders for labels + KD, or flat for KD alone)",
            )
        return cls(config.training.data, config.qat.ranges, qat_train_config(config, config.qat.epochs))

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return (config.precision or spec.default_precision) == "int8" and config.qat.epochs > 0

    def run(self, state: CompileState) -> PassResult:
        output = run_qat(state, self.data, self.ranges, self.train, f"--qat-epochs {self.train.epochs}")
        return PassResult(state, changed=True, output=output)

"""Every pass by its pipeline name."""

from __future__ import annotations

from edgekd.passes.accuracy_budget import AccuracyBudgetPass
from edgekd.passes.base import Pass, PassResult
from edgekd.passes.calibrate import CalibratePass
from edgekd.passes.canonicalize import CanonicalizePass
from edgekd.passes.check_support import CheckSupportPass
from edgekd.passes.distill import DistillPass
from edgekd.passes.emit import EmitPass
from edgekd.passes.equalize import EqualizePass
from edgekd.passes.evaluate import EvaluatePass
from edgekd.passes.export_onnx import ExportOnnxPass
from edgekd.passes.fold_bias_dequantize import FoldBiasDequantizePass
from edgekd.passes.fuse_conv_bn_relu import FuseConvBnReluPass
from edgekd.passes.graph_nms import GraphNmsPass
from edgekd.passes.int8_coverage import Int8CoveragePass
from edgekd.passes.qat import QATPass
from edgekd.passes.quantize import QuantizePass
from edgekd.passes.sensitivity import SensitivityPass
from edgekd.passes.sparsify import SparsifyPass
from edgekd.passes.speed_check import SpeedCheckPass
from edgekd.passes.verify import VerifyPass

PASSES: dict[str, type[Pass]] = {
    p.name: p
    for p in (
        DistillPass,
        SparsifyPass,
        ExportOnnxPass,
        CanonicalizePass,
        FuseConvBnReluPass,
        CheckSupportPass,
        EqualizePass,
        CalibratePass,
        QATPass,
        SensitivityPass,
        AccuracyBudgetPass,
        QuantizePass,
        FoldBiasDequantizePass,
        GraphNmsPass,
        EmitPass,
        VerifyPass,
        Int8CoveragePass,
        SpeedCheckPass,
        EvaluatePass,
    )
}

# Every target runs this list unless its spec's [pipeline] passes says otherwise; a pass that this
# compile does not ask for (distill without --student, calibrate for fp32) drops out by its `wanted`.
# A target's [pipeline] legalize passes go just before emit.
DEFAULT_PIPELINE: tuple[str, ...] = (
    "distill",
    "sparsify",
    "export",
    "canonicalize",
    "fuse",
    "check-support",
    "equalize",
    "calibrate",
    "qat",
    "sensitivity",
    "accuracy-budget",
    "quantize",
    "nms",
    "emit",
    "verify",
    "int8-coverage",
    "speed-check",
    "evaluate",
)

__all__ = ["DEFAULT_PIPELINE", "PASSES", "Pass", "PassResult"]

"""Quantization-aware training of a fused ONNX graph: the graph in torch with fake quantization where the
plan puts Q/DQ, ranges starting from the calibration, trained with the KD trainer against the same graph
in float; the trained weights go back into the graph, the trained ranges into a fixed-range calibration."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import onnx_ir as ir
import torch
from torch import nn

from edgekd.data.preprocess import Preprocess
from edgekd.distill.trainer import Progress, TrainConfig, TrainResult, train_kd
from edgekd.errors import QATError
from edgekd.qat.graph import QuantGraph, SiteRanges
from edgekd.quant.calibrate import Calibration
from edgekd.quant.fixed_ranges import with_ranges
from edgekd.quant.placement import QuantPlan
from edgekd.quant.qparams import scheme_for


class _ChannelsLast(nn.Module):
    """The trainer feeds NCHW; a graph that takes NHWC gets it permuted."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x):
        return self.graph(x.permute(0, 2, 3, 1))


@dataclass(frozen=True)
class QATRun:
    calibration: Calibration  # the input calibration with the trained ranges in place of the observed ones
    initial_ranges: dict[str, tuple[float, float]]
    ranges: dict[str, tuple[float, float]]  # trained (learned or EMA-updated)
    weights_changed: int
    sites: dict[str, int]
    result: TrainResult


def _check_classifier(graph: nn.Module, shape: tuple[int, ...]) -> None:
    with torch.no_grad():
        out = graph.eval()(torch.zeros(shape))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = f"{len(out)} outputs" if isinstance(out, tuple) else f"an output of shape {tuple(out.shape)}"
        raise QATError(
            f"QAT distils classifier logits [N, classes] from the float graph; this graph gives {got}",
            "compile without --qat-epochs (post-training quantization) for detectors and other heads",
        )


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def train_quantized(
    model: ir.Model,
    plan: QuantPlan,
    calibration: Calibration,
    data: Path,
    pre: Preprocess,
    shape: tuple[int, ...],
    cfg: TrainConfig,
    ranges: str = "learn",
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> QATRun:
    """Trains ``model`` (changed in place: its weights) quantized as ``plan`` places Q/DQ, ranges from
    ``calibration``; ``shape`` is the graph's input shape (NCHW, or NHWC when ``pre`` says so)."""
    scheme = scheme_for(calibration.scheme)
    qparams = calibration.activation_qparams(plan)
    fixed = {t: qparams[t] for t, site in plan.activations.items() if site.fixed_range is not None and t in qparams}
    initial = {
        t: (float(lo), float(hi)) for t, (lo, hi) in ((t, obs.min_max()) for t, obs in calibration.observers.items())
    }
    teacher = _frozen(QuantGraph(model))
    student = QuantGraph(model, plan, SiteRanges(scheme, initial, fixed, ranges))
    if pre.layout == "NHWC":
        teacher, student = _frozen(_ChannelsLast(teacher)), _ChannelsLast(student)
        shape = (shape[0], shape[3], shape[1], shape[2])
    _check_classifier(teacher, shape)
    # the "before" score; targets of augmented batches; float32 throughout: the ranges learn on the int8 grid's
    # exact arithmetic, which bfloat16 (8 significant bits) would blur
    cfg = replace(cfg, validate_first=True, live_teacher=True, amp=None)
    result = train_kd(teacher, student, data, pre, cfg, out_dir=out_dir, progress=progress)
    graph = student.graph if isinstance(student, _ChannelsLast) else student
    graph.eval()
    trained = graph.ranges()
    changed = graph.write_weights(model)
    return QATRun(
        with_ranges(calibration, trained, "qat"),
        {t: initial[t] for t in trained},
        trained,
        changed,
        graph.site_counts(),
        result,
    )

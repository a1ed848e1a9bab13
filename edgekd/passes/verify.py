"""Runs the emitted artifact in its official runtime and compares it with the reference outputs."""

from __future__ import annotations

import numpy as np

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.data.samples import iter_batches, random_batches
from edgekd.errors import FidelityError
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, QUANTIZED, CompileState


def compare_outputs(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> dict:
    """Per-run output lists → max/mean absolute error, error relative to the reference's range, and
    top-1 agreement over the first output when it is a [N, classes] score matrix."""
    max_abs = mean_abs = ref_range = 0.0
    agree = total = 0
    for g_outs, w_outs in zip(got, want):
        for k, (g, w) in enumerate(zip(g_outs, w_outs)):
            g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
            diff = np.abs(g - w)
            max_abs = max(max_abs, float(diff.max()))
            mean_abs += float(diff.mean())
            ref_range = max(ref_range, float(np.abs(w).max()))
            if k == 0 and w.ndim == 2 and w.shape[1] > 1:
                agree += int((g.argmax(1) == w.argmax(1)).sum())
                total += w.shape[0]
    runs = max(1, sum(len(w) for w in want))
    out = {"max_abs_error": max_abs, "mean_abs_error": mean_abs / runs,
           "relative_error": max_abs / ref_range if ref_range else max_abs}
    if total:
        out["top1_agreement"] = agree / total
    return out


class VerifyPass(Pass):
    name = "verify"
    requires = frozenset({EMITTED})

    def __init__(self, backend: str, samples: int = 16, max_relative_error: float = 1e-3,
                 min_top1_agreement: float = 0.99, max_output_steps: float = 4.0, calib=None, seed: int = 0):
        self.backend = get_backend(backend)
        self.samples, self.calib, self.seed = samples, calib, seed
        self.max_relative_error, self.min_top1_agreement = max_relative_error, min_top1_agreement
        # Integer kernels round once per layer where the simulation rounds in float: a few output
        # quantization steps of difference are expected, more means the artifact computes something else.
        self.max_output_steps = max_output_steps

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "VerifyPass":
        return cls(spec.backend, samples=config.verify_samples, calib=config.calib, seed=config.seed)

    def run(self, state: CompileState) -> PassResult:
        shape = tuple(state.input.shape)
        batches = (iter_batches(self.calib, state.input.preprocess, shape, limit=self.samples) if self.calib
                   else random_batches(shape, self.samples, self.seed))
        run = self.backend.session(state.workdir / self.backend.main_file(state.artifact_files))
        got, want = [], []
        for x in batches:
            got.append(run(x))
            want.append(state.reference(x))
        metrics = compare_outputs(got, want)
        metrics.update(reference=state.reference_name, samples=sum(len(w[0]) for w in want),
                       inputs="calibration images" if self.calib else "random normal")
        state.metrics["fidelity"] = metrics
        top1 = metrics.get("top1_agreement", 1.0)
        out_qp = state.qparams.get(state.onnx_model.graph.outputs[0].name) if QUANTIZED in state.facts else None
        if out_qp is not None:
            metrics["max_output_steps"] = metrics["max_abs_error"] / float(np.max(out_qp["scale"]))
            error_ok, error_text = (metrics["max_output_steps"] <= self.max_output_steps,
                                    f"max error {metrics['max_output_steps']:.1f} output steps (limit {self.max_output_steps:g})")
        else:
            error_ok, error_text = (metrics["relative_error"] <= self.max_relative_error,
                                    f"relative error {metrics['relative_error']:.2e} (limit {self.max_relative_error:.0e})")
        if not error_ok or top1 < self.min_top1_agreement:
            raise FidelityError(f"the {self.backend.name} artifact disagrees with the {state.reference_name}: {error_text}, "
                                f"top-1 agreement {top1:.3f} (limit {self.min_top1_agreement})")
        return PassResult(state, changed=False, metrics={k: v for k, v in metrics.items() if k != "inputs"})

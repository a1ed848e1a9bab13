"""Runs the emitted artifact in its official runtime and compares it with the reference outputs."""

from __future__ import annotations

import numpy as np

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.data.samples import iter_batches, random_batches
from edgekd.errors import FidelityError
from edgekd.metrics import compare_outputs
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, QUANTIZED, CompileState


class VerifyPass(Pass):
    name = "verify"
    requires = frozenset({EMITTED})

    def __init__(self, backend: str, samples: int = 16, max_relative_error: float = 1e-3,
                 max_relative_error_quantized: float = 0.05, max_output_steps: float = 4.0,
                 min_top1_agreement: float = 0.99, calib=None, seed: int = 0):
        self.backend = get_backend(backend)
        self.samples, self.calib, self.seed = samples, calib, seed
        self.max_relative_error, self.max_relative_error_quantized = max_relative_error, max_relative_error_quantized
        # Integer kernels round once per layer where the simulation rounds in float: a few output
        # quantization steps of difference are expected, more means the artifact computes something else.
        self.max_output_steps = max_output_steps
        self.min_top1_agreement = min_top1_agreement

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
        quantized = QUANTIZED in state.facts
        scales = [state.qparams.get(o.name, {}).get("scale") if quantized else None for o in state.onnx_model.graph.outputs]
        tie = self.max_output_steps * float(np.max(scales[0])) if scales and scales[0] is not None else 0.0
        metrics = compare_outputs(got, want, tie_margin=tie)
        metrics.update(reference=state.reference_name, samples=sum(len(w[0]) for w in want),
                       inputs="calibration images" if self.calib else "random normal")
        problems = []
        stepped = [(err / float(np.max(s))) for err, s in zip(metrics["max_abs_per_output"], scales) if s is not None]
        if stepped:
            metrics["max_output_steps"] = max(stepped)
            if metrics["max_output_steps"] > self.max_output_steps + 1e-3:  # steps are computed in float
                problems.append(f"max error {metrics['max_output_steps']:.1f} output steps (limit {self.max_output_steps:g})")
        if len(stepped) < len(scales) or not quantized:
            limit = self.max_relative_error_quantized if quantized else self.max_relative_error
            unscaled = [e for e, s in zip(metrics["max_abs_per_output"], scales) if s is None]
            rel = max(unscaled) / metrics["reference_range"] if unscaled and metrics["reference_range"] else 0.0
            if rel > limit:
                problems.append(f"relative error {rel:.2e} (limit {limit:.0e})")
        decisive = metrics.get("decisive_disagreements", 0)
        if decisive > (1 - self.min_top1_agreement) * metrics["samples"]:
            problems.append(f"top-1 differs on {decisive} of {metrics['samples']} samples where the reference is not a near-tie")
        state.metrics["fidelity"] = metrics
        if problems:
            raise FidelityError(f"the {self.backend.name} artifact disagrees with the {state.reference_name}: "
                                + "; ".join(problems))
        return PassResult(state, changed=False, metrics={k: v for k, v in metrics.items()
                                                         if k not in ("inputs", "max_abs_per_output")})

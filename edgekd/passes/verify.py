"""Runs the emitted artifact in its official runtime and compares it with the reference outputs.

A quantized artifact must stay within a few output steps of the QDQ simulation. Over a deep graph the
integer kernels' own rounding (one per layer, where the simulation rounds in float) can add up past that
while the artifact stays exactly as close to the float model as the simulation is (measured: the
conformance YOLO at 320 for onnx-cpu, 87 output steps from the simulation, 10.47 dB vs float against
the simulation's 10.50 dB; MobileNetV3 on OpenVINO, 18.1 vs 17.7 dB). So an artifact past the limits is
measured against the float model too, and kept when, for every output, the simulation is itself within
``MIN_SIMULATION_VS_FLOAT_DB`` of float (else nothing can be told apart), the artifact's SQNR vs float is
within ``FLOAT_DISTANCE_DB`` of the simulation's, and its difference from the simulation carries at most
twice the power of the simulation's own error (``OWN_ROUNDING_DB``). An artifact that computes something
else lands far from both.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx_ir as ir

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.data.samples import iter_batches, random_batches
from edgekd.detect.graph_nms import SELECTED, selection_mismatch
from edgekd.errors import FidelityError
from edgekd.ir.detector import decoded_outputs
from edgekd.metrics import compare_outputs, sqnr_db
from edgekd.passes.base import Pass, PassResult
from edgekd.passes.canonicalize import CanonicalizeOutput
from edgekd.passes.graph_nms import GraphNmsOutput
from edgekd.quant.placement import WEIGHTED
from edgekd.runtime.divergence import (
    Departure,
    activation_sites,
    amplified,
    departures,
    float_sites,
    simulate_sites,
    sqnr_by_site,
)
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, CompileState, PassOutput


@dataclass(frozen=True)
class FidelityOutput(PassOutput):
    section = "fidelity"

    reference: str
    samples: int
    inputs: str  # calibration images or random normal
    max_abs_error: float
    max_abs_per_output: list[float]
    mean_abs_error: float
    relative_error: float
    reference_range: float
    top1_agreement: float | None = None
    decisive_disagreements: int | None = None
    max_output_steps: float | None = None  # worst output error in the artifact's output quantization steps
    # past the step limit: per output, SQNR vs the float model of the artifact and of the simulation
    vs_float: dict | None = None
    graph_nms: dict | None = None  # --nms: the artifact's selected boxes against numpy NMS of its own outputs

    def to_manifest(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def summary(self) -> dict:
        return {k: v for k, v in self.to_manifest().items() if k not in ("inputs", "max_abs_per_output")}


# The artifact's SQNR vs float may fall this far below the simulation's.
FLOAT_DISTANCE_DB = 1.0
# Only a simulation this close to float can tell the kernels' rounding from an error: within 1 dB of it,
# an error would be at most 16 dB below the signal. A simulation near 0 dB (random weights, calibration
# images unlike the inputs) tells nothing, and the artifact is refused as before.
MIN_SIMULATION_VS_FLOAT_DB = 10.0
# The runtime rounds on the simulation's grids but independently of it: its difference from the simulation
# may carry up to twice the power of the simulation's own error (-3 dB), no more.
OWN_ROUNDING_DB = 3.0


# A model exported in half precision is the reference of its float32 artifacts: float16 keeps 11 bits, every
# layer rounds to them, and a ResNet-20 ends 1.04e-3 of its output range from the same graph in float32. A
# conversion error is percent-sized, so 1e-2 still finds it.
HALF_PRECISION_RELATIVE_ERROR = 1e-2

# An activation read out this close to the reference equals it up to float rounding (one int8 step is ~40-50 dB).
READ_OUT_AGREES_DB = 80.0

# Boxes of equal score may be kept in either order; more differences than this share mean the op differs.
MAX_NMS_DIFFERENCE = 0.01


class FidelityWarning(UserWarning):
    """The artifact is past the step limit from the simulation but as close to float as it."""


def float_distance(got: list, want: list, floats: list) -> dict:
    """Per output, SQNR vs the float model of the artifact (``got``) and of the simulation (``want``); None
    when the float model's outputs do not line up with the artifact's."""
    n_out = len(floats[0])
    if n_out != len(got[0]) or any(np.shape(f) != np.shape(g) for f, g in zip(floats[0], got[0])):
        return None

    def joined(runs, k):
        return np.concatenate([np.asarray(r[k], np.float64).ravel() for r in runs])

    figures = {
        "artifact_sqnr_db": [sqnr_db(joined(floats, k), joined(got, k)) for k in range(n_out)],
        "simulation_sqnr_db": [sqnr_db(joined(floats, k), joined(want, k)) for k in range(n_out)],
        "artifact_vs_simulation_sqnr_db": [sqnr_db(joined(want, k), joined(got, k)) for k in range(n_out)],
    }
    out = {k: [round(v, 2) for v in vs] for k, vs in figures.items()}
    first = [np.asarray(r[0]) for r in floats]
    if first[0].ndim == 2 and first[0].shape[1] > 1:  # a classifier: top-1 against float's as well
        top1 = np.concatenate([f.argmax(1) for f in first])
        for key, runs in (("artifact_top1_vs_float", got), ("simulation_top1_vs_float", want)):
            out[key] = float(np.mean(np.concatenate([np.asarray(r[0]).argmax(1) for r in runs]) == top1))
        out["samples"] = int(len(top1))
    return out


class VerifyPass(Pass):
    name = "verify"
    requires = frozenset({EMITTED})

    def __init__(
        self,
        backend: str,
        samples: int = 16,
        max_relative_error: float = 1e-3,
        max_relative_error_quantized: float = 0.05,
        max_output_steps: float = 4.0,
        min_top1_agreement: float = 0.99,
        calib=None,
        seed: int = 0,
    ):
        self.backend = get_backend(backend)
        self.samples, self.calib, self.seed = samples, calib, seed
        self.max_relative_error, self.max_relative_error_quantized = max_relative_error, max_relative_error_quantized
        # Integer kernels round once per layer where the simulation rounds in float: a few output
        # quantization steps of difference are expected, more means the artifact computes something else.
        self.max_output_steps = max_output_steps
        self.min_top1_agreement = min_top1_agreement

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "VerifyPass":
        return cls(spec.backend, samples=config.verification.samples, calib=config.calibration.data, seed=config.seed)

    def run(self, state: CompileState) -> PassResult:
        shape = tuple(state.input.shape)
        batches = (
            iter_batches(self.calib, state.input.preprocess, shape, limit=self.samples)
            if self.calib
            else random_batches(shape, self.samples, self.seed)
        )
        run = self.backend.session(state.workdir / self.backend.main_file(state.artifact_files))
        inputs, got, want = [], [], []
        for x in batches:
            inputs.append(x)
            got.append(run(x))
            want.append(state.reference(x))
        names = [o.name for o in state.onnx_model.graph.outputs]
        selection = None
        if SELECTED in names:  # graph NMS: its indices are checked against the artifact's own boxes and scores
            selection = self._selection(state, names, got)
            got, want, names = _without(got, names), _without(want, names), [n for n in names if n != SELECTED]
        quantized = state.quantized
        scales = [state.qparams.get(n, {}).get("scale") if quantized else None for n in names]
        tie = self._tie_margin(scales[0] if scales else None, quantized, got, want)
        metrics = compare_outputs(got, want, tie_margin=tie)
        stepped = [(err / float(np.max(s))) for err, s in zip(metrics["max_abs_per_output"], scales) if s is not None]
        output = FidelityOutput(
            reference=state.reference_name,
            samples=sum(len(w[0]) for w in want),
            inputs="calibration images" if self.calib else "random normal",
            max_output_steps=max(stepped) if stepped else None,
            graph_nms=selection,
            **metrics,
        )
        float_limit = self.max_relative_error
        if _computes_in_half_precision(state):
            float_limit = max(float_limit, HALF_PRECISION_RELATIVE_ERROR)
        problems = self._problems(output, scales, quantized, float_limit)
        if problems and quantized and state.float_reference is not None and math.isfinite(output.max_abs_error):
            output, problems = self._against_float(
                output, problems, got, want, [state.float_reference(x) for x in inputs]
            )
        if problems:
            message = f"the {self.backend.name} artifact disagrees with the {state.reference_name}: " + "; ".join(
                problems
            )
            try:
                found = self._where(state, inputs[0])
            except Exception as e:  # the diagnosis must never replace the refusal it explains
                message, found = f"{message} (where it departs could not be read: {type(e).__name__}: {e})", None
            located = _located(message, *found, self.backend.float_layers, quantized) if found else (message,)
            raise FidelityError(*located, output=output)
        return PassResult(state, changed=False, output=output)

    def _where(self, state: CompileState, x: np.ndarray) -> tuple[list[Departure], dict[str, float]] | None:
        """Where the artifact's activations leave the simulation's, when its runtime can be read inside:
        the layers that lose ``DEPARTURE_DB`` at once, and every activation's SQNR vs the simulation."""
        model = ir.to_proto(state.onnx_model)
        sites = activation_sites(model) if state.quantized else float_sites(model)
        tap = (
            self.backend.tap(state.workdir / self.backend.main_file(state.artifact_files), sites, model)
            if sites
            else None
        )
        if tap is None:
            return None
        artifact, simulation = tap(x), simulate_sites(model, sites, x)
        db = sqnr_by_site(artifact, simulation)
        if not db:
            return None
        found = [d for d in departures(model, sites, db) if not amplified(model, sites, d, artifact, simulation)]
        return found, db

    def _selection(self, state: CompileState, names: list[str], got: list) -> dict:
        boxes, scores = (names.index(v.name) for v in decoded_outputs(state.onnx_model.graph))
        settings = state.output(GraphNmsOutput).summary()
        differ = expected = 0
        for outs in got:
            d, e = selection_mismatch(outs[boxes], outs[scores], outs[names.index(SELECTED)], settings)
            differ, expected = differ + d, expected + e
        return {"selected_expected": expected, "selected_differing": differ}

    def _against_float(self, output: FidelityOutput, problems: list[str], got, want, floats):
        """Past the limits: kept (with a FidelityWarning) when as close to float as the simulation."""
        output = replace(output, vs_float=float_distance(got, want, floats))
        far = output.vs_float
        if far is not None and _as_close_to_float(far):
            warnings.warn(
                f"the {self.backend.name} artifact is past the simulation ({'; '.join(problems)}) but as close "
                f"to the float model: SQNR vs float {far['artifact_sqnr_db']} dB, simulation "
                f"{far['simulation_sqnr_db']} dB (integer kernels round per layer)",
                FidelityWarning,
                stacklevel=3,
            )
            return output, []
        if far is not None and min(far["simulation_sqnr_db"]) < MIN_SIMULATION_VS_FLOAT_DB:
            problems = problems + [
                f"the QDQ simulation itself is {min(far['simulation_sqnr_db']):.1f} dB from the float model, too far "
                "to tell the runtime's rounding from an error (calibrate on more images like the model's inputs; "
                "random weights never get closer)"
            ]
        return output, problems

    def _tie_margin(self, scale, quantized: bool, got: list, want: list) -> float:
        """How far the reference's top-1 must lead for a flipped top-1 to count. A quantized output: the
        ``max_output_steps`` steps allowed. A float output of a quantized graph (placements that leave
        the logits in float): the error seen on both logits, within the relative limit (checked apart)."""
        if scale is not None:
            return self.max_output_steps * float(np.max(scale))
        if not quantized or not want:
            return 0.0
        seen = max(float(np.abs(np.asarray(g[0], np.float64) - w[0]).max()) for g, w in zip(got, want))
        reference_range = max(float(np.abs(w[0]).max()) for w in want)
        return 2 * min(seen, self.max_relative_error_quantized * reference_range)

    def _problems(self, out: FidelityOutput, scales: list, quantized: bool, float_limit: float) -> list[str]:
        if not (math.isfinite(out.max_abs_error) and math.isfinite(out.reference_range)):
            return ["the outputs contain NaN or Inf (artifact or reference): check --mean/--std and the model"]
        problems = []
        if out.max_output_steps is not None and out.max_output_steps > self.max_output_steps + 1e-3:
            problems.append(f"max error {out.max_output_steps:.1f} output steps (limit {self.max_output_steps:g})")
        unscaled = [e for e, s in zip(out.max_abs_per_output, scales) if s is None]
        if unscaled or not quantized:
            limit = self.max_relative_error_quantized if quantized else float_limit
            rel = max(unscaled) / out.reference_range if unscaled and out.reference_range else 0.0
            if rel > limit:
                problems.append(f"relative error {rel:.2e} (limit {limit:.0e})")
        nms = out.graph_nms
        if nms and nms["selected_differing"] > MAX_NMS_DIFFERENCE * max(nms["selected_expected"], 1):
            problems.append(
                f"the graph's NonMaxSuppression kept {nms['selected_differing']} boxes differently from NMS of the "
                f"artifact's own boxes and scores ({nms['selected_expected']} expected)"
            )
        decisive = out.decisive_disagreements or 0
        if decisive > (1 - self.min_top1_agreement) * out.samples:
            problems.append(
                f"top-1 differs on {decisive} of {out.samples} samples where the reference is not a near-tie"
            )
        return problems


def _computes_in_half_precision(state: CompileState) -> bool:
    """The reference is the source ONNX model and canonicalize widened float16 tensors of it."""
    canonical = state.output(CanonicalizeOutput)
    return (
        state.reference is state.float_reference
        and canonical is not None
        and canonical.report.rewrites.get("float16_to_float32", 0) > 0
    )


def _located(
    message: str, found: list[Departure], db: dict[str, float], float_layers: bool, quantized: bool
) -> tuple[str, str]:
    """The refusal with the layer that departs from the reference, or with how the difference grew; the
    hint keeps layers in float where the target can (``float_layers``)."""
    reference = "the simulation" if quantized else "the source model"
    report = "--keep-failed keeps the artifact to report to the runtime's maintainers"
    mixed = (
        "; a target that mixes precisions (onnx-cpu, openvino-cpu) can keep layers in float"
        if quantized and not float_layers
        else ""
    )
    if found:
        weighted = [n for n, op in zip(found[0].nodes, found[0].ops) if op in WEIGHTED]
        keep = f"keep {', '.join(weighted)} in float with --keep-float {','.join(weighted)}; "
        return (
            f"{message}; it departs from {reference} at {found[0].describe(reference)}",
            (keep if weighted and quantized and float_layers else "") + report + mixed,
        )
    finite = [v for v in db.values() if math.isfinite(v)]  # the graph input's pair is exact
    first, last = (finite[0], finite[-1]) if finite else (math.inf, math.inf)
    if min(finite, default=math.inf) >= READ_OUT_AGREES_DB:
        return (
            f"{message}; yet every activation read out of the runtime matches {reference} "
            f"({min(finite, default=math.inf):.0f} dB or closer): the difference arises after the last quantized "
            "activation, or only in the runtime's build of the graph without the outputs the read-out adds",
            report,
        )
    if not quantized:
        hint = report
    elif float_layers:
        hint = "keep the most sensitive layers in float (--keep-float N, with the sensitivity pass), or calibrate "
        hint += "on more images like the model's inputs"
    else:
        hint = "calibrate on more images like the model's inputs" + mixed
    return (
        f"{message}; no layer departs from {reference} at once: SQNR vs it falls layer by layer, {first:.0f} dB "
        f"at the first activation read to {last:.0f} dB at the last (the runtime's rounding adds up)",
        hint,
    )


def _without(runs: list, names: list[str]) -> list:
    """Each run's outputs without ``selected``: a run of a graph without NMS has one output fewer."""
    k = names.index(SELECTED)
    return [[o for i, o in enumerate(outs) if i != k] if len(outs) == len(names) else outs for outs in runs]


def _as_close_to_float(vs_float: dict) -> bool:
    figures = zip(
        vs_float["artifact_sqnr_db"], vs_float["simulation_sqnr_db"], vs_float["artifact_vs_simulation_sqnr_db"]
    )
    close = all(
        s >= MIN_SIMULATION_VS_FLOAT_DB and a >= s - FLOAT_DISTANCE_DB and a_s >= s - OWN_ROUNDING_DB
        for a, s, a_s in figures
    )
    if "artifact_top1_vs_float" not in vs_float:
        return close
    slack = max(1 / vs_float["samples"], 0.02)  # one sample's flip, or 2 %
    return close and vs_float["artifact_top1_vs_float"] >= vs_float["simulation_top1_vs_float"] - slack

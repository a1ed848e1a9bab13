"""``--eval DIR``: top-1 of the float model and of the emitted artifact on a labelled set (on images without
labels: the artifact's top-1 agreement with float; a detector's mAP), and, with the speed check's figures,
whether the speed bought pays for the accuracy lost (design rule: each point lost should buy ≥ 2×)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.detect.compile_eval import detection_accuracy, detection_picture, is_detection_data
from edgekd.passes.base import Pass, PassResult
from edgekd.passes.speed_check import SpeedCheckOutput
from edgekd.quant.accuracy import PairedDrop, load_eval_set, paired_drop, predictions
from edgekd.runtime.batching import in_model_batches
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, CompileState, PassOutput

SPEEDUP_PER_POINT = 2.0


def speed_rule(drop_pt: float, speedup: float) -> dict:
    needed = SPEEDUP_PER_POINT * drop_pt
    return {"speedup": speedup, "drop_pt": drop_pt, "needed_speedup": needed, "met": drop_pt <= 0 or speedup >= needed}


@dataclass(frozen=True)
class AccuracyOutput(PassOutput):
    section = "accuracy"

    source: str
    samples: int
    float_top1: float
    artifact_top1: float
    drop_pt: float
    speed: dict | None = None  # float vs artifact latency (the speed check's), and whether the speed rule is met
    paired: PairedDrop | None = None  # the images each gets right: how many the artifact lost and gained
    metric: str = "top-1"  # or agreement: the float model's top-1 are the labels (images without classes)

    def to_manifest(self) -> dict:
        out = {
            "metric": self.metric,
            "source": self.source,
            "samples": self.samples,
            "float_top1": self.float_top1,
            "artifact_top1": self.artifact_top1,
            "drop_pt": self.drop_pt,
        }
        if self.paired is not None:
            low, high = self.paired.ci95_pt()
            out |= {"images_lost": self.paired.lost, "images_gained": self.paired.gained, "drop_ci95_pt": [low, high]}
        return out | ({"speed": self.speed} if self.speed is not None else {})

    def summary(self) -> dict:
        out = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in self.to_manifest().items()
            if k not in ("speed", "drop_ci95_pt")
        }
        if self.speed is not None:
            out["speedup"] = round(self.speed["speedup"], 2)
            out["speed_rule_met"] = self.speed["met"]
        return out


PICTURE = "detections.jpg"  # the artifact's detections on the first validation images, beside the report


@dataclass(frozen=True)
class DetectionAccuracyOutput(PassOutput):
    section = "accuracy"

    accuracy: dict  # per model (float, simulation, artifact): mAP50-95, mAP50, precision, recall; the drop

    def to_manifest(self) -> dict:
        return dict(self.accuracy)

    def summary(self) -> dict:
        acc = self.accuracy
        out = {
            f"{k}_{m}": round(acc[k][m], 4)
            for k in ("float", "simulation", "artifact")
            if k in acc
            for m in ("map50_95", "map50")
        }
        if "drop_map50_pt" in acc:
            out["drop_map50_pt"] = round(acc["drop_map50_pt"], 2)
        return out


class EvaluatePass(Pass):
    name = "evaluate"
    requires = frozenset({EMITTED})

    def __init__(self, backend: str, eval_data: Path, samples: int | None = 1000, threads: int = 2):
        self.backend, self.eval_data, self.samples, self.threads = (
            get_backend(backend),
            Path(eval_data),
            samples,
            threads,
        )

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "EvaluatePass":
        return cls(spec.backend, config.evaluation.data, config.evaluation.samples, spec.bench.threads)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return config.evaluation.data is not None

    def run(self, state: CompileState) -> PassResult:
        if is_detection_data(self.eval_data):
            return self._run_detection(state)
        shape = tuple(state.input.shape)
        evalset = load_eval_set(
            self.eval_data, state.input.preprocess, shape, state.labels, self.samples, state.float_reference
        )
        data = evalset.batches
        artifact = self.backend.session(state.workdir / self.backend.main_file(state.artifact_files), self.threads)
        labels = np.concatenate([y for _, y in data])
        # without classes the labels are the float model's own top-1: no second float pass for them
        float_pred = labels if evalset.metric == "agreement" else predictions(state.float_reference, data)
        artifact_pred = predictions(artifact, data)
        float_top1, artifact_top1 = float(np.mean(float_pred == labels)), float(np.mean(artifact_pred == labels))
        drop_pt = 100.0 * (float_top1 - artifact_top1)
        speed = None
        timed = state.output(SpeedCheckOutput)
        if timed is not None:
            s = timed.speedup
            speed = {
                "float_ms": statistics.median(timed.float_ms),
                "artifact_ms": statistics.median(timed.artifact_ms),
                "measured_on": timed.measured_on,
                "runtime": timed.runtime,
                "spread": [s.low, s.high],
                "repeats": s.repeats,
                **speed_rule(drop_pt, s.median),
            }
        return PassResult(
            state,
            changed=False,
            output=AccuracyOutput(
                str(self.eval_data),
                len(labels),
                float_top1,
                artifact_top1,
                drop_pt,
                speed,
                paired_drop(labels, float_pred, artifact_pred),
                evalset.metric,
            ),
        )

    def _run_detection(self, state: CompileState) -> PassResult:
        """A YOLO data.yaml or COCO JSON: mAP of the float model, the simulation and the artifact."""
        artifact = self.backend.session(state.workdir / self.backend.main_file(state.artifact_files), self.threads)
        simulation = state.reference if state.reference is not state.float_reference else None
        acc = detection_accuracy(
            {"float": state.float_reference, "simulation": simulation, "artifact": artifact},
            self.eval_data,
            state.input.preprocess,
            state.input.shape[0],
            self.samples,
        )
        batch = state.input.shape[0]
        detection_picture(
            in_model_batches(artifact, batch), self.eval_data, state.input.preprocess, state.workdir / PICTURE
        )
        state.artifact_files.append(PICTURE)
        acc["picture"] = PICTURE
        return PassResult(state, changed=False, output=DetectionAccuracyOutput(acc))

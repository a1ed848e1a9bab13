"""``edgekd val``: a compiled detector scored on a labelled detection set, in the artifact's own runtime,
with the preprocessing its manifest records."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgekd.artifact import read_manifest, verify_files
from edgekd.backends import get_backend
from edgekd.data.detection import load_detection_set
from edgekd.data.preprocess import Preprocess
from edgekd.detect.evaluate import evaluate
from edgekd.detect.metrics import DetectionMetrics
from edgekd.detect.postprocess import DEFAULT_NMS, NmsSettings
from edgekd.errors import CorruptModelError
from edgekd.runtime.batching import in_model_batches


@dataclass(frozen=True)
class ValResult:
    artifact: Path
    model_file: str
    runtime: str
    data: str  # the dataset's summary: counts and every kind of label it skipped
    issues: dict[str, int]
    metrics: DetectionMetrics
    settings: NmsSettings
    seconds: float

    def to_dict(self) -> dict:
        return {
            "artifact": str(self.artifact),
            "model_file": self.model_file,
            "runtime": self.runtime,
            "data": self.data,
            "label_issues": self.issues,
            "metrics": self.metrics.to_dict(),
            "nms": vars(self.settings),
            "seconds": self.seconds,
        }


def artifact_preprocess(manifest: dict) -> Preprocess:
    d = dict(manifest["inputs"][0]["preprocessing"])
    for k in ("size", "mean", "std"):
        d[k] = tuple(d[k])
    return Preprocess(**d)


def validate_artifact(
    artifact: str | Path,
    data: str | Path,
    split: str = "val",
    settings: NmsSettings = DEFAULT_NMS,
    conf: float = 0.25,
    limit: int | None = None,
    threads: int = 2,
    progress=None,
) -> ValResult:
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    changed = verify_files(artifact, manifest)
    if changed:
        raise CorruptModelError(
            f"{artifact}: {', '.join(changed)} changed since edgekd wrote the artifact", "compile it again"
        )
    dataset = load_detection_set(data, split)
    model_file = manifest["artifact"]["model_file"]
    backend = get_backend(manifest["artifact"]["backend"])
    batch = manifest["inputs"][0]["shape"][0]
    batch = batch if isinstance(batch, int) and batch > 0 else 1
    run = in_model_batches(backend.session(artifact / model_file, threads), batch)
    t0 = time.perf_counter()
    metrics = evaluate(run, dataset, artifact_preprocess(manifest), batch, settings, conf, limit, progress)
    return ValResult(
        artifact,
        model_file,
        manifest["artifact"]["runtime"],
        dataset.summary(),
        dataset.issue_counts(),
        metrics,
        settings,
        time.perf_counter() - t0,
    )

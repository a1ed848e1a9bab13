"""``compile --eval data.yaml``: a detector's COCO mAP for the float model, the int8 simulation (when the
compile quantized) and the emitted artifact in its own runtime, on one labelled detection set."""

from __future__ import annotations

from pathlib import Path

from edgekd.data.detection import load_detection_set
from edgekd.data.preprocess import Preprocess
from edgekd.detect.draw import sheet
from edgekd.detect.evaluate import evaluate, ground_truth, predict
from edgekd.detect.postprocess import DEFAULT_NMS, NmsSettings
from edgekd.runtime.batching import RunFn, in_model_batches

DETECTION_SUFFIXES = (".yaml", ".yml", ".json")


def is_detection_data(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DETECTION_SUFFIXES


def detection_accuracy(
    runs: dict[str, RunFn | None],
    data: str | Path,
    pre: Preprocess,
    batch: int,
    limit: int | None = None,
    split: str = "val",
    settings: NmsSettings = DEFAULT_NMS,
) -> dict:
    """``runs``: name (float, simulation, artifact) → RunFn, None to skip. mAP figures per run, the label
    issues the reader skipped, and the mAP50 drop of the artifact against the float model in points."""
    dataset = load_detection_set(data, split)
    n = min(limit or len(dataset), len(dataset))
    out = {
        "kind": "detection",
        "source": str(data),
        "split": split,
        "images": n,
        "objects": sum(len(im.classes) for im in dataset.images[:n]),
        "label_issues": dataset.issue_counts(),
        "nms": vars(settings),
    }
    for name, run in runs.items():
        if run is None:
            continue
        m = evaluate(in_model_batches(run, batch), dataset, pre, batch, settings, limit=n)
        out[name] = {
            "map50_95": m.map50_95,
            "map50": m.map50,
            "precision": m.precision,
            "recall": m.recall,
            "conf": m.conf,
        }
    if "float" in out and "artifact" in out:
        out["drop_map50_pt"] = 100.0 * (out["float"]["map50"] - out["artifact"]["map50"])
        out["artifact_vs_float_map50"] = (
            out["artifact"]["map50"] / out["float"]["map50"] if out["float"]["map50"] else None
        )
    return out


def detection_picture(
    run: RunFn,
    data: str | Path,
    pre: Preprocess,
    out: Path,
    images: int = 4,
    split: str = "val",
    settings: NmsSettings = DEFAULT_NMS,
) -> Path:
    """The first ``images`` of the set with ``run``'s detections (red) over the labels (green), tiled."""
    dataset = load_detection_set(data, split)
    n = min(images, len(dataset))
    dets = predict(run, dataset, pre, 1, settings, limit=n)
    return sheet([im.path for im in dataset.images[:n]], dets, ground_truth(dataset, n), out)

"""Running a detector over a labelled set and scoring it: each image fitted to the model input with the
model's preprocessing (letterbox or stretch, :mod:`edgekd.data.detection.letterbox`), outputs split into
boxes and scores, NMS, boxes mapped back to the source image, then COCO mAP and precision/recall.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from edgekd.data.detection.dataset import DetectionSet
from edgekd.data.detection.letterbox import Letterbox, read_letterboxed
from edgekd.data.preprocess import Preprocess
from edgekd.detect.metrics import DetectionMetrics, GroundTruth, evaluate_detections
from edgekd.detect.postprocess import DEFAULT_NMS, Detections, NmsSettings, select, split_outputs
from edgekd.runtime.batching import RunFn


def input_batches(
    dataset: DetectionSet, pre: Preprocess, batch: int, limit: int | None = None
) -> Iterator[tuple[np.ndarray, list[Letterbox]]]:
    """(model-ready batch, the transform of each image) in dataset order."""
    images = dataset.images[:limit] if limit else dataset.images
    for i in range(0, len(images), batch):
        xs, fits = [], []
        for im in images[i : i + batch]:
            rgb, fit = read_letterboxed(im.path, pre.size, pre.resize)
            xs.append(pre.apply(rgb))
            fits.append(fit)
        yield np.stack(xs).astype(np.float32), fits


def predict(
    run: RunFn,
    dataset: DetectionSet,
    pre: Preprocess,
    batch: int = 1,
    settings: NmsSettings = DEFAULT_NMS,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Detections]:
    """Detections per image, in source-image pixels."""
    out: list[Detections] = []
    total = min(limit or len(dataset), len(dataset))
    for x, fits in input_batches(dataset, pre, batch, limit):
        boxes, scores = split_outputs(run(x), len(dataset.names))
        for b, s, fit in zip(boxes, scores, fits):
            det = select(b, s, settings)
            out.append(Detections(fit.to_source(det.boxes), det.scores, det.classes))
        if progress:
            progress(len(out), total)
    return out


def ground_truth(dataset: DetectionSet, limit: int | None = None) -> list[GroundTruth]:
    images = dataset.images[:limit] if limit else dataset.images
    return [GroundTruth(im.boxes, im.classes) for im in images]


def evaluate(
    run: RunFn,
    dataset: DetectionSet,
    pre: Preprocess,
    batch: int = 1,
    settings: NmsSettings = DEFAULT_NMS,
    conf: float = 0.25,
    limit: int | None = None,
    progress=None,
) -> DetectionMetrics:
    preds = predict(run, dataset, pre, batch, settings, limit, progress)
    return evaluate_detections(ground_truth(dataset, limit), preds, len(dataset.names), conf, settings.max_det)

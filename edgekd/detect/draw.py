"""Pictures of detections: predicted boxes (and the labelled ones) drawn on validation images, for
reports and for a person to judge what the numbers mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.preprocess import read_rgb
from edgekd.detect.metrics import GroundTruth
from edgekd.detect.postprocess import Detections

PREDICTED = (255, 40, 40)
LABELLED = (40, 220, 40)


def draw(rgb: np.ndarray, det: Detections, truth: GroundTruth | None = None, conf: float = 0.25, zoom: int = 1):
    """A PIL image: labelled boxes in green, predictions at ≥ ``conf`` in red, ``zoom``× enlarged
    (nearest-neighbour, so a 3-pixel person stays visible)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(rgb)
    if zoom != 1:
        im = im.resize((im.width * zoom, im.height * zoom), Image.NEAREST)
    pen = ImageDraw.Draw(im)
    if truth is not None:
        for box in truth.boxes:
            pen.rectangle((box * zoom).tolist(), outline=LABELLED)
    for box, score in zip(det.boxes, det.scores):
        if score >= conf:
            pen.rectangle((box * zoom).tolist(), outline=PREDICTED)
    return im


def sheet(
    paths: list[Path],
    dets: list[Detections],
    truths: list[GroundTruth] | None,
    out: Path,
    conf: float = 0.25,
    columns: int = 2,
    width: int = 640,
) -> Path:
    """Draws each image's detections, tiles them ``columns`` wide (each ``width`` px) and writes ``out`` (JPEG/PNG)."""
    from PIL import Image

    tiles = []
    for i, (path, det) in enumerate(zip(paths, dets)):
        im = draw(read_rgb(path, None), det, truths[i] if truths else None, conf)
        tiles.append(im.resize((width, round(im.height * width / im.width)), Image.BILINEAR))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    height = sum(max(t.height for t in row) for row in rows)
    canvas = Image.new("RGB", (width * columns, height), (255, 255, 255))
    y = 0
    for row in rows:
        for j, t in enumerate(row):
            canvas.paste(t, (j * width, y))
        y += max(t.height for t in row)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, quality=85)
    return out

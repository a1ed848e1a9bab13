"""What a detection reader returns: images with their boxes, the class names, and every label it refused.

A reader never drops a label silently: each refused line or annotation becomes a :class:`LabelIssue`
(kind, file, line, text), and :meth:`DetectionSet.summary` counts them per kind with examples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.errors import DataError, DetectionDataError, InputNotFoundError

ISSUE_KINDS = {
    "malformed": "not a class id followed by 4 box values or an even number (≥ 6) of polygon values",
    "class-id": "class id that is not an integer in [0, number of classes)",
    "out-of-range": "coordinate outside the image (normalized values outside [0, 1])",
    "empty-box": "box or polygon with zero width or height",
    "duplicate": "the same label twice for one image",
    "unknown-image": "annotation for an image id the file does not list",
    "missing-image": "image listed or labelled but not on disk",
}


@dataclass(frozen=True)
class LabelIssue:
    kind: str  # one of ISSUE_KINDS
    file: Path
    line: int | None  # 1-based line of a label file; None for a JSON annotation (``where`` says which)
    text: str
    where: str = ""

    def location(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return f"{self.file} {self.where}".rstrip()


@dataclass(frozen=True)
class ImageLabels:
    path: Path
    size: tuple[int, int]  # (H, W) of the image on disk
    boxes: np.ndarray  # [K, 4] float32 xyxy in pixels of the image on disk
    classes: np.ndarray  # [K] int64, 0..num_classes-1


@dataclass(frozen=True)
class DetectionSet:
    source: Path  # data.yaml or the COCO JSON
    split: str
    names: tuple[str, ...]
    images: tuple[ImageLabels, ...]
    issues: tuple[LabelIssue, ...] = ()
    unlabelled: tuple[Path, ...] = field(default=())  # images with no label file (read as "no objects")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_objects(self) -> int:
        return sum(len(im.classes) for im in self.images)

    def issue_counts(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.issues))

    def summary(self, examples: int = 3) -> str:
        lines = [
            f"{self.source} [{self.split}]: {len(self)} images, {self.num_objects} objects, "
            f"{len(self.names)} classes ({', '.join(self.names[:10])}{', …' if len(self.names) > 10 else ''})"
        ]
        if self.unlabelled:
            lines.append(
                f"  {len(self.unlabelled)} images have no label file (read as no objects), e.g. {self.unlabelled[0]}"
            )
        counts = self.issue_counts()
        if not counts:
            lines.append("  every label read")
        for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n} labels skipped: {kind} ({ISSUE_KINDS[kind]})")
            for issue in [i for i in self.issues if i.kind == kind][:examples]:
                lines.append(f"    {issue.location()}: {issue.text[:80]}")
        return "\n".join(lines)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}", "remove or replace the file") from e


def load_detection_set(source: str | Path, split: str = "val", images: str | Path | None = None) -> DetectionSet:
    """A YOLO ``data.yaml`` (``split``: train/val/test) or a COCO ``.json`` (``images``: its image folder,
    by default the JSON's folder)."""
    from edgekd.data.detection.coco import read_coco
    from edgekd.data.detection.yolo import read_yolo

    path = Path(source)
    if not path.exists():
        raise InputNotFoundError(f"detection data {path} does not exist")
    if path.suffix.lower() in (".yaml", ".yml"):
        return read_yolo(path, split)
    if path.suffix.lower() == ".json":
        return read_coco(path, images)
    raise DetectionDataError(
        f"{path} is neither a YOLO data.yaml nor a COCO .json",
        "pass the data.yaml of a YOLO dataset (train/val image folders, labels/ beside images/) "
        "or a COCO annotation file (instances_val.json)",
    )

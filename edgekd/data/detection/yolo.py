"""YOLO-format datasets: ``data.yaml`` naming the split folders and classes, ``images/`` and ``labels/``
side by side, one ``.txt`` per image with a line per object.

A line is ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 … xn yn`` (a polygon, the segment format;
its box is the polygon's extent), all coordinates normalized to [0, 1]. Every line that cannot be read
is kept as a :class:`LabelIssue` with its file and line number.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgekd.data.detection.dataset import DetectionSet, ImageLabels, LabelIssue, image_size
from edgekd.data.folder import IMAGE_SUFFIXES
from edgekd.errors import DetectionDataError, InputNotFoundError, ToolchainMissingError

# Exporters write 1.0000001 and -1e-9; within this margin a coordinate is clipped, beyond it the line is refused.
COORD_TOLERANCE = 1e-3


def _read_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError as e:
        raise ToolchainMissingError(
            "reading a YOLO data.yaml needs PyYAML", "pip install 'edgekd[detect]' (or pyyaml)"
        ) from e

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DetectionDataError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise DetectionDataError(f"{path} does not hold a mapping (keys path, train, val, names)")
    return data


def class_names(data: dict, path: Path) -> tuple[str, ...]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DetectionDataError(f"{path}: names keys must be class ids 0..n-1, got {list(names)[:5]}") from None
        if keys != list(range(len(keys))):
            raise DetectionDataError(f"{path}: names must number the classes 0..{len(keys) - 1} without gaps")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise DetectionDataError(f"{path} has no class names", "add names: ['person', ...] (or {0: person, ...})")
    nc = data.get("nc")
    if nc is not None and int(nc) != len(names):
        raise DetectionDataError(f"{path}: nc is {nc} but names lists {len(names)} classes")
    return tuple(str(n) for n in names)


def _split_images(data: dict, path: Path, split: str) -> list[Path]:
    if split not in data or data[split] in (None, ""):
        present = [k for k in ("train", "val", "test") if data.get(k)]
        raise DetectionDataError(f"{path} names no {split!r} split", f"splits it has: {', '.join(present) or '(none)'}")
    root = path.parent
    if data.get("path"):  # the dataset root, relative to the yaml's folder unless absolute
        root = Path(data["path"]) if Path(data["path"]).is_absolute() else path.parent / data["path"]
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    files: list[Path] = []
    for entry in entries:
        p = Path(entry) if Path(entry).is_absolute() else root / entry
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():  # a list of image paths, relative to the dataset root
            files += [
                (root / line.strip()) if not Path(line.strip()).is_absolute() else Path(line.strip())
                for line in p.read_text().splitlines()
                if line.strip()
            ]
        else:
            raise InputNotFoundError(f"{path}: {split} entry {entry!r} is not a folder or an image list ({p} missing)")
    if not files:
        raise DetectionDataError(f"{path}: the {split} split holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def label_path(image: Path) -> Path:
    """``…/images/x.jpg`` → ``…/labels/x.txt`` (the last ``images`` folder in the path); else ``x.txt`` beside it."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def parse_line(text: str, num_classes: int) -> tuple[int, np.ndarray] | tuple[str, str]:
    """One label line → (class id, normalized xyxy) or (issue kind, why)."""
    tokens = text.split()
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        return "malformed", "a value is not a number"
    n = len(values) - 1
    if n != 4 and (n < 6 or n % 2):
        return "malformed", f"{n} coordinates (4 for a box, an even number ≥ 6 for a polygon)"
    if not all(math.isfinite(v) for v in values):
        return "malformed", "a value is not finite"
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        return "class-id", f"class {tokens[0]} (classes are 0..{num_classes - 1})"
    coords = np.asarray(values[1:], np.float64)
    if n == 4:
        cx, cy, w, h = coords
        coords = np.asarray([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        if w < 0 or h < 0:
            return "malformed", "negative box width or height"
    else:
        xs, ys = coords[0::2], coords[1::2]
        coords = np.asarray([xs.min(), ys.min(), xs.max(), ys.max()])
    if coords.min() < -COORD_TOLERANCE or coords.max() > 1 + COORD_TOLERANCE:
        return "out-of-range", f"extent {np.round(coords, 4).tolist()} leaves [0, 1]"
    coords = coords.clip(0.0, 1.0)
    if coords[2] <= coords[0] or coords[3] <= coords[1]:
        return "empty-box", "zero width or height"
    return int(cls), coords


def read_label_file(
    path: Path, num_classes: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[LabelIssue]]:
    """(boxes xyxy in pixels, classes, issues) of one label file; ``size`` is the image's (H, W)."""
    h, w = size
    boxes, classes, issues, seen = [], [], [], set()
    for lineno, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        parsed = parse_line(text, num_classes)
        if isinstance(parsed[0], str):
            issues.append(LabelIssue(parsed[0], path, lineno, f"{parsed[1]}: {text.strip()}"))
            continue
        key = tuple(text.split())
        if key in seen:
            issues.append(LabelIssue("duplicate", path, lineno, text.strip()))
            continue
        seen.add(key)
        cls, xyxy = parsed
        boxes.append(xyxy * (w, h, w, h))
        classes.append(cls)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64), issues)


def _orphan_labels(images: list[Path]) -> list[LabelIssue]:
    """Label files in the split's label folders whose image is not in the split (a renamed or deleted image)."""
    expected = {label_path(im) for im in images}
    folders = {p.parent for p in expected if p.parent.is_dir()}
    return [
        LabelIssue("missing-image", f, None, "label file without an image in the split")
        for folder in sorted(folders)
        for f in sorted(folder.glob("*.txt"))
        if f not in expected
    ]


def read_yolo(path: Path, split: str = "val") -> DetectionSet:
    data = _read_yaml(path)
    names = class_names(data, path)
    issues: list[LabelIssue] = []
    images, unlabelled = [], []
    for image in _split_images(data, path, split):
        if not image.is_file():
            issues.append(LabelIssue("missing-image", image, None, "listed in the split but not on disk"))
            continue
        size = image_size(image)
        lp = label_path(image)
        if lp.is_file():
            boxes, classes, found = read_label_file(lp, len(names), size)
            issues += found
        else:
            boxes, classes = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            unlabelled.append(image)
        images.append(ImageLabels(image, size, boxes, classes))
    issues += _orphan_labels([im.path for im in images])
    return DetectionSet(path, split, names, tuple(images), tuple(issues), tuple(unlabelled))

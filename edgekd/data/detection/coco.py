"""COCO-JSON datasets: one annotation file (``images``, ``annotations``, ``categories``) and its image folder.

Category ids are mapped to contiguous class indices in ascending id order (COCO's 1..90 with gaps become
0..79); the names keep that order. Boxes are ``[x, y, w, h]`` in pixels. Crowd annotations
(``iscrowd: 1``) are not objects to detect and are left out; every other annotation that cannot be used
is a :class:`LabelIssue` naming ``annotations[i]`` and its id.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from edgekd.data.detection.dataset import DetectionSet, ImageLabels, LabelIssue, image_size
from edgekd.errors import DetectionDataError

_TOLERANCE_PX = 1.0  # annotation tools round box corners; a pixel past the edge is clipped, more is refused


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DetectionDataError(f"{path} is not valid JSON: {e}") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DetectionDataError(f"{path} is not a COCO annotation file: no {', '.join(missing)} list")
    return data


def _check_box(ann: dict, size: tuple[int, int]) -> tuple[str, str] | np.ndarray:
    bbox = ann.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
    ):
        return "malformed", f"bbox {bbox!r} is not [x, y, w, h]"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "empty-box", f"bbox {bbox} has no area"
    H, W = size
    if x < -_TOLERANCE_PX or y < -_TOLERANCE_PX or x + w > W + _TOLERANCE_PX or y + h > H + _TOLERANCE_PX:
        return "out-of-range", f"bbox {bbox} leaves the {W}×{H} image"
    return np.asarray([x, y, x + w, y + h], np.float32).clip(0, [W, H, W, H])


def read_coco(path: Path, images_dir: str | Path | None = None) -> DetectionSet:
    data = _load(path)
    root = Path(images_dir) if images_dir is not None else path.parent
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if not cats:
        raise DetectionDataError(f"{path} lists no categories")
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    issues: list[LabelIssue] = []
    per_image: dict[int, tuple[list, list]] = {}
    sizes: dict[int, tuple[int, int]] = {}
    files: dict[int, Path] = {}
    for im in data["images"]:
        files[im["id"]] = root / im["file_name"]
        if "height" in im and "width" in im:
            sizes[im["id"]] = (int(im["height"]), int(im["width"]))
        per_image[im["id"]] = ([], [])
    missing = {image_id for image_id, f in files.items() if not f.is_file()}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}] (id {ann.get('id')})"
        image_id = ann.get("image_id")
        if image_id not in per_image:
            issues.append(LabelIssue("unknown-image", path, None, f"image_id {image_id!r}", where))
            continue
        if ann.get("iscrowd", 0) or image_id in missing:
            continue
        if ann.get("category_id") not in cat_index:
            issues.append(
                LabelIssue(
                    "class-id", path, None, f"category_id {ann.get('category_id')!r} is not in categories", where
                )
            )
            continue
        if image_id not in sizes:
            sizes[image_id] = image_size(files[image_id])
        box = _check_box(ann, sizes[image_id])
        if isinstance(box, tuple):
            issues.append(LabelIssue(box[0], path, None, box[1], where))
            continue
        per_image[image_id][0].append(box)
        per_image[image_id][1].append(cat_index[ann["category_id"]])
    images = []
    for image_id, (boxes, classes) in per_image.items():
        if image_id in missing:
            n = sum(1 for a in data["annotations"] if a.get("image_id") == image_id)
            issues.append(
                LabelIssue(
                    "missing-image",
                    files[image_id],
                    None,
                    f"image id {image_id} is not on disk; its {n} annotations are not used",
                )
            )
            continue
        size = sizes.get(image_id) or image_size(files[image_id])
        images.append(
            ImageLabels(
                files[image_id], size, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)
            )
        )
    names = tuple(str(c.get("name", c["id"])) for c in cats)
    return DetectionSet(path, "annotations", names, tuple(images), tuple(issues))

"""Small detection sets made in code for the tests: CIFAR-10 objects (from calibration/cifar10) pasted at
random places and sizes on smooth random backgrounds, written as a YOLO dataset (data.yaml, images/,
labels/ with boxes and polygons) or a COCO JSON. Nothing is read from outside the repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calibration" / "cifar10"
CLASSES = ("cat", "ship")


@dataclass
class Scene:
    image: np.ndarray  # HWC uint8
    boxes: np.ndarray  # [K, 4] xyxy pixels
    classes: np.ndarray  # [K]


def _objects(cls: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((CALIB / cls).glob("*.jpg"))]


def make_scenes(
    n: int,
    size: tuple[int, int] = (96, 128),
    per_image: tuple[int, int] = (1, 4),
    obj_size: tuple[int, int] = (14, 30),
    seed: int = 0,
) -> list[Scene]:
    """``n`` images of ``size`` (H, W) with 1–3 non-overlapping objects each, sides in ``obj_size`` px."""
    rng = np.random.default_rng(seed)
    pools = [_objects(c) for c in CLASSES]
    scenes = []
    h, w = size
    for _ in range(n):
        low = rng.integers(40, 200, (4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BILINEAR)).copy()
        boxes, classes = [], []
        for _ in range(rng.integers(*per_image)):
            side_w, side_h = rng.integers(*obj_size, size=2)
            for _attempt in range(20):
                x0, y0 = int(rng.integers(0, w - side_w)), int(rng.integers(0, h - side_h))
                box = np.asarray([x0, y0, x0 + side_w, y0 + side_h], np.float32)
                if all(min(box[2], b[2]) <= max(box[0], b[0]) or min(box[3], b[3]) <= max(box[1], b[1]) for b in boxes):
                    break
            else:
                continue
            c = int(rng.integers(len(CLASSES)))
            obj = pools[c][int(rng.integers(len(pools[c])))]
            img[y0 : y0 + side_h, x0 : x0 + side_w] = np.asarray(
                Image.fromarray(obj).resize((int(side_w), int(side_h)), Image.BILINEAR)
            )
            boxes.append(box)
            classes.append(c)
        scenes.append(Scene(img, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)))
    return scenes


def yolo_line(cls: int, box: np.ndarray, size: tuple[int, int], polygon: bool) -> str:
    h, w = size
    x0, y0, x1, y1 = box / np.asarray([w, h, w, h])
    if polygon:  # an octagon-ish outline whose extent is exactly the box
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        pts = [(xm, y0), (x1, y0 + (y1 - y0) * 0.3), (x1, ym), (xm, y1), (x0, ym), (x0, y0 + (y1 - y0) * 0.2)]
        return f"{cls} " + " ".join(f"{v:.6f}" for p in pts for v in p)
    return f"{cls} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"


def write_yolo(root: Path, splits: dict[str, list[Scene]], names=CLASSES) -> Path:
    """``root/data.yaml`` and ``root/<split>/{images,labels}``; odd objects are written as polygons."""
    for split, scenes in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(scenes):
            Image.fromarray(s.image).save(root / split / "images" / f"{i:04d}.png")
            lines = [
                yolo_line(int(c), b, s.image.shape[:2], polygon=bool(k % 2))
                for k, (b, c) in enumerate(zip(s.boxes, s.classes))
            ]
            (root / split / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    listing = "\n".join(f"{split}: {split}/images" for split in splits)
    (root / "data.yaml").write_text(f"path: .\n{listing}\nnames: {list(names)}\n")
    return root / "data.yaml"


def write_coco(root: Path, scenes: list[Scene], category_ids=(3, 7), names=CLASSES) -> Path:
    """``root/images/*.png`` and ``root/instances.json`` (non-contiguous category ids, as COCO's)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, s in enumerate(scenes):
        Image.fromarray(s.image).save(root / "images" / f"{i:04d}.png")
        h, w = s.image.shape[:2]
        images.append({"id": 100 + i, "file_name": f"images/{i:04d}.png", "height": h, "width": w})
        for b, c in zip(s.boxes.tolist(), s.classes.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + i,
                    "category_id": category_ids[c],
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": cid, "name": n} for cid, n in zip(category_ids, names)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path

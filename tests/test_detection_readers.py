"""YOLO-format and COCO-JSON readers: boxes and polygons, class names, and every bad label named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detection_data import CLASSES, make_scenes, write_coco, write_yolo
from edgekd.data.detection import load_detection_set
from edgekd.data.detection.yolo import label_path
from edgekd.errors import DetectionDataError, InputNotFoundError


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(6, seed=1)


def _sorted(boxes):
    return boxes[np.lexsort(boxes.T[::-1])]


def test_yolo_boxes_and_polygons_read_back_in_pixels(tmp_path, scenes):
    data = write_yolo(tmp_path, {"train": scenes[:4], "val": scenes[4:]})
    ds = load_detection_set(data, "train")
    assert ds.names == CLASSES and len(ds) == 4 and not ds.issues
    for im, s in zip(ds.images, scenes[:4]):
        assert im.size == s.image.shape[:2]
        # polygons (every odd line) come back as their extent, boxes as themselves
        np.testing.assert_allclose(im.boxes, s.boxes, atol=1e-3)
        assert im.classes.tolist() == s.classes.tolist()
    assert len(load_detection_set(data, "val")) == 2
    assert "every label read" in ds.summary()


def test_yolo_names_as_mapping_and_image_list(tmp_path, scenes):
    write_yolo(tmp_path, {"train": scenes[:3]})
    (tmp_path / "list.txt").write_text("train/images/0000.png\ntrain/images/0002.png\n")
    (tmp_path / "data.yaml").write_text("train: list.txt\nnames: {0: cat, 1: ship}\nnc: 2\n")
    ds = load_detection_set(tmp_path / "data.yaml", "train")
    assert ds.names == ("cat", "ship")
    assert [im.path.name for im in ds.images] == ["0000.png", "0002.png"]


def test_yolo_yaml_without_path_by_a_relative_name(tmp_path, scenes, monkeypatch):
    """people-det's data.yaml has no ``path`` key: the splits are beside it, wherever it is named from."""
    write_yolo(tmp_path / "sets" / "mine", {"train": scenes[:2]})
    yaml = tmp_path / "sets" / "mine" / "data.yaml"
    yaml.write_text(yaml.read_text().replace("path: .\n", ""))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    ds = load_detection_set("../sets/mine/data.yaml", "train")
    assert len(ds.images) == 2 and ds.images[0].path.exists()


BAD_LINES = {
    "0 0.5 0.5 0.2": "malformed",  # 3 coordinates
    "0 0.5 zero 0.2 0.2": "malformed",  # not a number
    "0 0.1 0.1 0.2 0.2 0.3": "malformed",  # odd polygon
    "0 0.5 0.5 nan 0.2": "malformed",
    "2 0.5 0.5 0.2 0.2": "class-id",  # only classes 0 and 1
    "-1 0.5 0.5 0.2 0.2": "class-id",
    "0.5 0.5 0.5 0.2 0.2": "class-id",
    "1 0.95 0.5 0.2 0.2": "out-of-range",  # right edge at 1.05
    "1 0.1 0.1 1.2 0.1 0.5 0.4": "out-of-range",
    "0 0.5 0.5 0.0 0.2": "empty-box",
}


def test_yolo_bad_labels_are_counted_and_named(tmp_path, scenes):
    data = write_yolo(tmp_path, {"val": scenes[:2]})
    good = (tmp_path / "val" / "labels" / "0000.txt").read_text().splitlines()
    bad = list(BAD_LINES)
    lines = good[:1] + bad + [good[0]]  # and the first good line again: a duplicate
    (tmp_path / "val" / "labels" / "0000.txt").write_text("\n".join(lines) + "\n\n")
    ds = load_detection_set(data, "val")
    assert len(ds.images[0].boxes) == 1  # the one good line survives
    expected = {}
    for kind in BAD_LINES.values():
        expected[kind] = expected.get(kind, 0) + 1
    expected["duplicate"] = 1
    assert ds.issue_counts() == expected
    by_line = {i.line: i.kind for i in ds.issues}
    for lineno, text in enumerate(bad, 2):
        assert by_line[lineno] == BAD_LINES[text], text
    assert by_line[len(lines)] == "duplicate"
    summary = ds.summary()
    assert "4 labels skipped: malformed" in summary and "1 labels skipped: empty-box" in summary
    assert f"{tmp_path / 'val' / 'labels' / '0000.txt'}:2" in summary


def test_yolo_tiny_overshoot_is_clipped_not_refused(tmp_path, scenes):
    data = write_yolo(tmp_path, {"val": scenes[:1]})
    (tmp_path / "val" / "labels" / "0000.txt").write_text("0 0.9 0.5 0.2000004 0.2\n")
    ds = load_detection_set(data, "val")
    assert not ds.issues
    h, w = ds.images[0].size
    assert ds.images[0].boxes[0, 2] == pytest.approx(w)


def test_yolo_missing_and_orphan_label_files(tmp_path, scenes):
    data = write_yolo(tmp_path, {"val": scenes[:3]})
    (tmp_path / "val" / "labels" / "0001.txt").unlink()
    (tmp_path / "val" / "labels" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = load_detection_set(data, "val")
    assert [p.name for p in ds.unlabelled] == ["0001.png"]
    assert len(ds.images[1].boxes) == 0
    assert [(i.kind, i.file.name) for i in ds.issues] == [("missing-image", "gone.txt")]
    assert "1 images have no label file" in ds.summary()


def test_label_path_uses_the_last_images_folder(tmp_path):
    assert label_path(tmp_path / "images" / "a" / "images" / "x.jpg") == tmp_path / "images" / "a" / "labels" / "x.txt"
    assert label_path(tmp_path / "flat" / "x.jpg") == tmp_path / "flat" / "x.txt"


@pytest.mark.parametrize(
    "yaml_text,match",
    [
        ("train: train/images\n", "no class names"),
        ("train: train/images\nnames: [a, b]\nnc: 3\n", "nc is 3"),
        ("val: train/images\nnames: [a]\n", "no 'train' split"),
        ("- a\n- b\n", "mapping"),
        ("train: [unclosed\n", "not valid YAML"),
    ],
)
def test_yolo_bad_data_yaml(tmp_path, scenes, yaml_text, match):
    write_yolo(tmp_path, {"train": scenes[:1]})
    (tmp_path / "data.yaml").write_text(yaml_text)
    with pytest.raises(DetectionDataError, match=match):
        load_detection_set(tmp_path / "data.yaml", "train")


def test_yolo_split_folder_missing(tmp_path, scenes):
    write_yolo(tmp_path, {"train": scenes[:1]})
    (tmp_path / "data.yaml").write_text("train: nowhere/images\nnames: [a, b]\n")
    with pytest.raises(InputNotFoundError, match="nowhere"):
        load_detection_set(tmp_path / "data.yaml", "train")


def test_coco_reads_boxes_and_maps_category_ids(tmp_path, scenes):
    path = write_coco(tmp_path, scenes[:4])
    ds = load_detection_set(path)
    assert ds.names == CLASSES and len(ds) == 4 and not ds.issues
    for im, s in zip(ds.images, scenes[:4]):
        np.testing.assert_allclose(_sorted(im.boxes), _sorted(s.boxes), atol=1e-4)
        assert sorted(im.classes.tolist()) == sorted(s.classes.tolist())  # ids 3, 7 → classes 0, 1


def test_coco_bad_annotations_are_named(tmp_path, scenes):
    path = write_coco(tmp_path, scenes[:2])
    data = json.loads(path.read_text())
    good = len(data["annotations"])
    extra = [
        {"id": 901, "image_id": 100, "category_id": 5, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 902, "image_id": 555, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown image
        {"id": 903, "image_id": 100, "category_id": 3, "bbox": [1, 1, 0, 5]},  # no width
        {"id": 904, "image_id": 100, "category_id": 3, "bbox": [120, 1, 20, 5]},  # past the right edge (w 128)
        {"id": 905, "image_id": 100, "category_id": 3, "bbox": "1,1,5,5"},  # not a list
        {"id": 906, "image_id": 100, "category_id": 3, "bbox": [1, 1, 50, 50], "iscrowd": 1},  # crowd: not an object
    ]
    data["annotations"] += extra
    data["images"].append({"id": 200, "file_name": "images/missing.png", "height": 96, "width": 128})
    data["annotations"].append({"id": 907, "image_id": 200, "category_id": 3, "bbox": [1, 1, 5, 5]})
    path.write_text(json.dumps(data))
    ds = load_detection_set(path)
    assert ds.num_objects == good
    assert ds.issue_counts() == {
        "class-id": 1,
        "unknown-image": 1,
        "empty-box": 1,
        "out-of-range": 1,
        "malformed": 1,
        "missing-image": 1,
    }
    where = {i.kind: i.location() for i in ds.issues}
    assert where["class-id"].endswith(f"annotations[{good}] (id 901)")
    assert "missing.png" in where["missing-image"]


@pytest.mark.parametrize("content,match", [("{", "not valid JSON"), ('{"images": []}', "no annotations, categories")])
def test_coco_bad_file(tmp_path, content, match):
    (tmp_path / "a.json").write_text(content)
    with pytest.raises(DetectionDataError, match=match):
        load_detection_set(tmp_path / "a.json")


def test_unknown_dataset_kind(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(DetectionDataError, match="neither a YOLO data.yaml nor a COCO"):
        load_detection_set(tmp_path / "data.csv")
    with pytest.raises(InputNotFoundError):
        load_detection_set(tmp_path / "none.yaml")

"""A detector benchmarked end to end, host side: whether an artifact is a detector (its manifest's outputs), the
settings file and frames the runner's detector loop reads (:mod:`edgekd.bench.detect_loop`), the files it
needs beside it on the device, and the table of its stages."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.bench.runner import SHIPPED_MODULES
from edgekd.data.preprocess import Preprocess
from edgekd.detect.postprocess import DEFAULT_NMS
from edgekd.validate import check_number

SETTINGS_FILE = "edgekd_detect.json"
FRAMES_FILE = "edgekd_frames.npz"
MAX_FRAMES = 16  # the first images of a --frames folder: enough for a latency, small enough to upload
INTEGER_DTYPES = ("int64", "int32")  # a graph NMS's ``selected`` indices


@dataclass(frozen=True)
class EndToEndSettings:
    """How ``bench`` times a detector from frame to detections (a classifier is timed model-only)."""

    frames: str | None = None  # a folder of images, decoded here and uploaded; None: the runner's synthetic frames
    conf: float = 0.25  # a deployment's thresholds (Ultralytics' predict defaults), not evaluation's conf 0.001
    iou: float = 0.7
    max_det: int = 300

    def __post_init__(self):
        check_number("--conf", self.conf, minimum=0, maximum=1, hint="a score threshold, e.g. 0.25")
        check_number("--iou", self.iou, minimum=0, maximum=1, hint="the NMS IoU threshold, e.g. 0.7")
        check_number("--max-det", self.max_det, minimum=1, integer=True, hint="detections kept per frame, e.g. 300")


DEFAULT_END_TO_END = EndToEndSettings()


def detector_outputs(outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Which of the manifest's outputs is which, as the runner's settings say it; None when they are not a
    detector's: the decoded pair ``boxes [N, A, 4]`` + ``scores [N, A, C]`` (by name, else by shape), or
    Ultralytics' single ``[N, 4 + C, A]``, either with a graph NMS's ``selected [K, 3]`` beside it."""
    selected = [i for i, o in enumerate(outputs) if o.get("dtype") in INTEGER_DTYPES and _dims(o)[-1:] == [3]]
    rest = [i for i in range(len(outputs)) if i not in selected]
    roles = {"selected": selected[0] if len(selected) == 1 else None}
    if len(rest) == 1 and _single_output(_dims(outputs[rest[0]])):
        return dict(roles, layout="single", boxes=rest[0], scores=None)
    if len(rest) != 2:
        return None
    a, b = rest
    names = {outputs[a].get("name"): a, outputs[b].get("name"): b}
    if set(names) == {"boxes", "scores"}:
        return dict(roles, layout="pair", boxes=names["boxes"], scores=names["scores"])
    da, db = _dims(outputs[a]), _dims(outputs[b])
    if len(da) == len(db) == 3 and da[:2] == db[:2]:
        if da[2] == 4:
            return dict(roles, layout="pair", boxes=a, scores=b)
        if db[2] == 4:
            return dict(roles, layout="pair", boxes=b, scores=a)
    return None


def _dims(output: dict[str, Any]) -> list:
    return list(output.get("shape") or [])


def _single_output(d: list) -> bool:
    return len(d) == 3 and all(isinstance(x, int) for x in d[1:]) and 4 < d[1] < d[2]


def runner_settings(manifest: dict[str, Any], roles: dict[str, Any], settings: EndToEndSettings) -> dict[str, Any]:
    """The ``--detect`` file: the preprocessing the manifest records, the input as the runtime takes it, which
    output is which, and the NMS thresholds."""
    inp = manifest["inputs"][0]
    pre = {**Preprocess().to_dict(), **inp["preprocessing"]}  # keys a manifest older than them lacks: defaults
    return {
        "preprocessing": {k: pre[k] for k in ("size", "mean", "std", "scale", "channel_order", "resize")},
        "input": {"layout": inp.get("layout") or pre["layout"], "quantization": inp.get("quantization")},
        "outputs": roles,
        "nms": {
            "conf": settings.conf,
            "iou": settings.iou,
            "max_det": settings.max_det,
            "max_candidates": DEFAULT_NMS.max_candidates,
        },
    }


def write_frames(folder: str | Path, path: Path) -> int:
    """The first MAX_FRAMES images of ``folder`` decoded with edgekd's image reader into an .npz of uint8 RGB
    frames (one array per image, any sizes) for the runner; returns how many."""
    from edgekd.data.folder import scan_image_folder
    from edgekd.data.preprocess import read_rgb

    files = scan_image_folder(folder).files[:MAX_FRAMES]
    arrays = {}
    for i, f in enumerate(files):
        rgb = read_rgb(f, None)  # a 16-bit image comes back as float on the 0..255 scale: a camera hands uint8
        arrays[f"frame{i:05d}"] = rgb if rgb.dtype == np.uint8 else np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    with open(path, "wb") as out:  # a file object: np.savez would append .npz to a bare name
        np.savez(out, **arrays)
    return len(arrays)


def shipped_files() -> dict[str, Path]:
    """Name on the device → the file of edgekd's module the runner loads under that name."""
    return {f"{name}.py": Path(importlib.util.find_spec(module).origin) for name, module in SHIPPED_MODULES.items()}


def prepare(manifest: dict[str, Any], settings: EndToEndSettings | None, workdir: Path) -> dict[str, Path]:
    """The files a detector's end-to-end run uploads (name on the device → local file), written into
    ``workdir``; empty for a classifier, or when ``settings`` is None (model-only)."""
    roles = detector_outputs(manifest.get("outputs") or [])
    if settings is None or roles is None:
        return {}
    files = shipped_files()
    files[SETTINGS_FILE] = workdir / SETTINGS_FILE
    files[SETTINGS_FILE].write_text(json.dumps(runner_settings(manifest, roles, settings)))
    if settings.frames is not None:
        write_frames(settings.frames, workdir / FRAMES_FILE)
        files[FRAMES_FILE] = workdir / FRAMES_FILE
    return files


def runner_flags(remote: dict[str, str]) -> list[str]:
    """The runner's flags for the uploaded files (name → path on the device)."""
    flags = ["--detect", remote[SETTINGS_FILE]] if SETTINGS_FILE in remote else []
    return flags + (["--frames", remote[FRAMES_FILE]] if FRAMES_FILE in remote else [])


END_TO_END_HEADERS = ["device", "stage", "p50 ms", "p90 ms", "mean ms", "fps"]
STAGE_NAMES = {"preprocess": "preprocess", "model": "model", "decode": "decode/NMS", "total": "total"}


def end_to_end_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Per result with an end-to-end run, a row per stage; none for results without one (classifiers, runs
    stored before edgekd timed detectors end to end)."""
    rows = []
    for r in results:
        for key, name in STAGE_NAMES.items():
            s = (r.get("end_to_end") or {}).get("stages", {}).get(key)
            if s:
                rows.append([r["device"], name, _r(s["p50_ms"], 3), _r(s["p90_ms"], 3), _r(s["mean_ms"], 3)])
                rows[-1].append(_r(s["throughput_fps"], 1))
    return rows


def end_to_end_line(result: dict[str, Any]) -> str:
    """What the end-to-end rows of one result were timed on, in a sentence."""
    e = result["end_to_end"]
    f, pre, nms = e["frames"], e["preprocessing"], e["nms"]
    sizes = ", ".join(f"{w}×{h}" for h, w in f["sizes"])
    size = "×".join(str(v) for v in reversed(pre["size"]))
    return (
        f"{result['device']}: {f['count']} {f['source']} frame(s) ({sizes}) → {pre['resize']} {size}, "
        f"NMS in {nms['where']} (conf {nms['conf']}, IoU {nms['iou']}), "
        f"{e['detections_per_frame']:.1f} detections per frame"
    )


def _r(v, digits):
    return None if v is None else round(v, digits)

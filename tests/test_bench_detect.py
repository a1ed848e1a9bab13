"""Detectors benchmarked end to end (frame → preprocess → model → decode/NMS): the runner's numpy preprocessing
equals edgekd's, its detections equal edgekd's postprocess for the same frames (float and int8 inputs, numpy
and graph NMS), the files it ships need only numpy, and bench stores, prints and compares the stages."""

from __future__ import annotations

import ast
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import detector_card, lively_detector
from edgekd import api
from edgekd.artifact import read_manifest
from edgekd.backends import get_backend
from edgekd.bench import detect_loop, history
from edgekd.bench.end_to_end import (
    FRAMES_FILE,
    SETTINGS_FILE,
    EndToEndSettings,
    detector_outputs,
    prepare,
    runner_settings,
    shipped_files,
)
from edgekd.bench.session import RUNNER, BenchSettings
from edgekd.cli import main
from edgekd.data import frames as F
from edgekd.data.detection.letterbox import letterbox
from edgekd.data.preprocess import Preprocess
from edgekd.detect.graph_nms import add_nms
from edgekd.detect.postprocess import Detections, NmsSettings, select, split_outputs
from edgekd.detect.validate import artifact_preprocess
from edgekd.errors import DataError
from edgekd.models.yolo_decode import DecodedYolo


def camera_frames() -> list[np.ndarray]:
    """Frames of several sizes: shrunk (wide, tall, by 5×), already the model's size, and enlarged."""
    rng = np.random.default_rng(7)
    sizes = [(48, 80), (90, 50), (320, 320), (64, 64), (30, 40)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


# --- the numpy preprocessing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source,size",
    [((480, 640), (360, 480)), ((1080, 1920), (360, 640)), ((37, 101), (13, 29)), ((40, 30), (97, 64)),
     ((64, 80), (80, 100)), ((99, 77), (98, 12)), ((5, 7), (64, 64)), ((50, 80), (50, 41))],
)  # fmt: skip
def test_resize_is_pillows_bilinear_bit_for_bit(source, size):
    rgb = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    np.testing.assert_array_equal(F.resize_bilinear(rgb, size), want)


@pytest.mark.parametrize("channel_order,layout", [("RGB", "NCHW"), ("BGR", "NHWC")])
def test_a_frame_becomes_the_input_edgekd_computes(channel_order, layout):
    pre = Preprocess(
        size=(64, 48), mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), channel_order=channel_order, layout=layout,
        resize="letterbox",
    )  # fmt: skip
    for rgb in camera_frames():
        img, fit = letterbox(rgb, pre.size)
        ours, scale, pad = F.letterbox_frame(rgb, pre.size)
        assert (scale, pad) == (fit.scale, fit.pad)
        np.testing.assert_array_equal(ours, img)
        x = F.normalize(ours, pre.scale, pre.mean, pre.std, channel_order, layout)
        np.testing.assert_array_equal(x, pre.apply(img))


def test_int8_input_is_quantized_with_the_given_scale():
    class Uint8Model:  # ONNX Runtime reports no scale: the settings file's is used
        input_shape, input_dtype = [1, 3, 64, 64], "uint8"

    spec = {
        "preprocessing": {"size": [64, 64], "mean": [0, 0, 0], "std": [1, 1, 1], "scale": 1 / 255,
                          "channel_order": "RGB", "resize": "letterbox"},
        "input": {"layout": "NCHW", "quantization": {"scale": 0.5 / 255, "zero_point": 3}},
        "outputs": {"layout": "pair", "boxes": 0, "scores": 1, "selected": None},
        "nms": {"conf": 0.25, "iou": 0.7, "max_det": 300, "max_candidates": 30000},
    }  # fmt: skip
    x, _ = detect_loop.Pipeline(Uint8Model(), spec, F, None).preprocess([camera_frames()[0]])
    assert x.dtype == np.uint8 and x.shape == (1, 3, 64, 64)
    img, _, _ = F.letterbox_frame(camera_frames()[0], (64, 64))
    want = np.clip(np.rint(img.transpose(2, 0, 1).astype(np.float32) * 2) + 3, 0, 255)  # (p/255)/(0.5/255)
    np.testing.assert_array_equal(x[0], want)
    Uint8Model.input_quantization = None
    spec["input"]["quantization"] = None
    with pytest.raises(detect_loop.FramesError, match="takes uint8"):
        detect_loop.Pipeline(Uint8Model(), spec, F, None)


# --- the runner on a board: only its own files, numpy and the runtime ---------------------------------

BOARD = """
import runpy, sys

class NotOnTheBoard:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("edgekd", "PIL", "cv2", "torch"):
            raise ImportError("a board has no " + name)

sys.meta_path.insert(0, NotOnTheBoard())
sys.argv = ["edgekd_runner.py"] + sys.argv[1:]
runpy.run_path("edgekd_runner.py", run_name="__main__")
"""


def run_on_board(tmp_path, model_file, settings, frames, *flags) -> tuple[subprocess.CompletedProcess, Path]:
    """The runner in a folder holding only what bench uploads, under ``python -I`` with edgekd, Pillow, OpenCV
    and torch unimportable; returns the process and the folder."""
    board = tmp_path / "board"
    board.mkdir()
    shutil.copy(RUNNER, board / "edgekd_runner.py")
    for name, path in shipped_files().items():
        shutil.copy(path, board / name)
    for f in Path(model_file).parent.iterdir():
        if f.is_file():
            shutil.copy(f, board / f.name)
    (board / SETTINGS_FILE).write_text(json.dumps(settings))
    np.savez(board / FRAMES_FILE, **{f"frame{i:05d}": f for i, f in enumerate(frames)})
    argv = [sys.executable, "-I", "-c", BOARD, Path(model_file).name, "--threads", "1", "--detect", SETTINGS_FILE]
    argv += ["--frames", FRAMES_FILE, "--save-detections", "dets.npz", "--out", "r.json", *flags]
    return subprocess.run(argv, cwd=board, capture_output=True, text=True, timeout=300), board


def board_detections(board: Path, n: int) -> list[Detections]:
    with np.load(board / "dets.npz") as d:
        return [Detections(d[f"boxes{i}"], d[f"scores{i}"], d[f"classes{i}"]) for i in range(n)]


def edgekd_detections(run, frames, pre: Preprocess, nms: NmsSettings, selected: bool = False) -> list[Detections]:
    """What edgekd's own host path finds: Pillow letterbox, Preprocess, the backend's session, postprocess."""
    out = []
    for rgb in frames:
        img, fit = letterbox(rgb, pre.size, pre.resize)
        boxes, scores = split_outputs(run(pre.apply(img)[None]))
        det = select(boxes[0], scores[0], nms)
        out.append(Detections(fit.to_source(det.boxes), det.scores, det.classes))
    return out


def assert_same(got: list[Detections], want: list[Detections]) -> None:
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.classes, w.classes)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-6)
        np.testing.assert_allclose(g.boxes, w.boxes, rtol=1e-5, atol=1e-4)


NMS = NmsSettings(conf=0.25, iou=0.5, max_det=100)


def test_runner_finds_what_edgekd_finds_timing_each_stage(detector_artifact, tmp_path):
    manifest = read_manifest(detector_artifact)
    settings = runner_settings(
        manifest, detector_outputs(manifest["outputs"]), EndToEndSettings(None, NMS.conf, NMS.iou, NMS.max_det)
    )
    frames = camera_frames()
    proc, board = run_on_board(
        tmp_path, detector_artifact / "model.onnx", settings, frames, "--runtime", "onnxruntime",
        "--iterations", str(2 * len(frames)), "--warmup", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = get_backend("onnxruntime").session(detector_artifact / "model.onnx", threads=1)
    want = edgekd_detections(run, frames, artifact_preprocess(manifest), NMS)
    got = board_detections(board, len(frames))
    assert_same(got, want)
    assert sum(len(d.scores) for d in want) > len(frames)  # frames with several detections: NMS had work

    e2e = json.loads((board / "r.json").read_text())["end_to_end"]
    stages = e2e["stages"]
    for s in stages.values():
        assert s["iterations"] == 2 * len(frames) and 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["max_ms"]
    assert stages["total"]["p50_ms"] >= stages["model"]["p50_ms"]  # per run, total = the sum of the stages
    assert e2e["frames"] == {
        "source": "given",
        "count": len(frames),
        "sizes": [[30, 40], [48, 80], [64, 64], [90, 50], [320, 320]],
        "what": f"uint8 RGB frames from {FRAMES_FILE}",
    }
    assert e2e["detections_per_frame"] == pytest.approx(np.mean([len(d.scores) for d in want]))
    assert e2e["nms"]["where"] == "numpy" and e2e["preprocessing"]["resize"] == "letterbox"
    assert "edgekd-progress %d/%d" % (4 * len(frames), 4 * len(frames)) in proc.stderr  # model-only + end to end


def test_runner_refuses_frames_that_are_not_uint8_rgb(detector_artifact, tmp_path):
    manifest = read_manifest(detector_artifact)
    settings = runner_settings(manifest, detector_outputs(manifest["outputs"]), EndToEndSettings())
    proc, _ = run_on_board(
        tmp_path, detector_artifact / "model.onnx", settings, [np.zeros((8, 8, 3), np.float32)],
        "--runtime", "onnxruntime", "--iterations", "1",
    )  # fmt: skip
    assert proc.returncode == 2 and "edgekd-error detect: FramesError" in proc.stderr


def _one_class_detector_with_graph_nms(path: Path, iou: float, conf: float) -> Path:
    model = lively_detector(num_classes=1, seed=1)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 3, 64, 64),), buf, dynamo=False, opset_version=17, input_names=["input"],
            output_names=list(DecodedYolo.output_names),
        )  # fmt: skip
    graph = add_nms(ir.from_proto(onnx.load_from_string(buf.getvalue())), iou, conf, max_per_class=1000)
    path.write_bytes(ir.to_proto(graph).SerializeToString())
    return path


def test_a_graph_nms_output_replaces_the_numpy_nms(tmp_path):
    """One class: ONNX NonMaxSuppression and edgekd's numpy NMS are the same algorithm, so the runner reading
    ``selected`` finds what edgekd's postprocess finds with numpy."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model = _one_class_detector_with_graph_nms(model_dir / "nms.onnx", NMS.iou, NMS.conf)
    outputs = [_out("boxes", "float32", [1, 336, 4]), _out("scores", "float32", [1, 336, 1])]
    outputs.append(_out("selected", "int64", ["K", 3]))
    assert [o.name for o in onnx.load(model).graph.output] == [o["name"] for o in outputs]
    pre = Preprocess(size=(64, 64), resize="letterbox")
    manifest = {"inputs": [{"layout": "NCHW", "preprocessing": pre.to_dict()}], "outputs": outputs}
    roles = detector_outputs(outputs)
    assert roles == {"layout": "pair", "boxes": 0, "scores": 1, "selected": 2}
    settings = runner_settings(manifest, roles, EndToEndSettings(None, NMS.conf, NMS.iou, NMS.max_det))
    # square frames: no grey bars, whose cells score alike, and ties may be broken either way by the two NMS
    frames = [f for f in camera_frames() if f.shape[0] == f.shape[1]]
    proc, board = run_on_board(tmp_path, model, settings, frames, "--runtime", "onnxruntime", "--iterations", "3")
    assert proc.returncode == 0, proc.stderr
    run = get_backend("onnxruntime").session(model, threads=1)
    want = edgekd_detections(run, frames, pre, NMS)
    assert_same(board_detections(board, len(frames)), want)
    assert sum(len(d.scores) for d in want) > len(frames)
    assert json.loads((board / "r.json").read_text())["end_to_end"]["nms"]["where"] == "graph"


def test_an_int8_input_tflite_detector_on_litert(detector_torchscript, tmp_path):
    from edgekd.passes.calibrate import CalibrationWarning

    card = detector_card(tmp_path / "det.toml", detector_torchscript)
    calib = np.stack([F.normalize(F.letterbox_frame(f, (64, 64))[0], 1 / 255, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
                      for f in camera_frames()] * 4)  # fmt: skip
    np.save(tmp_path / "calib.npy", calib)
    config = api.make_config(
        str(card), "rpi4", tmp_path / "rpi4", precision="int8", calib=tmp_path / "calib.npy",
        skip=("sensitivity", "verify", "int8-coverage", "speed-check"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        out = api.compile(config).output
    manifest = read_manifest(out)
    assert manifest["inputs"][0]["dtype"] == "int8" and manifest["inputs"][0]["layout"] == "NHWC"
    settings = runner_settings(
        manifest, detector_outputs(manifest["outputs"]), EndToEndSettings(None, NMS.conf, NMS.iou, NMS.max_det)
    )
    settings["input"]["quantization"] = None  # LiteRT says the input's scale itself
    frames = camera_frames()
    proc, board = run_on_board(
        tmp_path, out / "model.tflite", settings, frames, "--runtime", "litert", "--iterations", "2"
    )
    assert proc.returncode == 0, proc.stderr
    run = get_backend("tflite").session(out / "model.tflite", threads=1)
    want = edgekd_detections(run, frames, artifact_preprocess(manifest), NMS)
    assert_same(board_detections(board, len(frames)), want)
    assert sum(len(d.scores) for d in want) > 0


def test_shipped_files_need_only_numpy_and_python_38():
    for name, path in shipped_files().items():
        tree = ast.parse(path.read_text(), feature_version=(3, 8))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported <= {"__future__", "numpy", "time"}, (name, imported)
        assert "dataclass" not in path.read_text()  # loaded by path on a board: no sys.modules entry to rely on


# --- which artifacts, and the session --------------------------------------------------------------


def _out(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": shape}


@pytest.mark.parametrize(
    "outputs,roles",
    [
        ([_out("scores", "float32", [1, 9, 4]), _out("boxes", "float32", [1, 9, 4])],
         {"layout": "pair", "boxes": 1, "scores": 0, "selected": None}),
        ([_out("output0", "float32", [1, 9, 3]), _out("output1", "float32", [1, 9, 4])],
         {"layout": "pair", "boxes": 1, "scores": 0, "selected": None}),
        ([_out("boxes", "float32", ["N", 9, 4]), _out("scores", "float32", ["N", 9, 2]),
          _out("selected", "int64", ["K", 3])],
         {"layout": "pair", "boxes": 0, "scores": 1, "selected": 2}),
        ([_out("output0", "float32", [1, 84, 8400])],
         {"layout": "single", "boxes": 0, "scores": None, "selected": None}),
        ([_out("logits", "float32", [1, 10])], None),
        ([_out("a", "float32", [1, 9, 3]), _out("b", "float32", [1, 9, 5])], None),
    ],
)  # fmt: skip
def test_the_manifest_says_which_output_is_which(outputs, roles):
    assert detector_outputs(outputs) == roles


def test_a_classifier_is_timed_model_only(resnet_artifact, tmp_path):
    assert prepare(read_manifest(resnet_artifact), EndToEndSettings(), tmp_path) == {}


@pytest.fixture
def det_art(tmp_path, detector_artifact):
    return shutil.copytree(detector_artifact, tmp_path / "det")


def write_images(folder: Path) -> Path:
    folder.mkdir()
    for i, rgb in enumerate(camera_frames()[:2]):
        Image.fromarray(rgb).save(folder / f"{i}.png")
    return folder


def test_bench_times_a_detector_end_to_end_and_keeps_it(det_art, tmp_path):
    e2e = EndToEndSettings(frames=str(write_images(tmp_path / "imgs")), conf=0.3)
    r = api.bench(det_art, "local", BenchSettings(threads=1, warmup=1, iterations=4, end_to_end=e2e))
    assert r["end_to_end"]["frames"]["source"] == "given" and r["end_to_end"]["frames"]["count"] == 2
    assert r["end_to_end"]["frames"]["sizes"] == [[48, 80], [90, 50]]
    assert r["end_to_end"]["stages"]["total"]["iterations"] == 4 and r["latency"]["iterations"] == 4
    assert r["settings_requested"]["end_to_end"]["conf"] == 0.3
    stored = json.loads(next((det_art / "results").glob("*.json")).read_text())
    assert stored["end_to_end"]["stages"] == r["end_to_end"]["stages"]
    report = (det_art / "report.md").read_text()
    assert "End to end, frame to detections" in report and "| local | decode/NMS |" in report
    (run,) = history.runs(det_art)
    assert run["e2e_p50_ms"] == r["end_to_end"]["stages"]["total"]["p50_ms"]


def test_bench_synthesises_frames_without_any(det_art):
    r = api.bench(det_art, "local", BenchSettings(threads=1, warmup=0, iterations=2))
    assert r["end_to_end"]["frames"]["source"] == "synthetic"
    assert r["end_to_end"]["frames"]["sizes"] == [[480, 640]] and r["end_to_end"]["frames"]["count"] == 4


def test_a_frames_folder_without_images_fails_before_the_run(det_art, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        e2e = EndToEndSettings(frames=str(tmp_path / "empty"))
        api.bench(det_art, "local", BenchSettings(iterations=1, end_to_end=e2e))
    assert not list((det_art / "results").glob("*.json"))


def test_cli_prints_the_stages_and_compare_shows_end_to_end(det_art):
    res = CliRunner().invoke(main, ["bench", str(det_art), "-n", "3", "--warmup", "0", "--threads", "1", "-q"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:2] == ["device", "runtime"] and lines[2].split()[:4] == ["local", "onnxruntime", "1", "3"]
    at = lines.index("end to end (frame → detections):")
    assert lines[at + 1].split() == ["device", "stage", "p50", "ms", "p90", "ms", "mean", "ms", "fps"]
    assert [line.split()[1] for line in lines[at + 3 : at + 7]] == ["preprocess", "model", "decode/NMS", "total"]
    assert "4 synthetic frame(s) (640×480) → letterbox 64×64, NMS in numpy (conf 0.25, IoU 0.7)" in res.output

    cmp = CliRunner().invoke(main, ["bench", str(det_art), "--compare"])
    assert cmp.exit_code == 0, cmp.output
    header, _, row = cmp.output.splitlines()[:3]
    assert header.split()[:10] == ["target", "device", "runtime", "threads", "p50", "ms", "p90", "ms", "p99", "ms"]
    assert header.split()[10:13] == ["e2e", "p50", "ms"]
    assert float(row.split()[7]) == pytest.approx(history.runs(det_art)[0]["e2e_p50_ms"], rel=1e-3)

    only = CliRunner().invoke(main, ["bench", str(det_art), "-n", "2", "--warmup", "0", "--model-only", "-q"])
    assert only.exit_code == 0 and "end to end" not in only.output, only.output
    assert history.runs(det_art)[1]["e2e_p50_ms"] is None


OLD_TABLE = """CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL, device TEXT NOT NULL, target TEXT NOT NULL, runtime TEXT NOT NULL,
    runtime_version TEXT, artifact_sha256 TEXT NOT NULL, threads INTEGER, iterations INTEGER,
    p50_ms REAL, p90_ms REAL, p99_ms REAL, mean_ms REAL, std_ms REAL, throughput_fps REAL, peak_rss_mb REAL,
    host TEXT, result TEXT NOT NULL
)"""


def test_a_history_written_before_end_to_end_gains_its_columns(det_art):
    (det_art / "results").mkdir(exist_ok=True)
    with sqlite3.connect(det_art / "results" / history.DB) as db:
        db.execute(OLD_TABLE)
        db.execute(
            "INSERT INTO runs (started, device, target, runtime, artifact_sha256, p50_ms, result) "
            "VALUES ('2025-01-01T00:00:00+00:00', 'pi', 'onnx-cpu', 'onnxruntime', 'x', 3.0, '{}')"
        )
    db.close()
    api.bench(det_art, "local", BenchSettings(threads=1, warmup=0, iterations=2))
    old, new = history.runs(det_art)
    assert old["device"] == "pi" and old["e2e_p50_ms"] is None and new["e2e_p50_ms"] > 0
    rows = history.latest_per_device([det_art])
    assert {r["device"] for r in rows} == {"pi", "local"}

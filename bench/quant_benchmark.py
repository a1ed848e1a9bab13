"""int8 post-training quantization: edgekd's observers against ONNX Runtime and NNCF.

    python bench/quant_benchmark.py --data ../shared/data/cifar10/train \\
        --model examples/cifar10/model.toml --json build/quant-benchmark.json \\
        --markdown docs/quantization-benchmark.md

One run, one model, one set of images. The model card's model is exported to a float ONNX graph
once (edgekd fp32 compile: BN folded, Conv+ReLU marked); every method quantizes that same graph,
calibrates on the same 512 preprocessed training images and is scored by ONNX Runtime (CPU) on the
same held-out validation images (every 10th image of each class: the split the teacher was trained
with). Reported per method: calibration seconds, total seconds, int8 top-1 and its drop against float.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd import __version__ as EDGEKD_VERSION
from edgekd import api
from edgekd.artifact import sha256_file
from edgekd.bench.runner import cpu_model
from edgekd.config import CalibrationOptions
from edgekd.data.folder import ImageFolder, scan_image_folder, split_holdout
from edgekd.data.preprocess import Preprocess, load_image
from edgekd.model_config import ModelCard, read_model_card

TARGET_MAX_DROP_PT = 0.3  # the targets: drop ≤ 0.3 pt, no worse than the best peer,
# and calibration no slower than ONNX Runtime MinMax
DEFAULT_METHOD = CalibrationOptions().method  # the observer the targets are judged on


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", required=True, help="labelled image folder (DIR/<class>/*.jpg); split into train/validation"
    )
    ap.add_argument("--model", default="examples/cifar10/model.toml", help="edgekd model card (.toml)")
    ap.add_argument("--weights", help="state_dict to use instead of the card's weights (e.g. a training checkpoint)")
    ap.add_argument("--eval-samples", type=int, default=5000, help="validation images scored (default: 5000, all)")
    ap.add_argument("--calib-samples", type=int, default=512, help="training images to calibrate on (default: 512)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads when scoring (default: 2)")
    ap.add_argument(
        "--methods", default="all", help="comma list of method names to run (see --list-methods); default: all"
    )
    ap.add_argument("--list-methods", action="store_true", help="print the method names and exit")
    ap.add_argument(
        "--workdir",
        help="keep the float model, calibration array and quantized models here "
        "(default: a temporary folder, removed at the end)",
    )
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--markdown", help="write the results as a markdown page to this file")
    return ap.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """What every method shares: the float graph, the calibration array and the validation set."""

    card: ModelCard
    weights: Path
    preprocess: Preprocess
    float_onnx: Path
    input_name: str
    calib_npy: Path
    val_x: np.ndarray
    val_y: np.ndarray
    data: dict


def resolve_weights(card: ModelCard, override: str | None) -> Path:
    weights = Path(override) if override else card.weights
    if weights is None:
        fail("the model card names no weights; pass --weights FILE")
    if not weights.exists():
        fail(
            f"weights {weights} do not exist. Train them (examples/cifar10/train_teacher.py) or pass "
            f"--weights FILE, e.g. a state_dict saved from the training checkpoint"
        )
    return weights


def check_data(data: str) -> Path:
    root = Path(data)
    if not root.is_dir():
        fail(
            f"--data {root} does not exist or is not a folder (expected DIR/<class>/*.jpg, "
            f"e.g. ../shared/data/cifar10/train)"
        )
    return root


def load_folder(data: str) -> tuple[ImageFolder, ImageFolder]:
    root = check_data(data)
    folder = scan_image_folder(root)
    if folder.labels is None:
        fail(f"--data {root} has no class subfolders, so there is nothing to score top-1 against")
    return split_holdout(folder)  # every 10th image per class → validation, as the teacher was trained


def spread_indices(total: int, n: int) -> np.ndarray:
    """n evenly spaced indices over [0, total): deterministic, and covers every class of a sorted folder."""
    if n >= total:
        return np.arange(total)
    return np.linspace(0, total - 1, n).round().astype(int)


def preprocess_images(folder: ImageFolder, indices: np.ndarray, pre: Preprocess) -> np.ndarray:
    return np.stack([load_image(folder.files[i], pre) for i in indices]).astype(np.float32)


def model_labels(folder: ImageFolder, indices: np.ndarray, label_names: tuple[str, ...] | None) -> np.ndarray:
    """Folder labels in the model's label order (the card's names; else the sorted folder names)."""
    if not label_names:
        return np.asarray([folder.labels[i] for i in indices])
    missing = [c for c in folder.classes if c not in label_names]
    if missing:
        fail(f"classes {missing} in --data are not among the model's labels {list(label_names)}")
    mapping = [label_names.index(c) for c in folder.classes]
    return np.asarray([mapping[folder.labels[i]] for i in indices])


def export_float(card_path: str, weights: Path, out: Path) -> Path:
    """The float ONNX graph every method quantizes: edgekd's fp32 compile (BN folded, Conv+ReLU marked)."""
    config = api.make_config(card_path, "onnx-cpu", out, weights=weights, precision="fp32", force=True)
    result = api.compile(config)
    return result.output / result.manifest["artifact"]["model_file"]


def graph_input_name(onnx_path: Path) -> str:
    import onnx

    model = onnx.load(str(onnx_path))
    initializers = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def prepare_inputs(args: argparse.Namespace, workdir: Path) -> Inputs:
    card = read_model_card(args.model)
    weights = resolve_weights(card, args.weights)
    train, val = load_folder(args.data)
    pre = api.make_config(args.model, "onnx-cpu", workdir).input.preprocess
    progress(f"data: {len(train)} train / {len(val)} validation images in {args.data}")

    progress("exporting the float ONNX model (edgekd fp32 compile) ...")
    float_onnx = export_float(args.model, weights, workdir / "fp32")

    calib_idx = spread_indices(len(train), args.calib_samples)
    progress(f"preprocessing {len(calib_idx)} calibration images (train split) ...")
    calib_npy = workdir / "calib.npy"
    np.save(calib_npy, preprocess_images(train, calib_idx, pre))

    val_idx = spread_indices(len(val), args.eval_samples)
    progress(f"preprocessing {len(val_idx)} validation images ...")
    val_x = preprocess_images(val, val_idx, pre)
    val_y = model_labels(val, val_idx, card.labels)

    data = {
        "root": str(args.data),
        "train_images": len(train),
        "validation_images": len(val),
        "eval_samples": len(val_idx),
        "calib_samples": len(calib_idx),
        "calib_selection": "evenly spaced indices over the sorted train split",
        "calib_sha256": sha256_file(calib_npy),
    }
    return Inputs(card, weights, pre, float_onnx, graph_input_name(float_onnx), calib_npy, val_x, val_y, data)


def calibration_samples(inputs: Inputs) -> np.ndarray:
    return np.load(inputs.calib_npy)


# ----------------------------------------------------------------------------- scoring


def predictions(onnx_path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    """Top-1 class of every sample in ONNX Runtime CPU, one sample per run (the graph's batch is 1)."""
    from edgekd.runtime import ort_session

    sess = ort_session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    return np.asarray([int(np.argmax(sess.run(None, {name: x[i : i + 1]})[0])) for i in range(len(x))])


@dataclass(frozen=True)
class Scorer:
    """Scores a model on the validation set against the float model's predictions."""

    x: np.ndarray
    y: np.ndarray
    threads: int
    float_preds: np.ndarray

    @property
    def float_top1(self) -> float:
        return float(np.mean(self.float_preds == self.y))

    def score(self, onnx_path: Path) -> tuple[float, int]:
        """(top-1, how many predictions differ from float's)."""
        preds = predictions(onnx_path, self.x, self.threads)
        return float(np.mean(preds == self.y)), int(np.sum(preds != self.float_preds))


def float_scorer(inputs: Inputs, threads: int) -> Scorer:
    return Scorer(inputs.val_x, inputs.val_y, threads, predictions(inputs.float_onnx, inputs.val_x, threads))


# ----------------------------------------------------------------------------- methods


@dataclass
class Quantized:
    """What a method's quantization call leaves: the int8 model and its timings."""

    model: Path
    calib_s: float  # calibration + quantization only
    total_s: float  # the whole call that produces the int8 model file


@dataclass
class Method:
    name: str
    tool: str
    params: dict
    run: Callable[[Inputs, Path], Quantized]


@dataclass
class Result:
    name: str
    tool: str
    params: dict
    calib_s: float | None = None
    total_s: float | None = None
    top1: float | None = None
    drop_pt: float | None = None
    changed: int | None = None  # validation images whose top-1 class differs from float's
    error: str | None = None


def card_input_overrides(card: ModelCard) -> dict:
    """make_config arguments that give an ONNX model the card's input and preprocessing."""
    inp = card.input
    return {
        "input_shape": inp.get("shape"),
        "mean": inp.get("mean"),
        "std": inp.get("std"),
        "scale": inp.get("scale"),
        "channel_order": inp.get("channel_order"),
        "layout": inp.get("layout"),
        "input_name": inp.get("name"),
        "labels": card.labels,
    }


def edgekd_method(calib_method: str) -> Method:
    params = {
        "calib_method": calib_method,
        "calib_batch": 32,
        "activations": "asymmetric int8 (onnx-cpu target)",
        "weights": "int8 per-channel symmetric",
        "skip": ["sensitivity"],
    }
    params.update({"ema": {"ema_constant": 0.01}, "percentile": {"percentile": 99.99}}.get(calib_method, {}))

    def run(inputs: Inputs, out: Path) -> Quantized:
        config = api.make_config(
            str(inputs.float_onnx),
            "onnx-cpu",
            out,
            precision="int8",
            calib=inputs.calib_npy,
            calib_method=calib_method,
            calib_samples=inputs.data["calib_samples"],
            skip=("sensitivity",),
            force=True,
            **card_input_overrides(inputs.card),
        )
        t0 = time.perf_counter()
        result = api.compile(config)
        total = time.perf_counter() - t0
        seconds = {p["name"]: p["seconds"] for p in result.manifest["passes"]}
        return Quantized(
            result.output / result.manifest["artifact"]["model_file"], seconds["calibrate"] + seconds["quantize"], total
        )

    return Method(f"edgekd {calib_method}", "edgekd", params, run)


@contextmanager
def root_logger_level(level: int):
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


class SampleReader:
    """onnxruntime.quantization.CalibrationDataReader over the shared samples, one per run
    (the float graph's batch dimension is fixed at 1)."""

    def __init__(self, input_name: str, samples: np.ndarray):
        self.input_name, self.samples, self.i = input_name, samples, 0

    def get_next(self):
        if self.i >= len(self.samples):
            return None
        self.i += 1
        return {self.input_name: self.samples[self.i - 1 : self.i]}

    def rewind(self):
        self.i = 0


def ort_method(calibrate_method: str) -> Method:
    params = {
        "calibrate_method": calibrate_method,
        "quant_format": "QDQ",
        "per_channel": True,
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "quant_pre_process": False,
    }
    params.update(
        {"Percentile": {"percentile": 99.999}, "Entropy": {"num_bins": 128, "num_quantized_bins": 128}}.get(
            calibrate_method, {}
        )
    )

    def run(inputs: Inputs, out: Path) -> Quantized:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        out.mkdir(parents=True, exist_ok=True)
        model = out / "model.onnx"
        reader = SampleReader(inputs.input_name, calibration_samples(inputs))
        t0 = time.perf_counter()
        with root_logger_level(logging.ERROR):  # "consider pre-processing": deliberately not run, see the notes
            quantize_static(
                str(inputs.float_onnx),
                str(model),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod[calibrate_method],
            )
        seconds = time.perf_counter() - t0
        return Quantized(model, seconds, seconds)

    return Method(f"ORT {calibrate_method}", "onnxruntime", params, run)


def nncf_method() -> Method:
    params = {
        "subset_size": "all calibration samples",
        "preset": "default (performance: symmetric activations)",
        "fast_bias_correction": "default (on)",
    }

    def run(inputs: Inputs, out: Path) -> Quantized:
        import nncf
        import onnx

        out.mkdir(parents=True, exist_ok=True)
        model = onnx.load(str(inputs.float_onnx))
        samples = calibration_samples(inputs)
        dataset = nncf.Dataset([samples[i : i + 1] for i in range(len(samples))], lambda x: {inputs.input_name: x})
        t0 = time.perf_counter()
        quantized = nncf.quantize(model, dataset, subset_size=len(samples))
        calib = time.perf_counter() - t0
        onnx.save(quantized, str(out / "model.onnx"))
        return Quantized(out / "model.onnx", calib, time.perf_counter() - t0)

    return Method("NNCF", "nncf", params, run)


def all_methods() -> list[Method]:
    return (
        [edgekd_method(m) for m in ("ema", "minmax", "percentile", "mse")]
        + [ort_method(m) for m in ("MinMax", "Entropy", "Percentile")]
        + [nncf_method()]
    )


def select_methods(spec: str) -> list[Method]:
    methods = all_methods()
    if spec == "all":
        return methods
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    by_name = {m.name.lower(): m for m in methods}
    unknown = [w for w in wanted if w.lower() not in by_name]
    if unknown:
        fail(f"unknown method(s) {unknown}; choose from: {', '.join(m.name for m in methods)}")
    return [by_name[w.lower()] for w in wanted]


def tool_missing(tool: str) -> str | None:
    """Why a tool cannot run here, or None."""
    module = {"edgekd": "edgekd", "onnxruntime": "onnxruntime.quantization", "nncf": "nncf"}[tool]
    try:
        __import__(module)
    except ImportError as e:
        hint = " (pip install -e '.[bench]')" if tool == "nncf" else ""
        return f"not installed: {e}{hint}"
    return None


def run_method(method: Method, inputs: Inputs, workdir: Path, scorer: Scorer) -> Result:
    result = Result(method.name, method.tool, method.params)
    missing = tool_missing(method.tool)
    if missing:
        result.error = f"skipped: {missing}"
        return result
    try:
        q = method.run(inputs, workdir / method.name.replace(" ", "-").lower())
        result.calib_s, result.total_s = q.calib_s, q.total_s
        result.top1, result.changed = scorer.score(q.model)
        result.drop_pt = 100.0 * (scorer.float_top1 - result.top1)
    except Exception as e:  # a peer failing is a result to report, not a reason to lose the others
        result.error = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        traceback.print_exc(file=sys.stderr)
    return result


def run_all(methods: list[Method], inputs: Inputs, workdir: Path, scorer: Scorer) -> list[Result]:
    results = []
    for i, method in enumerate(methods, 1):
        progress(f"[{i}/{len(methods)}] {method.name} ...")
        r = run_method(method, inputs, workdir, scorer)
        progress(
            f"[{i}/{len(methods)}] {method.name}: "
            + (
                r.error
                or f"calibration {r.calib_s:.2f} s, total {r.total_s:.2f} s, top-1 {100 * r.top1:.2f} %, "
                f"drop {r.drop_pt:+.2f} pt, {r.changed} predictions changed"
            )
        )
        results.append(r)
    return results


# ----------------------------------------------------------------------------- targets


def find(results: list[Result], name: str) -> Result | None:
    return next((r for r in results if r.name == name and r.error is None), None)


def compare(results: list[Result]) -> dict:
    """The issue's targets, judged on edgekd's default observer against the peers that ran."""
    name = f"edgekd {DEFAULT_METHOD}"
    default, ort_minmax = find(results, name), find(results, "ORT MinMax")
    peers = [r for r in results if r.tool != "edgekd" and r.error is None]
    best = min(peers, key=lambda r: r.drop_pt) if peers else None
    out: dict = {
        "edgekd_method": name,
        "best_peer": best.name if best else None,
        "best_peer_drop_pt": best.drop_pt if best else None,
    }
    if default is None:
        return {**out, "note": f"{name} did not run"}
    out["edgekd_drop_pt"] = default.drop_pt
    out["drop_target"] = {"limit_pt": TARGET_MAX_DROP_PT, "met": default.drop_pt <= TARGET_MAX_DROP_PT}
    if best is not None:
        out["drop_minus_best_peer_pt"] = default.drop_pt - best.drop_pt
        out["drop_ratio_to_best_peer"] = default.drop_pt / best.drop_pt if best.drop_pt > 0 else None
        out["peer_target"] = {"met": default.drop_pt <= best.drop_pt}
    if ort_minmax is not None:
        out["calib_time_ratio_to_ort_minmax"] = default.calib_s / ort_minmax.calib_s
        out["time_target"] = {"met": default.calib_s <= ort_minmax.calib_s}
    return out


def verdict(target: dict | None) -> str:
    if target is None:
        return "not judged (a method it needs did not run)"
    return "MET" if target["met"] else "NOT MET"


def target_lines(cmp: dict) -> list[str]:
    if "edgekd_drop_pt" not in cmp:
        return [cmp.get("note", "")]
    ratio = cmp.get("drop_ratio_to_best_peer")
    lines = [
        f"{cmp['edgekd_method']} drop {cmp['edgekd_drop_pt']:+.2f} pt ≤ {TARGET_MAX_DROP_PT} pt: "
        f"{verdict(cmp.get('drop_target'))}"
    ]
    if cmp.get("best_peer"):
        lines.append(
            f"{cmp['edgekd_method']} drop vs best peer ({cmp['best_peer']}, {cmp['best_peer_drop_pt']:+.2f} pt): "
            f"{cmp['drop_minus_best_peer_pt']:+.2f} pt, ratio "
            f"{'n/a (peer drop ≤ 0)' if ratio is None else f'{ratio:.2f}'}; no worse than best peer: "
            f"{verdict(cmp.get('peer_target'))}"
        )
    else:
        lines.append(f"no worse than best peer: {verdict(None)}")
    if "calib_time_ratio_to_ort_minmax" in cmp:
        lines.append(
            f"{cmp['edgekd_method']} calibration time / ORT MinMax: {cmp['calib_time_ratio_to_ort_minmax']:.2f}; "
            f"≤ ORT MinMax: {verdict(cmp.get('time_target'))}"
        )
    else:
        lines.append(f"calibration time ≤ ORT MinMax: {verdict(None)}")
    return lines


# ----------------------------------------------------------------------------- environment


def machine_info(threads: int) -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(), "ort_threads_scoring": threads}
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def versions() -> dict:
    out = {"python": platform.python_version(), "edgekd": EDGEKD_VERSION}
    for dist in ("onnxruntime", "onnx", "nncf", "numpy", "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def command_line() -> str:
    """The command as run, with paths relative to the working directory where they are under it."""

    def rel(p: str) -> str:
        rp = os.path.relpath(p)
        return p if rp.startswith("..") else rp

    return shlex.join([rel(sys.executable), rel(sys.argv[0]), *sys.argv[1:]])


# ----------------------------------------------------------------------------- output

COLUMNS = ("method", "calibration s", "total s", "int8 top-1 %", "drop pt", "changed")


def row(r: Result) -> list[str]:
    if r.error:
        return [r.name, "-", "-", "-", "-", r.error]
    return [r.name, f"{r.calib_s:.2f}", f"{r.total_s:.2f}", f"{100 * r.top1:.2f}", f"{r.drop_pt:+.2f}", str(r.changed)]


def text_table(results: list[Result], float_top1: float, samples: int) -> str:
    rows = [list(COLUMNS)] + [row(r) for r in results]
    widths = [max(len(x[i]) for x in rows) for i in range(len(COLUMNS))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [
        f"float top-1: {100 * float_top1:.2f} % on {samples} validation images",
        fmt(rows[0]),
        "  ".join("-" * w for w in widths),
    ] + [fmt(x) for x in rows[1:]]
    return "\n".join(lines)


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row(r)) + " |" for r in results])


NOTES = """\
- **Same graph, same data.** The float model is the card's model exported once by edgekd
  (`edgekd compile --precision fp32`: BatchNorm folded, Conv+ReLU marked); every method quantizes that
  file. All methods calibrate on the same {calib} training images (evenly spaced over the sorted train
  split, preprocessed once into a `[N,3,32,32]` float32 array) and are scored on the same {evals}
  held-out images (every 10th image of each class: the teacher's validation split).
- **Scoring:** ONNX Runtime CPU execution provider, one image per run (the graph's batch is 1),
  {threads} intra-op threads. One image is {step:.2f} pt. **changed:** scored images whose int8 top-1
  class differs from the float model's (the drop is the net of these changes).
- **calibration s:** edgekd: the `calibrate` + `quantize` pass seconds from the artifact manifest
  (the quantize pass also compares the QDQ simulation with float on 32 samples). ONNX Runtime: the
  `quantize_static` call (calibration, quantization and writing the model). NNCF: the `nncf.quantize`
  call (statistics, fast bias correction, quantization). Imports are not counted.
- **total s:** edgekd: the whole `edgekd.api.compile` call (fuse, support check, calibrate, quantize,
  emit, verify on 16 samples, manifest and report). ONNX Runtime: the same as calibration s. NNCF:
  `nncf.quantize` plus saving the model.
- **edgekd:** `onnx-cpu` target: activations asymmetric int8, weights int8 per-channel symmetric;
  observers see batches of 32 (`calib_batch`; edgekd makes the batch dimension dynamic for
  calibration). `{default}` is the default; `ema` uses averaging constant 0.01, `percentile` 99.99.
  `sensitivity` is skipped.
- **ONNX Runtime:** `quantize_static(quant_format=QDQ, per_channel=True, activation_type=QInt8,
  weight_type=QInt8)` (S8S8), defaults otherwise (Percentile 99.999, Entropy 128 bins).
  `quant_pre_process` is **not** run: it would rewrite the graph (shape inference, ONNX optimizer)
  and the methods would no longer quantize the same file; edgekd has already folded BatchNorm.
  Its calibrator runs one sample per inference because the graph's batch is fixed at 1. With the
  default 128 histogram bins and 128 quantized bins, the Entropy search has a single candidate
  threshold, the full observed range, so Entropy gives MinMax's ranges (onnxruntime 1.32: identical
  scales); `extra_options={{"CalibNumBins": 2048}}` would make it search, and is not used here.
- **NNCF:** `nncf.quantize(model, nncf.Dataset(samples), subset_size={calib})` with its defaults
  (performance preset: symmetric activations, uint8 after ReLU; fast bias correction on).
- **Targets (from the issue), judged on edgekd's default `{default}` observer:** int8 drop ≤ {limit} pt;
  drop no worse than the best peer; calibration time no more than ONNX Runtime MinMax's. Timings are
  single runs on the machine above, which may be shared (see its load average)."""


def markdown_page(report: dict, results: list[Result]) -> str:
    m, v, model, data = report["machine"], report["versions"], report["model"], report["data"]
    ver = ", ".join(f"{k} {val}" for k, val in v.items())
    lines = [
        "# Quantization benchmark: edgekd vs ONNX Runtime vs NNCF",
        "",
        "Generated by `bench/quant_benchmark.py` (do not edit by hand) with:",
        "",
        "```",
        report["command"],
        "```",
        "",
        "`make bench-quant` regenerates it with the model card's weights."
        + (
            ""
            if report["weights_are_the_cards"]
            else " **These results are NOT from the card's weights** (`--weights` was given): regenerate this page "
            "with `make bench-quant` once the card's weights exist."
        ),
        "",
        f"- date: {report['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['os']}"
        + (f"; load average at start {m['load_average_at_start']}" if "load_average_at_start" in m else ""),
        f"- versions: {ver}",
        f"- model: `{model['card']}`, weights `{model['weights']}` (sha256 `{model['weights_sha256']}`)",
        f"- float ONNX sha256 `{model['float_onnx_sha256']}`",
        f"- data: `{data['root']}`: {data['train_images']} train / {data['validation_images']} validation images; "
        f"{data['calib_samples']} calibration images (sha256 of the array `{data['calib_sha256'][:16]}…`), "
        f"{data['eval_samples']} scored",
        "",
        f"**Float top-1: {100 * report['float_top1']:.2f} %**",
        "",
        markdown_table(results),
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in target_lines(report["comparison"])],
        "",
        "## How it is measured",
        "",
        NOTES.format(
            calib=data["calib_samples"],
            evals=data["eval_samples"],
            threads=m["ort_threads_scoring"],
            step=100.0 / data["eval_samples"],
            limit=TARGET_MAX_DROP_PT,
            default=DEFAULT_METHOD,
        ),
    ]
    skipped = [r for r in results if r.error]
    if skipped:
        lines += ["", "## Methods that did not run", ""] + [f"- {r.name}: {r.error}" for r in skipped]
    return "\n".join(lines) + "\n"


def write_file(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    progress(f"wrote {path}")


# ----------------------------------------------------------------------------- main


def benchmark(args: argparse.Namespace, workdir: Path) -> tuple[dict, list[Result]]:
    methods = select_methods(args.methods)
    inputs = prepare_inputs(args, workdir)
    progress("scoring the float model ...")
    scorer = float_scorer(inputs, args.threads)
    progress(f"float top-1 {100 * scorer.float_top1:.2f} %")
    results = run_all(methods, inputs, workdir, scorer)
    report = {
        "command": command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(args.threads),
        "versions": versions(),
        "model": {
            "card": args.model,
            "weights": str(inputs.weights),
            "weights_sha256": sha256_file(inputs.weights),
            "float_onnx_sha256": sha256_file(inputs.float_onnx),
        },
        "data": inputs.data,
        "float_top1": scorer.float_top1,
        "weights_are_the_cards": inputs.card.weights is not None
        and inputs.weights.resolve() == inputs.card.weights.resolve(),
        "methods": [dataclasses.asdict(r) for r in results],
        "comparison": compare(results),
    }
    return report, results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_methods:
        print("\n".join(m.name for m in all_methods()))
        return 0
    check_data(args.data)  # before anything slow
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        report, results = benchmark(args, Path(args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="quant-bench-") as tmp:
            report, results = benchmark(args, Path(tmp))
    print()
    print(text_table(results, report["float_top1"], report["data"]["eval_samples"]))
    print()
    print("\n".join(target_lines(report["comparison"])))
    if args.json:
        write_file(args.json, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        write_file(args.markdown, markdown_page(report, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

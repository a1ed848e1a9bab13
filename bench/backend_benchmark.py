"""Backend benchmark: edgekd against the path users take today, on the same float ONNX and the same images.

  TFLite full int8   edgekd (`--target rpi4`)          vs  onnx2tf + TF converter with its own calibration (-oiqt)
  OpenVINO int8      edgekd (`--target openvino-cpu`)  vs  NNCF `nncf.quantize` on the converted model
  ONNX Runtime int8  edgekd (`--target onnx-cpu`)      vs  the float ONNX in ONNX Runtime

For each model (the CIFAR-10 student, and MobileNetV2-1.0 at 224×224 with random weights): compile time,
top-1 on the held-out split (CIFAR-10; the random-weight MobileNetV2 has near-tied logits, so there the SQNR
of its logits against the float model), and latency at batch 1 in LiteRT (XNNPACK), OpenVINO and ONNX
Runtime, int8 and fp32, at --threads threads; ratios against the peer and achieved GMAC/s against the CPU's
peak. Every artifact is timed in turn within each of --repeats repeats (interleaved), so a load spike on a
shared machine hits all of them; a ratio is the median of its per-repeat ratios, quoted with their range.
With --before, edgekd's previous placements are measured in the same run (OpenVINO: asymmetric uint8 Q/DQ
on every output; ONNX Runtime: int8 activations), so before/after ratios share the machine's state.

onnx2tf pins its own TensorFlow, so it lives in its own virtual environment (--onnx2tf, default
.venv-onnx2tf/bin/onnx2tf; `make bench-backends` creates it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_benchmark import (
    card_input_overrides,
    export_float,
    fail,
    graph_input_name,
    load_folder,  # noqa: E402
    model_labels,
    preprocess_images,
    progress,
    spread_indices,
)

from edgekd import api  # noqa: E402
from edgekd.bench.runner import RUNTIMES, cpu_model, summarize  # noqa: E402
from edgekd.frontend import model_input  # noqa: E402
from edgekd.model_config import read_model_card  # noqa: E402

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="labelled CIFAR-10 folder (calibration, and scoring the student)")
    ap.add_argument("--cifar-card", default="examples/cifar10/model.toml", help="card giving the CIFAR preprocessing")
    ap.add_argument("--cifar-student", default="resnet8:0.625", help="zoo name of the CIFAR student")
    ap.add_argument(
        "--cifar-weights",
        default=".cache/student-bench/kd/student.pt",
        help="its state_dict (bench/student_benchmark.py writes it)",
    )
    ap.add_argument("--models", default="cifar,mobilenetv2", help="cifar, mobilenetv2 or both")
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=5000, help="CIFAR holdout images scored")
    ap.add_argument("--agree-samples", type=int, default=200, help="images for MobileNetV2's SQNR against float")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100, help="timed runs per artifact and repeat (after 20 warm-up runs)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (at least 3)")
    ap.add_argument(
        "--before",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure edgekd's previous placements (OpenVINO outputs, ONNX Runtime int8 activations)",
    )
    ap.add_argument("--onnx2tf", default=".venv-onnx2tf/bin/onnx2tf", help="'none': leave the onnx2tf rows out")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: write --markdown from the --json of an earlier run on this machine (its peak "
        "recomputed from this CPU)",
    )
    ap.add_argument("--workdir", default=".cache/backend-bench")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- models and inputs


def write_card(workdir: Path, name: str, source: str, weights: str | None, shape, mean, std, labels=None) -> Path:
    lines = ["[model]", f'source = "{source}"'] + ([f'weights = "{Path(weights).resolve()}"'] if weights else [])
    lines += [
        "",
        "[input]",
        'name = "input"',
        f"shape = {list(shape)}",
        f"mean = {mean}",
        f"std = {std}",
        "scale = 0.00392156862745098",
        'channel_order = "RGB"',
        'layout = "NCHW"',
    ]
    if labels:
        lines += ["", "[labels]", "names = [" + ", ".join(f'"{n}"' for n in labels) + "]"]
    path = workdir / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def model_cards(args, workdir: Path) -> dict[str, Path]:
    cifar = read_model_card(args.cifar_card)
    cards = {}
    if "cifar" in args.models:
        if not Path(args.cifar_weights).exists():
            fail(
                f"--cifar-weights {args.cifar_weights} does not exist; run bench/student_benchmark.py first "
                "or pass a state_dict of --cifar-student"
            )
        cards["cifar"] = write_card(
            workdir,
            "cifar",
            args.cifar_student,
            args.cifar_weights,
            cifar.input["shape"],
            cifar.input["mean"],
            cifar.input["std"],
            cifar.labels,
        )
    if "mobilenetv2" in args.models:
        cards["mobilenetv2"] = write_card(workdir, "mobilenetv2", "mobilenetv2", None, [1, 3, 224, 224], **IMAGENET)
    return cards


# ----------------------------------------------------------------------------- compilers


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def edgekd_compile(
    float_onnx: Path, card: Path, target: str, calib_npy: Path, out: Path, precision: str = "int8"
) -> Path:
    config = api.make_config(
        str(float_onnx),
        target,
        out,
        precision=precision,
        calib=calib_npy,
        force=True,
        skip=("sensitivity",),
        **card_input_overrides(read_model_card(card)),
    )
    result = api.compile(config)
    return result.output / result.manifest["artifact"]["model_file"]


# edgekd's placements before per-runtime placement (commit 3521a8c) and zero-point-free OpenVINO activations:
# a spec edit reproduces each.
BEFORE = {
    "openvino-cpu": [
        ('activations = "symmetric-by-sign"', 'activations = "asymmetric-uint8"'),
        ('placement = "quantizable-inputs"', 'placement = "outputs"'),
    ],
    "onnx-cpu": [
        ('activations = "asymmetric-uint8"', 'activations = "asymmetric-int8"'),
        ('placement = "qlinear"', 'placement = "outputs"'),
    ],
}


def before_spec(target: str, workdir: Path) -> str:
    from edgekd.specs import builtin_targets

    text = builtin_targets()[target].read_text()
    for old, new in BEFORE[target]:
        if old not in text:
            fail(f"the {target} spec no longer holds {old!r}; update BEFORE in bench/backend_benchmark.py")
        text = text.replace(old, new)
    path = workdir / f"{target}-before.toml"
    path.write_text(text)
    return str(path)


def onnx2tf_convert(
    exe: str, float_onnx: Path, calib_nhwc: Path, mean, std, out: Path, sample_images: np.ndarray
) -> dict[str, Path]:
    """onnx2tf -oiqt: float32 and full-integer TFLite, calibrated by TF's converter on our images.

    onnx2tf checks its conversion on 20 sample images that it downloads unless the file is in its working
    directory; offline, we put 20 of our own there (128×128, [0, 1], the shape it expects)."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "calibration_image_sample_data_20x128x128x3_float32.npy", sample_images.astype(np.float32))
    name = graph_input_name(float_onnx)
    cmd = [
        str(Path(exe).absolute()),
        "-i",
        str(float_onnx.resolve()),
        "-o",
        str(out.resolve()),
        "-oiqt",
        "-cind",
        name,
        str(calib_nhwc.resolve()),
        json.dumps([[[[m for m in mean]]]]),
        json.dumps([[[[s for s in std]]]]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
    if proc.returncode:
        fail(f"onnx2tf failed ({proc.returncode}): {proc.stderr[-2000:] or proc.stdout[-2000:]}")
    stem = float_onnx.stem
    return {"fp32": out / f"{stem}_float32.tflite", "int8": out / f"{stem}_full_integer_quant.tflite"}


def nncf_quantize(float_onnx: Path, calib: np.ndarray, out: Path) -> Path:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(float_onnx))
    quantized = nncf.quantize(model, nncf.Dataset([c[None] for c in calib]), subset_size=len(calib))
    path = out / "nncf_int8.xml"
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def openvino_fp32(float_onnx: Path, out: Path) -> Path:
    import openvino as ov

    path = out / "fp32.xml"
    ov.save_model(ov.convert_model(str(float_onnx)), str(path), compress_to_fp16=False)
    return path


# ----------------------------------------------------------------------------- measuring


class Runner:
    """One artifact in its runtime: float NCHW images in, float logits out, whatever its I/O layout and dtype."""

    def __init__(self, path: Path, threads: int):
        self.runtime = {".tflite": "litert", ".xml": "openvino", ".onnx": "onnxruntime"}[path.suffix]
        self.model = RUNTIMES[self.runtime](str(path), threads)
        self.in_q = self.out_q = None
        if self.runtime == "litert":
            interp = self.model.interp
            self.in_q = interp.get_input_details()[0]["quantization"]
            self.out_q = interp.get_output_details()[0]["quantization"]

    def __call__(self, x_nchw: np.ndarray) -> np.ndarray:
        x = x_nchw
        if list(self.model.input_shape) != list(x.shape):
            x = x.transpose(0, 2, 3, 1)  # NHWC models (TFLite)
        if self.model.input_dtype in ("int8", "uint8"):
            scale, zp = self.in_q
            info = np.iinfo(self.model.input_dtype)
            x = np.clip(np.round(x / scale) + zp, info.min, info.max)
        y = self.model(np.ascontiguousarray(x.astype(self.model.input_dtype)))[0]
        if self.out_q and self.out_q[0]:
            y = (y.astype(np.float32) - self.out_q[1]) * self.out_q[0]
        return y.reshape(len(x_nchw), -1)

    def logits(self, xs: np.ndarray) -> np.ndarray:
        return np.concatenate([self(x[None]) for x in xs])

    def latency(self, x: np.ndarray, runs: int) -> dict:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self(x)
            times.append((time.perf_counter() - t0) * 1000)
        return summarize(times, 1)


def interleaved_latency(runners: dict[str, Runner], x: np.ndarray, repeats: int, runs: int) -> dict[str, dict]:
    """Per artifact: the p50 of each repeat (every artifact timed in turn within a repeat), their median
    and range, and the p90 of the pooled runs."""
    for r in runners.values():
        for _ in range(20):
            r(x)
    per: dict[str, list[dict]] = {name: [] for name in runners}
    for k in range(repeats):
        progress(f"  latency repeat {k + 1}/{repeats}")
        for name, r in runners.items():
            per[name].append(r.latency(x, runs))
    out = {}
    for name, reps in per.items():
        p50s = [s["p50_ms"] for s in reps]
        out[name] = {
            "p50_ms": float(np.median(p50s)),
            "p50_per_repeat": p50s,
            "p50_range": [min(p50s), max(p50s)],
            "p90_ms": float(np.median([s["p90_ms"] for s in reps])),
            "runs": runs,
            "repeats": repeats,
        }
    return out


def cpu_peak_gmacs(threads: int) -> dict:
    """Peak MAC/s from the ISA: fp32 = 2 FMA ports × SIMD lanes; int8 = 2 ports × (lanes × 4) with VNNI
    (vpdpbusd does 4 MACs per 32-bit lane), × 2 without (vpmaddubsw+vpmaddwd); with AMX, its tile multiply:
    1024 int8 MACs per cycle (a 16×64 by 64×16 TDPBUSD every 16 cycles), which oneDNN uses for dense and 1×1
    convolutions, not for depthwise ones. Frequency: /proc/cpuinfo."""
    flags, mhz = set(), 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    int8_per_lane = 4 if ("avx512_vnni" in flags or "avx_vnni" in flags) else 2
    amx = "amx_int8" in flags
    ghz = mhz / 1000
    return {
        "ghz": ghz,
        "simd_fp32_lanes": lanes,
        "vnni": int8_per_lane == 4,
        "amx": amx,
        "fp32": threads * ghz * 2 * lanes,
        "int8_vector": threads * ghz * 2 * lanes * int8_per_lane,
        "int8": threads * ghz * (1024 if amx else 2 * lanes * int8_per_lane),
    }


# ----------------------------------------------------------------------------- one model


def bench_model(key: str, card: Path, args, train, val, workdir: Path) -> dict:  # long: one benchmark run, in order
    import torch

    from edgekd.models.load import load_model
    from edgekd.models.profile import profile

    c = read_model_card(card)
    out = workdir / f"{key}-work"  # not just key: a card source "mobilenetv2" would resolve to the folder
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    progress(f"[{key}] exporting the float ONNX")
    float_onnx = export_float(str(card), c.weights, out / "float")
    float_copy = out / f"{key}.onnx"
    float_copy.write_bytes(float_onnx.read_bytes())
    module = load_model(c.source, c.weights).torch_module
    macs = profile(module, tuple(c.input["shape"])).macs

    from edgekd.data.preprocess import read_rgb

    pre = model_input(str(card)).input.preprocess
    calib = preprocess_images(train, spread_indices(len(train), args.calib_samples), pre)
    calib_npy = out / "calib.npy"
    np.save(calib_npy, calib)
    raw_nhwc = out / "calib_nhwc01.npy"  # onnx2tf normalises itself: [0,1] NHWC plus mean/std
    np.save(raw_nhwc, (calib.transpose(0, 2, 3, 1) * np.asarray(pre.std) + np.asarray(pre.mean)).astype(np.float32))

    artifacts, compile_s = {}, {}

    def add(name: str, fn, compile_key: str | None = None):
        progress(f"[{key}] {name}")
        artifacts[name], compile_s[compile_key or name] = timed(fn)

    add("edgekd tflite int8", lambda: edgekd_compile(float_copy, card, "rpi4", calib_npy, out / "edgekd-rpi4"))
    add(
        "edgekd tflite fp32",
        lambda: edgekd_compile(float_copy, card, "rpi4", calib_npy, out / "edgekd-rpi4-fp32", "fp32"),
    )
    add(
        "edgekd openvino int8",
        lambda: edgekd_compile(float_copy, card, "openvino-cpu", calib_npy, out / "edgekd-openvino"),
    )
    add("edgekd onnxruntime int8", lambda: edgekd_compile(float_copy, card, "onnx-cpu", calib_npy, out / "edgekd-ort"))
    if args.before:
        add(
            "edgekd openvino int8, before",
            lambda: edgekd_compile(
                float_copy, card, before_spec("openvino-cpu", out), calib_npy, out / "edgekd-openvino-before"
            ),
        )
        add(
            "edgekd onnxruntime int8, before",
            lambda: edgekd_compile(
                float_copy, card, before_spec("onnx-cpu", out), calib_npy, out / "edgekd-ort-before"
            ),
        )
    if args.onnx2tf != "none":
        progress(f"[{key}] onnx2tf -oiqt (this is the slow one)")
        samples = np.stack([read_rgb(train.files[i], (128, 128)) for i in spread_indices(len(train), 20)]) / 255.0
        o2t, compile_s["onnx2tf"] = timed(
            lambda: onnx2tf_convert(args.onnx2tf, float_copy, raw_nhwc, pre.mean, pre.std, out / "onnx2tf", samples)
        )
        artifacts["onnx2tf tflite int8"], artifacts["onnx2tf tflite fp32"] = o2t["int8"], o2t["fp32"]
        compile_s["onnx2tf tflite int8"] = compile_s["onnx2tf tflite fp32"] = compile_s["onnx2tf"]
    add("nncf openvino int8", lambda: nncf_quantize(float_copy, calib, out))
    add("openvino fp32", lambda: openvino_fp32(float_copy, out))
    artifacts["onnxruntime fp32"], compile_s["onnxruntime fp32"] = float_copy, 0.0

    if key == "cifar":
        idx = spread_indices(len(val), args.eval_samples)
        xs, labels = preprocess_images(val, idx, pre), model_labels(val, idx, c.labels)
    else:
        labels = None
        xs = preprocess_images(val, spread_indices(len(val), args.agree_samples), pre)
    runners = {name: Runner(path, args.threads) for name, path in artifacts.items()}
    float_logits = runners["openvino fp32"].logits(xs)
    float_pred = float_logits.argmax(1)
    peak = cpu_peak_gmacs(args.threads)
    rows = {}
    for name, path in artifacts.items():
        progress(f"[{key}] scoring {name}")
        logits = runners[name].logits(xs)
        pred = logits.argmax(1)
        rows[name] = {
            "path": str(path),
            "bytes": path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0),
            "compile_s": compile_s[name],
            "top1": float((pred == labels).mean() * 100) if labels is not None else None,
            "agreement": float((pred == float_pred).mean() * 100),
            # random weights give near-tied logits, so top-1 agreement says little there: SQNR does
            "sqnr_db": float(10 * np.log10((float_logits**2).sum() / max(((logits - float_logits) ** 2).sum(), 1e-30))),
        }
    progress(f"[{key}] latency: {len(runners)} artifacts, {args.repeats} interleaved repeats of {args.runs} runs")
    for name, lat in interleaved_latency(runners, xs[:1], args.repeats, args.runs).items():
        precision = "int8" if "int8" in name else "fp32"
        rows[name].update(
            latency=lat, gmacs=macs / lat["p50_ms"] / 1e6, peak_fraction=macs / lat["p50_ms"] / 1e6 / peak[precision]
        )
    return {
        "model": c.source,
        "macs": macs,
        "float_top1": float((float_pred == labels).mean() * 100) if labels is not None else None,
        "artifacts": rows,
        "peak": peak,
    }


# ----------------------------------------------------------------------------- report


def model_table(r: dict) -> str:
    acc_head = "holdout top-1" if r["float_top1"] is not None else "SQNR vs float"
    lines = [
        f"| artifact | compile | size | {acc_head} | p50 latency (range over repeats) | p90 | GMAC/s | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["artifacts"].items():
        acc = (
            f"{row['top1']:.2f} %"
            if row["top1"] is not None
            else (f"{row['sqnr_db']:.1f} dB" if row["sqnr_db"] < 200 else "exact")
        )
        lat = row["latency"]
        lo, hi = lat["p50_range"]
        lines.append(
            f"| {name} | {row['compile_s']:.1f} s | {row['bytes'] / 1024:.0f} KiB | {acc} | "
            f"{lat['p50_ms']:.3f} ms ({lo:.3f}–{hi:.3f}) | {lat['p90_ms']:.3f} ms | {row['gmacs']:.1f} | "
            f"{row['peak_fraction'] * 100:.1f} % |"
        )
    return "\n".join(lines)


def latency_ratio(r: dict, a: str, b: str):
    """a's latency over b's, per repeat (interleaved), or None when one of them was not built."""
    from edgekd.runtime.timing import ratio

    arts = r["artifacts"]
    if a not in arts or b not in arts:
        return None
    return ratio(arts[a]["latency"]["p50_per_repeat"], arts[b]["latency"]["p50_per_repeat"])


def ratio_line(r: dict, label: str, a: str, b: str, speedup: bool = False, target: tuple[str, float] | None = None):
    """``speedup``: b's latency over a's (how much faster a is). ``target``: ("<=" or ">=", value), judged on the
    whole range so that a claim holds in every repeat."""
    q = latency_ratio(r, b, a) if speedup else latency_ratio(r, a, b)
    if q is None:
        return None
    text = f"- {label}: **{q.median:.2f}×** [{q.low:.2f}, {q.high:.2f}] over {q.repeats} repeats"
    if target:
        op, value = target
        met = q.high <= value if op == "<=" else q.low >= value
        median_met = q.median <= value if op == "<=" else q.median >= value
        verdict = (
            "met"
            if met
            else ("NOT met (the median meets it, not every repeat: within noise)" if median_met else "NOT met")
        )
        text += f" (target {op} {value}: {verdict})"
    return text


def ratios(r: dict) -> list[str]:
    a = r["artifacts"]
    lines = [
        ratio_line(
            r, "OpenVINO int8 latency, edgekd / NNCF", "edgekd openvino int8", "nncf openvino int8", target=("<=", 0.95)
        ),
        ratio_line(
            r,
            "OpenVINO int8 latency before this change (asymmetric uint8 Q/DQ on every output) / NNCF",
            "edgekd openvino int8, before",
            "nncf openvino int8",
        ),
        ratio_line(
            r,
            "int8 speed-up over fp32, OpenVINO (edgekd int8 vs fp32 IR)",
            "edgekd openvino int8",
            "openvino fp32",
            speedup=True,
            target=(">=", 1.3),
        ),
        ratio_line(r, "int8 speed-up over fp32, OpenVINO, NNCF", "nncf openvino int8", "openvino fp32", speedup=True),
        ratio_line(
            r,
            "int8 speed-up over fp32, LiteRT (edgekd int8 vs edgekd fp32)",
            "edgekd tflite int8",
            "edgekd tflite fp32",
            speedup=True,
            target=(">=", 1.3),
        ),
        ratio_line(
            r, "int8 speed-up over fp32, LiteRT, onnx2tf", "onnx2tf tflite int8", "onnx2tf tflite fp32", speedup=True
        ),
        ratio_line(
            r, "TFLite int8 latency, edgekd / onnx2tf", "edgekd tflite int8", "onnx2tf tflite int8", target=("<=", 1.0)
        ),
        ratio_line(
            r,
            "int8 speed-up over fp32, ONNX Runtime (edgekd int8 vs the float ONNX)",
            "edgekd onnxruntime int8",
            "onnxruntime fp32",
            speedup=True,
        ),
        ratio_line(
            r,
            "int8 speed-up over fp32, ONNX Runtime, before this change (int8 activations)",
            "edgekd onnxruntime int8, before",
            "onnxruntime fp32",
            speedup=True,
        ),
    ]
    out = [line for line in lines if line]
    if r["float_top1"] is not None:
        for n in [n for n in a if "int8" in n]:
            drop = r["float_top1"] - a[n]["top1"]
            out.append(f"- top-1 drop vs float ({r['float_top1']:.2f} %), {n}: {drop:+.2f} pt")
    return out


def int8_peak(peak: dict) -> str:
    vector = f"{peak['int8_vector']:.0f} GMAC/s int8 in vector units{' with VNNI' if peak['vnni'] else ''}"
    if not peak.get("amx"):
        return vector
    return f'{peak["int8"]:.0f} GMAC/s int8 with AMX tiles, {vector}: the int8 "of peak" is over AMX\'s'


def write_markdown(args, command: str, peak: dict, load: dict, text: str) -> None:
    import openvino

    versions = []
    if args.onnx2tf != "none":
        versions = subprocess.run(
            [
                str(Path(args.onnx2tf).parent / "python"),
                "-c",
                "import onnx2tf, tensorflow as tf; print(onnx2tf.__version__, tf.__version__)",
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
    tf = versions[1] if len(versions) > 1 else "?"
    onnx2tf = (
        f"onnx2tf {versions[0] if versions else '?'} (with TensorFlow {tf}, its own venv)"
        if args.onnx2tf != "none"
        else "onnx2tf not run (--onnx2tf none)"
    )
    import onnxruntime

    la = lambda t: ", ".join(f"{v:.1f}" for v in t)  # noqa: E731
    title = "Backend benchmark: edgekd vs onnx2tf (TFLite), NNCF (OpenVINO) and float (ONNX Runtime)"
    Path(args.markdown).write_text(f"""# {title}

Produced by

```
{command}
```

on **{cpu_model() or platform.processor()}** ({os.cpu_count()} cores; peak at {args.threads} threads and
{peak["ghz"]:.2f} GHz: {peak["fp32"]:.0f} GMAC/s fp32, {int8_peak(peak)}),
batch 1, {args.threads} threads. Latency: every artifact timed in turn within each of {args.repeats} repeats
(interleaved) of {args.runs} runs after 20 warm-up runs; the table gives the median of the per-repeat p50s and
their range, a ratio is the median of the per-repeat ratios with their range [min, max]. A target counts as
met only when the whole range meets it. Load average (1, 5, 15 min) at the start: {la(load["start"])}; at
the end: {la(load["end"])} — the machine is shared; a wide range means the load moved during the run.
LiteRT with XNNPACK (its default); OpenVINO CPU plugin with f32 inference precision pinned; ONNX Runtime
{onnxruntime.__version__} CPU provider, all graph optimizations. Every path starts from the same float ONNX
(edgekd's fp32 compile, BatchNorm folded) and the same {args.calib_samples} calibration images.
{onnx2tf}, OpenVINO {openvino.get_version()}, NNCF default `nncf.quantize` (subset = all calibration images).
"before" rows: edgekd's placements before per-runtime placement (OpenVINO: asymmetric uint8 Q/DQ on every op's output;
ONNX Runtime: int8 activations), compiled from spec edits in the same run.
Compile time is the whole user-facing step: edgekd's `compile` including its own fidelity check in the
runtime; onnx2tf's float + int8 conversion; NNCF's conversion + quantization. "of peak" is GMAC/s over the
ISA peak of the precision (an upper bound no runtime reaches at batch 1 on small layers).
The MobileNetV2 has random weights (no pretrained weights can be had here): its activations vanish
through the random layers, so every int8 path, the peers' included, shows about 0 dB against float
there; it measures compile time and speed, the CIFAR-10 model measures accuracy.

{text}
""")


def with_peak(result: dict, peak: dict) -> dict:
    """``result`` with its "of peak" figures over ``peak``."""
    for name, row in result["artifacts"].items():
        row["peak_fraction"] = row["gmacs"] / peak["int8" if "int8" in name else "fp32"]
    return {**result, "peak": peak}


def report(args, command: str, results: dict, load: dict) -> None:
    titles = {
        "cifar": f"CIFAR-10 model `{args.cifar_student}` (32×32)",
        "mobilenetv2": "MobileNetV2-1.0, 224×224, random weights",
    }
    sections = []
    for key, r in results.items():
        sections.append(
            f"## {titles[key]} — {r['macs'] / 1e6:.1f} M MACs\n\n{model_table(r)}\n\n" + "\n".join(ratios(r))
        )
    text = "\n\n".join(sections)
    print(text)
    if args.markdown:
        write_markdown(args, command, next(iter(results.values()))["peak"], load, text)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        if not (args.json and Path(args.json).exists()):
            fail("--report-only needs --json FILE written by an earlier run")
        saved = json.loads(Path(args.json).read_text())
        run_args = parse_args(shlex.split(saved["command"])[2:])  # the options the measurements were taken with
        run_args.markdown = args.markdown
        peak = cpu_peak_gmacs(run_args.threads)
        results = {key: with_peak(r, peak) for key, r in saved["results"].items()}
        report(run_args, saved["command"], results, saved["load_average"])
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.onnx2tf != "none" and not Path(args.onnx2tf).exists():
        fail(f"onnx2tf not found at {args.onnx2tf}; `make bench-backends` installs it in .venv-onnx2tf")
    train, val = load_folder(args.data)
    cards = model_cards(args, workdir)
    if args.repeats < 3:
        fail("--repeats must be at least 3: a ratio from fewer repeats cannot be told from noise")
    load = {"start": os.getloadavg()}
    results = {key: bench_model(key, card, args, train, val, workdir) for key, card in cards.items()}
    load["end"] = os.getloadavg()
    command = "python bench/backend_benchmark.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"command": command, "load_average": load, "results": results}, indent=2, default=str)
        )
    report(args, command, results, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

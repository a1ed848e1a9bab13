#!/usr/bin/env python3
"""edgekd's benchmark runner: the one file shipped to a board.

Needs only the standard library and the runtime under test (numpy comes with every runtime).
Runs on Python 3.8+ (JetPack 5). Prints ``edgekd-progress DONE/TOTAL`` lines on stderr and
writes one JSON result.

    python3 runner.py model.onnx --runtime onnxruntime --threads 2 --warmup 10 --iterations 100 --out r.json

With ``--inputs x.npy --save-outputs y.npz`` it first runs every sample once, untimed, and saves the
raw outputs (``output0``, ``output1``, ...: one array per model output, samples stacked on axis 0),
so a board's results can be compared with the host's.

With ``--detect settings.json`` (a detector) it then times the whole pipeline a camera runs, frame to
detections: preprocess, model, decode/NMS and their total, on ``--frames`` (uint8 RGB frames, .npy/.npz) or
synthetic VGA frames (see ``edgekd/bench/detect_loop.py``, shipped beside this file with the two modules it
calls); ``--save-detections d.npz`` saves each frame's detections first.
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

SCHEMA = 1  # results with an ``end_to_end`` section are still 1: the key is optional, nothing else changed
# What a detector run loads beside this file (a board has no edgekd): the name shipped → edgekd's module.
SHIPPED_MODULES = {
    "edgekd_detect_loop": "edgekd.bench.detect_loop",
    "edgekd_frames": "edgekd.data.frames",
    "edgekd_nms": "edgekd.detect.nms",
}


def read_first(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def rss_mb():
    status = read_first("/proc/self/status", "")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / (1024.0 * 1024.0)


def cpu_model():
    for line in (read_first("/proc/cpuinfo", "") or "").splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def thermal():
    temps = {}
    base = "/sys/class/thermal"
    for zone in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        t = read_first(os.path.join(base, zone, "temp"))
        kind = read_first(os.path.join(base, zone, "type"), zone)
        if t and t.lstrip("-").isdigit():
            temps[kind] = int(t) / 1000.0
    return temps


def machine_state():
    return {
        "governor": read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cur_freq_khz": read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        "temperature_c": thermal(),
    }


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(latencies_ms, batch):
    s = sorted(latencies_ms)
    n = len(s)
    mean = sum(s) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
    return {
        "iterations": n,
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": s[0],
        "max_ms": s[-1],
        "p50_ms": percentile(s, 50),
        "p90_ms": percentile(s, 90),
        "p99_ms": percentile(s, 99),
        "throughput_fps": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }


class OnnxRuntimeModel:
    name = "onnxruntime"

    def __init__(self, path, threads):
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # no device id written into the board user's home
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        inp = self.sess.get_inputs()[0]
        types = {
            "tensor(float)": "float32",
            "tensor(float16)": "float16",
            "tensor(uint8)": "uint8",
            "tensor(int8)": "int8",
        }
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.input_dtype = types.get(inp.type, "float32")

    def __call__(self, x):
        return self.sess.run(None, {self.input_name: x})


class LiteRTModel:
    """TFLite flatbuffers through LiteRT (ai_edge_litert) or the older tflite_runtime wheel."""

    name = "litert"

    def __init__(self, path, threads):
        try:
            import ai_edge_litert as pkg
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tflite_runtime as pkg
            from tflite_runtime.interpreter import Interpreter
        self.version = getattr(pkg, "__version__", "unknown")
        self.interp = Interpreter(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()
        inp = self.interp.get_input_details()[0]
        self.input_index = inp["index"]
        self.input_shape = [int(d) for d in inp["shape"]]
        self.input_dtype = inp["dtype"].__name__
        scale, zero_point = inp["quantization"]
        self.input_quantization = {"scale": scale, "zero_point": zero_point} if scale else None
        self.outputs = [o["index"] for o in self.interp.get_output_details()]

    def __call__(self, x):
        self.interp.set_tensor(self.input_index, x)
        self.interp.invoke()
        return [self.interp.get_tensor(i) for i in self.outputs]


class OpenVINOModel:
    name = "openvino"

    def __init__(self, path, threads):
        import openvino as ov

        core = ov.Core()
        self.version = ov.get_version()
        # f32 pinned: on bf16-capable CPUs the plugin would otherwise run float layers in bf16
        self.compiled = core.compile_model(
            path, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        )
        self.request = self.compiled.create_infer_request()
        inp = self.compiled.inputs[0]
        self.input_shape = [int(d) for d in inp.get_shape()]
        self.input_dtype = {"f32": "float32", "u8": "uint8", "i8": "int8", "f16": "float16"}.get(
            inp.get_element_type().get_type_name(), "float32"
        )

    def __call__(self, x):
        return list(self.request.infer({0: x}).values())


RUNTIMES = {"onnxruntime": OnnxRuntimeModel, "litert": LiteRTModel, "openvino": OpenVINOModel}


def make_input(model, inputs_path, seed=0):
    import numpy as np

    if inputs_path:
        arr = np.load(inputs_path, allow_pickle=False)
        return [
            np.ascontiguousarray(a[None] if a.ndim == len(model.input_shape) - 1 else a).astype(model.input_dtype)
            for a in arr
        ]
    rng = np.random.RandomState(seed)
    if model.input_dtype in ("int8", "uint8"):
        info = np.iinfo(model.input_dtype)
        return [rng.randint(info.min, info.max + 1, size=model.input_shape).astype(model.input_dtype)]
    return [rng.standard_normal(model.input_shape).astype(model.input_dtype)]


def save_outputs(model, samples, path):
    import numpy as np

    results = [model(x) for x in samples]
    arrays = {"output%d" % k: np.stack([np.array(r[k], copy=True) for r in results]) for k in range(len(results[0]))}
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a bare name
        np.savez(f, **arrays)


class Progress:
    """``edgekd-progress DONE/TOTAL`` lines on stderr, counted across every timed loop of the run."""

    def __init__(self, total, every=0):
        self.total, self.done = total, 0
        self.every = every or max(1, total // 10)

    def step(self):
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            sys.stderr.write("edgekd-progress %d/%d\n" % (self.done, self.total))
            sys.stderr.flush()


def time_model(model, samples, args, progress):
    """Latencies in ms of ``args.iterations`` runs after ``args.warmup``; stops early once ``args.time_budget``
    seconds are spent."""
    for i in range(args.warmup):
        model(samples[i % len(samples)])
    latencies = []
    deadline = time.perf_counter() + args.time_budget if args.time_budget else None
    for i in range(args.iterations):
        x = samples[i % len(samples)]
        start = time.perf_counter_ns()
        model(x)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
        progress.step()
        if deadline is not None and time.perf_counter() > deadline:
            break
    return latencies


def load_shipped(name):
    """A module of SHIPPED_MODULES: the copy beside this file (by path: ``python -I`` leaves the script's
    folder off sys.path), else edgekd's own when run from the package."""
    import importlib
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    if not os.path.exists(path):
        return importlib.import_module(SHIPPED_MODULES[name])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class DetectSetupError(Exception):
    """The --detect settings or the --frames file cannot be used."""


def load_end_to_end(model, args):
    """(the shipped detector loop, its pipeline for ``model``, the frames, the settings) for --detect, read
    before anything is timed; DetectSetupError when the settings or the frames cannot be used."""
    loop = load_shipped("edgekd_detect_loop")
    try:
        with open(args.detect) as f:
            spec = json.load(f)
        pipeline = loop.Pipeline(model, spec, load_shipped("edgekd_frames"), load_shipped("edgekd_nms"))
        frames = loop.load_frames(args.frames) if args.frames else loop.synthetic_frames()
    except (ValueError, KeyError, OSError) as e:  # a JSON or frames error is a ValueError
        raise DetectSetupError("%s: %s" % (type(e).__name__, e)) from e
    return loop, pipeline, frames, spec


def end_to_end(setup, args, progress):
    """The ``end_to_end`` section of the result: each stage's latency over frames, frame to detections."""
    loop, pipeline, frames, spec = setup
    if args.save_detections:
        loop.save_detections(pipeline, frames, args.save_detections)
    stages, per_frame = loop.time_pipeline(
        pipeline, frames, args.iterations, args.warmup, args.time_budget, progress.step
    )
    return {
        "frames": loop.describe_frames(frames, args.frames),
        "frames_per_iteration": pipeline.batch,
        "preprocessing": dict(spec["preprocessing"], resize_filter="bilinear (Pillow's, in numpy)"),
        "nms": dict(spec["nms"], where="graph" if spec["outputs"].get("selected") is not None else "numpy"),
        "stages": {name: summarize(values, pipeline.batch) for name, values in stages.items()},
        "detections_per_frame": per_frame,
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(description="edgekd benchmark runner")
    ap.add_argument("model")
    ap.add_argument("--runtime", required=True, choices=sorted(RUNTIMES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds per timed loop; stop early when spent")
    ap.add_argument("--inputs", default=None, help=".npy of input samples, cycled")
    ap.add_argument("--save-outputs", default=None, help=".npz: the outputs for every --inputs sample, run once")
    ap.add_argument("--detect", default=None, help="a detector's settings .json: time it end to end as well")
    ap.add_argument("--frames", default=None, help="with --detect: uint8 RGB frames (.npy, or .npz of any sizes)")
    ap.add_argument("--save-detections", default=None, help="with --detect: .npz of every frame's detections")
    ap.add_argument("--out", default=None)
    ap.add_argument("--progress-every", type=int, default=0)
    args = ap.parse_args(argv)
    if args.save_outputs and not args.inputs:
        ap.error("--save-outputs needs --inputs")
    if (args.frames or args.save_detections) and not args.detect:
        ap.error("--frames and --save-detections need --detect")
    return args


def check_inputs_dtype(model, args):
    """The samples' dtype for --save-outputs: make_input's cast would turn float samples into garbage
    integers. An error line, or None."""
    import numpy as np

    given = np.load(args.inputs, mmap_mode="r").dtype
    if given != model.input_dtype:
        return "edgekd-error inputs-dtype: the samples are %s, the model takes %s\n" % (given, model.input_dtype)
    return None


def main(argv=None):
    args = parse_args(argv)
    before = machine_state()
    rss_start = rss_mb()
    t0 = time.perf_counter()
    try:
        model = RUNTIMES[args.runtime](args.model, args.threads)
    except ImportError as e:
        sys.stderr.write("edgekd-error runtime-missing %s: %s\n" % (args.runtime, e))
        return 4
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    error = check_inputs_dtype(model, args) if args.save_outputs else None
    try:
        detect = load_end_to_end(model, args) if args.detect and not error else None
    except DetectSetupError as e:
        error = "edgekd-error detect: %s\n" % e
    if error:
        sys.stderr.write(error)
        return 2
    samples = make_input(model, args.inputs)
    if args.save_outputs:
        save_outputs(model, samples, args.save_outputs)
    progress = Progress(args.iterations * (2 if args.detect else 1), args.progress_every)
    latencies = time_model(model, samples, args, progress)
    result = {
        "schema": SCHEMA,
        "runtime": {"name": model.name, "version": model.version},
        "settings": {
            "threads": args.threads,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "time_budget_s": args.time_budget,
            "inputs": "samples" if args.inputs else "random",
        },
        "input": {"shape": model.input_shape, "dtype": model.input_dtype},
        "latency": summarize(latencies, model.input_shape[0] if model.input_shape else 1),
        "latencies_ms": latencies,
        "load_s": load_s,
    }
    if detect:
        result["end_to_end"] = end_to_end(detect, args, progress)
    result.update(describe_run(rss_start, rss_loaded, before))
    write_result(result, args.out)
    return 0


def describe_run(rss_start, rss_loaded, before):
    """Memory, the host and its state before and after: the part of the result the model does not decide."""
    return {
        "memory": {
            "rss_start_mb": rss_start,
            "rss_loaded_mb": rss_loaded,
            "rss_end_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
        },
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
        },
        "before": before,
        "after": machine_state(),
    }


def write_result(result, path):
    text = json.dumps(result)
    if path:
        with open(path, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())

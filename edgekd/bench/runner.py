#!/usr/bin/env python3
"""edgekd's benchmark runner: the one file shipped to a board.

Needs only the standard library and the runtime under test (numpy comes with every runtime).
Runs on Python 3.8+ (JetPack 5). Prints ``edgekd-progress DONE/TOTAL`` lines on stderr and
writes one JSON result.

    python3 runner.py model.onnx --runtime onnxruntime --threads 2 --warmup 10 --iterations 100 --out r.json

With ``--inputs x.npy --save-outputs y.npz`` it first runs every sample once, untimed, and saves the
raw outputs (``output0``, ``output1``, ...: one array per model output, samples stacked on axis 0),
so a board's results can be compared with the host's.
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

SCHEMA = 1


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


def time_model(model, samples, args):
    """Latencies in ms of ``args.iterations`` runs after ``args.warmup``, with progress lines on stderr;
    stops early once ``args.time_budget`` seconds are spent."""
    for i in range(args.warmup):
        model(samples[i % len(samples)])
    latencies = []
    total = args.iterations
    deadline = time.perf_counter() + args.time_budget if args.time_budget else None
    every = args.progress_every or max(1, total // 10)
    for i in range(total):
        x = samples[i % len(samples)]
        start = time.perf_counter_ns()
        model(x)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
        if (i + 1) % every == 0 or i + 1 == total:
            sys.stderr.write("edgekd-progress %d/%d\n" % (i + 1, total))
            sys.stderr.flush()
        if deadline is not None and time.perf_counter() > deadline:
            break
    return latencies


def main(argv=None):
    ap = argparse.ArgumentParser(description="edgekd benchmark runner")
    ap.add_argument("model")
    ap.add_argument("--runtime", required=True, choices=sorted(RUNTIMES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds; stop early when spent")
    ap.add_argument("--inputs", default=None, help=".npy of input samples, cycled")
    ap.add_argument("--save-outputs", default=None, help=".npz: the outputs for every --inputs sample, run once")
    ap.add_argument("--out", default=None)
    ap.add_argument("--progress-every", type=int, default=0)
    args = ap.parse_args(argv)
    if args.save_outputs and not args.inputs:
        ap.error("--save-outputs needs --inputs")

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
    if args.save_outputs:
        import numpy as np

        given = np.load(args.inputs, mmap_mode="r").dtype
        if given != model.input_dtype:  # make_input's cast would turn float samples into garbage integers
            sys.stderr.write(
                "edgekd-error inputs-dtype: the samples are %s, the model takes %s\n" % (given, model.input_dtype)
            )
            return 2
    samples = make_input(model, args.inputs)
    if args.save_outputs:
        save_outputs(model, samples, args.save_outputs)
    latencies = time_model(model, samples, args)
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
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""OpenVINO int8: what the CPU plugin executes for edgekd's artifact and for NNCF's, and how fast each runs.

Reads what bench/backend_benchmark.py left in --work for each model (cifar, mobilenetv2): the float ONNX, the
model card, the calibration array, NNCF's `nncf.quantize` IR and the fp32 IR (the last two are built when
absent). Compiles edgekd int8 once per --edgekd NAME=TARGET (a target name or a spec .toml, so two placements
can be set side by side), then for every edgekd artifact against NNCF's:

1. the compiled runtime graphs, node by node in execution order: layer type, runtime precision, kernel
   (primitiveType), input and output element types; and the oneDNN primitives the plugin creates
   (ONEDNN_VERBOSE=all, in a subprocess: the variable is read once per process), i.e. kernel, data types and
   post-op chain with the constants masked. "identical" means the CPU runs the same program, only the
   quantization constants differ;
2. latency at batch 1, --threads threads: --repeats repeats of --runs runs after 20 warm-up runs, the
   artifacts taking turns in blocks of 10 runs in a shuffled order (a load burst on a shared machine
   outlasts a turn, so every artifact meets it); the p50 of each repeat, and ratios per repeat with their
   median [min, max];
3. --profile: per-node cost from the plugin's performance counters, the p20 over the runs of each node,
   summed. Preemption inflates single runs, not the p20, so a structural difference shows here even when
   the wall-clock ratios of a loaded machine spread wide;
4. --variants: edgekd's IR without the graph input's FakeQuantize (the first convolution in f32) and without
   the classifier's (the fully-connected layer in f32 on i8 weights), two placements NNCF does not use;
5. --data: top-1 on the CIFAR-10 holdout.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_benchmark import Runner, edgekd_compile, nncf_quantize, openvino_fp32  # noqa: E402
from quant_benchmark import fail, load_folder, model_labels, preprocess_images, progress, spread_indices  # noqa: E402

from edgekd.frontend import model_input  # noqa: E402
from edgekd.model_config import read_model_card  # noqa: E402
from edgekd.runtime.timing import ratio  # noqa: E402

FLOAT_ONNX = {"cifar": "cifar.onnx", "mobilenetv2": "mobilenetv2.onnx"}
CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=".cache/backend-bench", help="bench/backend_benchmark.py's --workdir")
    ap.add_argument("--out", default=".cache/openvino-placement", help="where the edgekd artifacts go")
    ap.add_argument("--models", default="cifar,mobilenetv2")
    ap.add_argument(
        "--edgekd",
        action="append",
        metavar="NAME=TARGET",
        help="an edgekd artifact to compile (repeatable); default: edgekd=openvino-cpu",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--profile", action="store_true", help="also the per-node cost from performance counters")
    ap.add_argument("--variants", action="store_true", help="also edgekd's IR without input / classifier FQ")
    ap.add_argument("--data", help="labelled CIFAR-10 folder: top-1 of every artifact on its holdout")
    ap.add_argument("--eval-samples", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.repeats < 3:
        fail("--repeats must be at least 3: a ratio from fewer repeats cannot be told from noise")
    args.edgekd = dict(spec.split("=", 1) for spec in (args.edgekd or ["edgekd=openvino-cpu"]))
    return args


# ----------------------------------------------------------------------------- artifacts


def model_files(work: Path, key: str) -> tuple[Path, Path, Path]:
    """The float ONNX, the model card and the calibration array of ``key``."""
    files = work / f"{key}-work" / FLOAT_ONNX[key], work / f"{key}.toml", work / f"{key}-work" / "calib.npy"
    for path in files:
        if not path.exists():
            fail(f"{path} does not exist: run bench/backend_benchmark.py with --workdir {work} first")
    return files


def artifacts(key: str, args) -> dict[str, Path]:
    """edgekd's artifacts, then NNCF's and the fp32 IR (taken from --work, built when absent)."""
    work = Path(args.work)
    float_onnx, card, calib = model_files(work, key)
    out = {}
    for name, target in args.edgekd.items():
        progress(f"[{key}] edgekd compile --target {target}")
        out[name] = edgekd_compile(float_onnx, card, target, calib, Path(args.out) / key / name)
    peers = work / f"{key}-work"
    nncf, fp32 = peers / "nncf_int8.xml", peers / "fp32.xml"
    if not nncf.exists():
        progress(f"[{key}] nncf.quantize")
        nncf = nncf_quantize(float_onnx, np.load(calib), Path(args.out) / key)
    out["nncf"] = nncf
    out["fp32"] = fp32 if fp32.exists() else openvino_fp32(float_onnx, Path(args.out) / key)
    return out


def without_fake_quantize(xml: Path, out: Path, where: str) -> Path:
    """A copy of the IR whose activation FakeQuantize on the graph input (``input``) or in front of the
    classifier MatMul (``classifier``) is bypassed."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    for node in model.get_ordered_ops():
        if node.get_type_name() == "FakeQuantize" and _fq_site(node) == where:
            for reader in node.output(0).get_target_inputs():
                reader.replace_source_output(node.input_value(0))
    model.validate_nodes_and_infer_types()
    path = out / f"no-{where}-fq.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def _fq_site(fq) -> str | None:
    if fq.input_value(0).get_node().get_type_name() == "Parameter":
        return "input"
    for reader in fq.output(0).get_target_inputs():
        node = reader.get_node()
        while node.get_type_name() in ("Reshape", "Squeeze"):
            node = next(iter(node.output(0).get_target_inputs())).get_node()
        if node.get_type_name() == "MatMul":
            return "classifier"
    return None


# ----------------------------------------------------------------------------- what the CPU executes


def runtime_graph(path: Path, threads: int) -> list[tuple[str, ...]]:
    """(layer type, runtime precision, kernel, input types, output types) per executed node, in order."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {**CONFIG, "INFERENCE_NUM_THREADS": threads})

    def rt(node, key):
        info = node.get_rt_info()
        return info[key].astype(str) if key in info else ""

    nodes = [n for n in compiled.get_runtime_model().get_ordered_ops() if rt(n, "layerType") != "Const"]
    nodes.sort(key=lambda n: int(rt(n, "execOrder") or -1))
    return [
        (
            rt(n, "layerType"),
            rt(n, "runtimePrecision"),
            rt(n, "primitiveType"),
            ",".join(p.get_element_type().get_type_name() for p in n.inputs()),
            rt(n, "outputPrecisions"),
        )
        for n in nodes
    ]


# kind, kernel, (prop kind), memory descriptors, attributes, (algorithm), problem
PRIMITIVE = re.compile(r"primitive,create:cache_(?:miss|hit),cpu,(\w+),([^,]*),[^,]*,([^,]*),([^,]*),[^,]*,([^,]*),")
POST_OPS = re.compile(r"attr-post-ops:\S*")
NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def onednn_primitives(path: Path, threads: int) -> list[str]:
    """The compute primitives oneDNN creates for the model (kind, kernel, memory descriptors, attributes),
    the post-ops' constants masked: two lists that compare equal run the same kernels and post-op chains."""
    # The plugin's own cache would hand a layer equal to an earlier one the same executor, unlogged.
    config = {**CONFIG, "INFERENCE_NUM_THREADS": threads, "CPU_RUNTIME_CACHE_CAPACITY": 0}
    code = f"import sys, openvino as ov; ov.Core().compile_model(sys.argv[1], 'CPU', {config!r})"
    env = {**os.environ, "ONEDNN_VERBOSE": "all"}
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode:
        fail(f"compiling {path} failed: {proc.stderr[-1000:]}")
    out = []
    for m in PRIMITIVE.finditer(proc.stdout + proc.stderr):
        kind, kernel, memory, attrs, problem = m.groups()
        if kind != "reorder":  # weight reorders happen once, at compile time
            attrs = POST_OPS.sub(lambda p: NUMBER.sub("#", p.group()), attrs)
            out.append(f"{kind} {kernel} {memory} {attrs} {problem}")
    return out


def fake_quantize_count(path: Path) -> int:
    import openvino as ov

    return sum(1 for op in ov.Core().read_model(str(path)).get_ops() if op.get_type_name() == "FakeQuantize")


def differences(a: list, b: list, limit: int = 12) -> list[str]:
    lines = [f"  #{i}: {x} | nncf: {y}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b):
        lines.insert(0, f"  {len(a)} vs {len(b)} entries")
    return lines[:limit] + ([f"  ... {len(lines) - limit} more"] if len(lines) > limit else [])


def compare_executed(key: str, arts: dict[str, Path], threads: int) -> None:
    nncf = arts["nncf"]
    views = {"runtime graph": runtime_graph, "oneDNN primitives": onednn_primitives}
    reference = {label: view(nncf, threads) for label, view in views.items()}
    for name, path in arts.items():
        if name in ("nncf", "fp32"):
            continue
        fqs = f"{fake_quantize_count(path)} FakeQuantize in the IR (nncf: {fake_quantize_count(nncf)})"
        print(f"[{key}] {name}: {fqs}")
        for label, view in views.items():
            mine = view(path, threads)
            diff = differences(mine, reference[label])
            print(f"  {label}: {len(mine)} entries, " + ("identical to NNCF's" if not diff else "differs from NNCF's:"))
            for line in diff:
                print(line)


# ----------------------------------------------------------------------------- speed and accuracy


BLOCK = 10  # timed runs per turn


def interleaved_latency(runners: dict[str, Runner], x: np.ndarray, repeats: int, runs: int) -> dict[str, list[float]]:
    """p50 (ms) of each artifact per repeat. Within a repeat the artifacts take turns in blocks of BLOCK
    runs, in a new random order every round: turns this short spread a load burst over every artifact, and
    a shuffled order gives none of them a fixed predecessor (one run after the fp32 model, whose weights
    have flushed the L2 cache, measured up to 12 % slower). Each turn starts with an untimed run, so what is
    timed is the model running back to back, as deployed. For artifacts of one runtime only: across
    runtimes, turns this short time the previous session's still-spinning threads too (MobileNetV2 in ONNX
    Runtime fp32: 14.3 ms in turns of 10 between OpenVINO and LiteRT artifacts, 3.8 ms in blocks of 100)."""
    for runner in runners.values():
        for _ in range(20):
            runner(x)
    names = list(runners)
    order = np.random.default_rng(0)
    p50s: dict[str, list[float]] = {name: [] for name in names}
    for k in range(repeats):
        times = defaultdict(list)
        for _ in range(runs // BLOCK):
            for name in order.permutation(names):
                runners[name](x)
                for _ in range(BLOCK):
                    t0 = time.perf_counter()
                    runners[name](x)
                    times[name].append((time.perf_counter() - t0) * 1000)
        for name in names:
            p50s[name].append(float(np.median(times[name])))
        progress(f"  repeat {k + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.3f} ms" for n, v in p50s.items()))
    return p50s


def node_costs(arts: dict[str, Path], x: np.ndarray, runs: int, threads: int) -> dict[str, float]:
    """Per artifact: the sum over executed nodes of each node's p20 time (µs) from the performance counters."""
    import openvino as ov

    core = ov.Core()
    config = {**CONFIG, "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
    requests = {name: core.compile_model(str(p), "CPU", config).create_infer_request() for name, p in arts.items()}
    samples = {name: defaultdict(list) for name in arts}
    for i in range(runs + 20):
        for name, request in requests.items():
            request.infer({0: x})
            for p in request.get_profiling_info() if i >= 20 else ():
                if p.status == p.Status.EXECUTED:
                    samples[name][p.node_name].append(p.real_time.total_seconds() * 1e6)
    return {name: float(sum(np.percentile(v, 20) for v in per.values())) for name, per in samples.items()}


def cifar_holdout(args, card: Path) -> tuple[np.ndarray, np.ndarray]:
    _, val = load_folder(args.data)
    idx = spread_indices(len(val), args.eval_samples)
    pre = model_input(str(card)).input.preprocess
    return preprocess_images(val, idx, pre), model_labels(val, idx, read_model_card(card).labels)


def report_latency(p50s: dict[str, list[float]]) -> None:
    for name, series in p50s.items():
        print(
            f"  {name:28} p50 per repeat: "
            + "  ".join(f"{v:.3f}" for v in series)
            + f"  ms (median {np.median(series):.3f})"
        )
    for name in p50s:
        if name not in ("nncf", "fp32"):
            print(f"  {name} / nncf: {ratio(p50s[name], p50s['nncf'])}")
    for name in p50s:
        if name != "fp32":
            print(f"  int8 speed-up over fp32, {name}: {ratio(p50s['fp32'], p50s[name])}")


def bench_model(key: str, args) -> None:
    arts = artifacts(key, args)
    if args.variants:
        first = next(iter(args.edgekd))
        folder = Path(args.out) / key / "variants"
        folder.mkdir(parents=True, exist_ok=True)
        for where in ("input", "classifier"):
            arts[f"{first} without {where} FQ"] = without_fake_quantize(arts[first], folder, where)
    compare_executed(key, arts, args.threads)
    _, card, calib = model_files(Path(args.work), key)
    x = np.load(calib, mmap_mode="r")[:1].astype(np.float32)
    runners = {name: Runner(path, args.threads) for name, path in arts.items()}
    if args.data and key == "cifar":
        xs, labels = cifar_holdout(args, card)
        for name, runner in runners.items():
            top1 = (runner.logits(xs).argmax(1) == labels).mean() * 100
            print(f"[{key}] {name}: holdout top-1 {top1:.2f} % ({len(xs)} images)")
    setup = f"batch 1, {args.threads} threads, {args.repeats} repeats × {args.runs} runs"
    print(f"[{key}] latency, {setup} (load average {os.getloadavg()[0]:.2f})")
    report_latency(interleaved_latency(runners, x, args.repeats, args.runs))
    if args.profile:
        costs = node_costs(arts, x, args.runs, args.threads)
        print(
            f"[{key}] per-node p20 summed (performance counters, {args.runs} runs): "
            + ", ".join(f"{n} {c:.0f} µs" for n, c in costs.items())
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    for key in args.models.split(","):
        if key not in FLOAT_ONNX:
            fail(f"unknown model {key!r}; known: {', '.join(FLOAT_ONNX)}")
        bench_model(key, args)
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

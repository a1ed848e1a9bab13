"""ONNX Runtime sessions on the CPU, quiet and without telemetry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.runtime.batching import RunFn


def ort_session(model: str | Path | bytes, threads: int = 1, optimize: bool = True, optimized_path: Path | None = None):
    """A CPU session for a model file or serialized bytes; ``optimize=False`` runs the graph as written
    (no fusions, no integer kernels replacing Q/DQ arithmetic); ``optimized_path``: where ONNX Runtime
    writes the graph it optimized (what it executes)."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures raise with their message; the logger would print them again
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    src = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


INTEGER_INPUTS = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def onnx_run_fn(sess) -> RunFn:
    """The session as a RunFn (its first input fed, every output returned). A model whose input takes integer
    pixels gets the float pixels of the preprocessing (scale 1) as those integers; a float16 model, float16."""
    first = sess.get_inputs()[0]
    name, dtype = first.name, INTEGER_INPUTS.get(first.type)
    if first.type == "tensor(float16)":  # a half-precision model: its outputs are widened back
        return lambda x: [o.astype(np.float32) for o in sess.run(None, {name: x.astype(np.float16)})]
    if dtype is None:
        return lambda x: sess.run(None, {name: x})
    low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    return lambda x: sess.run(None, {name: np.clip(np.rint(x), low, high).astype(dtype)})


def run_onnx(model: str | Path | bytes, x: np.ndarray, threads: int = 1) -> list[np.ndarray]:
    return onnx_run_fn(ort_session(model, threads))(x)

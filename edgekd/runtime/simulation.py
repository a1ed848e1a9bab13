"""The QDQ simulation: a quantized graph run with Q/DQ as written, in float arithmetic."""

from __future__ import annotations

import onnx_ir as ir

from edgekd.runtime.batching import RunFn
from edgekd.runtime.onnx import onnx_run_fn, ort_session


def simulation_fn(model: ir.Model | bytes, threads: int = 2) -> RunFn:
    """ONNX Runtime with graph optimizations off, so no integer kernel replaces the reference math."""
    data = model if isinstance(model, bytes) else ir.to_proto(model).SerializeToString()
    return onnx_run_fn(ort_session(data, threads, optimize=False))

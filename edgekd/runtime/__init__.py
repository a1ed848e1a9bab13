"""The one place that runs a graph: ONNX Runtime sessions, run functions, batching for fixed-batch
runtimes, the QDQ simulation, and the torch reference. Algorithms, passes and backends use it."""

from edgekd.runtime.batching import RunFn, in_model_batches
from edgekd.runtime.onnx import onnx_run_fn, ort_session, run_onnx
from edgekd.runtime.simulation import simulation_fn
from edgekd.runtime.torch_ref import torch_reference

__all__ = ["RunFn", "in_model_batches", "onnx_run_fn", "ort_session", "run_onnx", "simulation_fn", "torch_reference"]

"""ONNX Runtime: the artifact is the (fused, and when int8, QDQ) ONNX model itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.backends.base import Backend, RunFn, TensorInfo
from edgekd.state import CompileState

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64"}


def ort_session(model: str | Path | bytes, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def ort_run_fn(sess) -> RunFn:
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    runtime = "onnxruntime"
    packages = ("onnxruntime", "onnx")
    modules = ("onnxruntime",)

    def emit(self, state: CompileState, outdir: Path) -> list[str]:
        import onnx_ir as ir

        ir.save(state.onnx_model, outdir / "model.onnx")
        return ["model.onnx"]

    def main_file(self, files: list[str]) -> str:
        return next(f for f in files if f.endswith(".onnx"))

    def session(self, model_path: Path, threads: int = 1) -> RunFn:
        return ort_run_fn(ort_session(model_path, threads))

    def io(self, model_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
        sess = ort_session(model_path)

        def info(args, layout):
            return [TensorInfo(a.name, tuple(a.shape), _ORT_TYPES.get(a.type, a.type), layout) for a in args]

        return info(sess.get_inputs(), "NCHW"), info(sess.get_outputs(), None)


def run_onnx(model: str | Path | bytes, x: np.ndarray, threads: int = 1) -> list[np.ndarray]:
    return ort_run_fn(ort_session(model, threads))(x)

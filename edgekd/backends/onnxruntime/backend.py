"""ONNX Runtime: the artifact is the (fused, and when int8, QDQ) ONNX model itself."""

from __future__ import annotations

from pathlib import Path

from edgekd.backends.base import Backend, EmitInput, EmitResult, ExecutedLayer, TensorInfo
from edgekd.runtime import RunFn, onnx_run_fn, ort_session

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    runtime = "onnxruntime"
    packages = ("onnxruntime", "onnx")
    modules = ("onnxruntime",)

    def emit(self, inp: EmitInput) -> EmitResult:
        import onnx_ir as ir

        ir.save(inp.model, inp.outdir / "model.onnx")
        return EmitResult(["model.onnx"])

    def executed_layers(self, model_path: Path, model) -> list[ExecutedLayer]:
        from edgekd.backends.onnxruntime.coverage import executed_layers

        return executed_layers(model_path, model)

    def main_file(self, files: list[str]) -> str:
        return next(f for f in files if f.endswith(".onnx"))

    def session(self, model_path: Path, threads: int = 1) -> RunFn:
        return onnx_run_fn(ort_session(model_path, threads))

    def tap(self, model_path: Path, sites, model):
        """The sites' int8 tensors as extra outputs: read there, they leave ORT's QDQ fusions as they are."""
        import onnx

        from edgekd.runtime.divergence import with_outputs

        artifact = onnx.load(str(model_path))
        produced = {o for n in artifact.graph.node for o in n.output}
        kept = [s for s in sites if s.quantized in produced]
        sess = ort_session(with_outputs(artifact, [s.quantized for s in kept]).SerializeToString())
        names, feed = [o.name for o in sess.get_outputs()], sess.get_inputs()[0].name

        def run(x):
            values = dict(zip(names, sess.run(None, {feed: x})))
            return {s.tensor: s.dequantize(values[s.quantized]) for s in kept}

        return run

    def io(self, model_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
        sess = ort_session(model_path)

        def info(args, layout):
            return [TensorInfo(a.name, tuple(a.shape), _ORT_TYPES.get(a.type, a.type), layout) for a in args]

        # the input keeps the source graph's layout: the manifest fills in the preprocessing's (--layout)
        return info(sess.get_inputs(), None), info(sess.get_outputs(), None)

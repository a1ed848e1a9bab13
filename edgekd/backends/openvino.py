"""draft"""
from __future__ import annotations
import tempfile
from pathlib import Path
import numpy as np
from edgekd.backends.base import Backend, RunFn, TensorInfo
from edgekd.state import CompileState

class OpenVINOBackend(Backend):
    name = "openvino"
    runtime = "openvino"
    packages = ("openvino",)
    modules = ("openvino",)
    extra = "openvino"

    def emit(self, state, outdir):
        import onnx_ir as ir
        import openvino as ov
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "model.onnx"
            ir.save(state.onnx_model, p)
            m = ov.convert_model(str(p))
        ov.save_model(m, str(outdir / "model.xml"), compress_to_fp16=False)
        return ["model.xml", "model.bin"]

    def main_file(self, files):
        return "model.xml"

    def session(self, model_path, threads=1):
        import openvino as ov
        c = ov.Core().compile_model(str(model_path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        req = c.create_infer_request()
        outs = c.outputs
        def run(x):
            r = req.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            return [np.array(r[o]) for o in outs]
        return run

    def io(self, model_path):
        import openvino as ov
        m = ov.Core().read_model(str(model_path))
        def info(ports, layout):
            return [TensorInfo(p.get_any_name(), tuple(int(d) for d in p.get_shape()), p.get_element_type().to_dtype().name, layout) for p in ports]
        return info(m.inputs, "NCHW"), info(m.outputs, None)

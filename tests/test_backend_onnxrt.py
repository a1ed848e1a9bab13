from __future__ import annotations

import onnx
from onnx import numpy_helper

from backend_template import BackendTemplate


class TestOnnxRuntimeBackend(BackendTemplate):
    target = "onnx-cpu"

    def per_channel_weight_tensors(self, artifact, manifest):
        model = onnx.load(str(artifact / manifest["artifact"]["model_file"]))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return sum(
            1
            for n in model.graph.node
            if n.op_type == "DequantizeLinear"
            and inits.get(n.input[0]) is not None
            and inits[n.input[0]].dtype.name == "int8"
            and inits[n.input[1]].ndim == 1
            and inits[n.input[1]].size > 1
        )

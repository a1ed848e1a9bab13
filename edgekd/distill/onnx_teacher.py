"""An ONNX teacher: runs in ONNX Runtime and only supplies outputs — logits, and the named intermediate
tensors that feature losses ask for. It never trains, so no gradient flows through it."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import shape_inference
from torch import nn

from edgekd.runtime import in_model_batches, ort_session


def _static_dims(value: onnx.ValueInfoProto, any_batch: bool = False) -> tuple[int, ...] | None:
    """The tensor's dims when all are known; with ``any_batch`` a symbolic first (batch) dim reads as 1."""
    dims = value.type.tensor_type.shape.dim
    known = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if any_batch and known:
        known[0] = known[0] or 1
    if not known or None in known:
        return None
    return tuple(known)


class OnnxTeacher(nn.Module):
    def __init__(self, proto: onnx.ModelProto, threads: int = 2):
        super().__init__()
        self.proto, self.threads = proto, threads
        initializers = {i.name for i in proto.graph.initializer}
        graph_input = next(i for i in proto.graph.input if i.name not in initializers)
        self.input_name = graph_input.name
        dims = _static_dims(graph_input)
        self.batch = dims[0] if dims else None  # a fixed batch dimension is fed in slices of that size
        self._sessions: dict[tuple[str, ...], object] = {}
        self.capture_names: list[str] = []
        self.captured: dict[str, torch.Tensor] = {}

    def _session(self, extra: tuple[str, ...]):
        if extra not in self._sessions:
            model = onnx.ModelProto()
            model.CopyFrom(self.proto)
            have = {o.name for o in model.graph.output}
            for name in extra:
                if name not in have:
                    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            names = [o.name for o in model.graph.output]
            self._sessions[extra] = (ort_session(model.SerializeToString(), self.threads), names)
        return self._sessions[extra]

    def intermediate_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name → shape of every 4-D tensor a node produces, in topological order (shape inference)."""
        inferred = shape_inference.infer_shapes(self.proto)
        known = {v.name: _static_dims(v, any_batch=True) for v in (*inferred.graph.value_info, *inferred.graph.output)}
        shapes = {}
        for node in inferred.graph.node:
            for out in node.output:
                dims = known.get(out)
                if dims is not None and len(dims) == 4:
                    shapes[out] = dims
        return shapes

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = tuple(self.capture_names)
        sess, names = self._session(extra)
        run = in_model_batches(lambda a: sess.run(None, {self.input_name: a}), self.batch)
        outs = run(x.detach().cpu().numpy().astype(np.float32))
        self.captured.clear()
        self.captured.update({name: torch.from_numpy(outs[names.index(name)]) for name in extra})
        return torch.from_numpy(outs[0])

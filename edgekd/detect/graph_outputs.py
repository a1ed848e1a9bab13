"""Recognising a detector by its graph outputs: the decoded pair ``boxes [N, A, 4]`` + ``scores [N, A, C]``,
or the single ``[N, 4 + C, A]`` of Ultralytics exports."""

from __future__ import annotations

import onnx_ir as ir

from edgekd.errors import ConfigError


def _dims(v: ir.Value) -> tuple:
    return tuple(v.shape.dims) if v.shape is not None else ()


def decoded_outputs(graph: ir.Graph, boxes: str = "boxes", scores: str = "scores") -> tuple[ir.Value, ir.Value]:
    """The (boxes, scores) outputs: by name, else the one pair of 3-D outputs ``[N, A, 4]`` and ``[N, A, C]``
    (a TorchScript detector exports as output0/output1)."""
    named = {v.name: v for v in graph.outputs}
    if boxes in named and scores in named:
        return named[boxes], named[scores]
    dims = {v.name: _dims(v) for v in graph.outputs}
    three = [v for v in graph.outputs if len(dims[v.name]) == 3]
    if len(three) == 2:
        a, b = three
        if dims[a.name][:2] == dims[b.name][:2]:
            if dims[a.name][2] == 4:
                return a, b
            if dims[b.name][2] == 4:
                return b, a
    raise ConfigError(f"--nms needs the detector's decoded boxes [N, A, 4] and scores [N, A, C]; the graph's outputs are "
                      f"{', '.join(f'{n} {list(d)}' for n, d in dims.items())}",
                      "export the decoded detector (yolo-det with decode=True, or yolo-det-p2)")


def looks_like_detector(graph: ir.Graph) -> bool:
    try:
        decoded_outputs(graph)
        return True
    except ConfigError:
        pass
    if len(graph.outputs) == 1:
        d = _dims(graph.outputs[0])
        return len(d) == 3 and all(isinstance(x, int) for x in d[1:]) and 4 < d[1] < d[2]
    return False

"""Ops that move values without changing them: Squeeze, Unsqueeze, Gather by constant indices,
DepthToSpace, SpaceToDepth. Their int8 TFLite kernels keep the input's grid, as the simulation's
copied Q/DQ parameters do."""

from __future__ import annotations

import numpy as np

from edgekd.backends.tflite.graph import Lowering, Reject, Val
from edgekd.backends.tflite.ops import _reshape_to
from edgekd.ir.proto_index import node_attrs


def _axes(cx: Lowering, node) -> list[int] | None:
    a = node_attrs(node)
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    if len(node.input) > 1 and node.input[1]:
        return [int(v) for v in cx.get(node.input[1]).t.reshape(-1)]
    return None


def _squeeze(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    shape = cx.onnx_shape(x)
    axes = _axes(cx, node)
    drop = {a % len(shape) for a in axes} if axes is not None else {i for i, d in enumerate(shape) if d == 1}
    return [_reshape_to(cx, x, [d for i, d in enumerate(shape) if i not in drop])]


def _unsqueeze(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    shape = cx.onnx_shape(x)
    axes = _axes(cx, node) or []
    rank = len(shape) + len(axes)
    new = sorted(a % rank for a in axes)
    out, it = [], iter(shape)
    for i in range(rank):
        out.append(1 if i in new else next(it))
    return [_reshape_to(cx, x, out)]


def _gather(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    idx = cx.get(node.input[1])
    axis = node_attrs(node).get("axis", 0) % cx.rank(x)
    if not idx.const:
        if cx.quantized:
            raise Reject("Gather by run-time indices is not lowered in int8 (only by constant indices)")
        return [Val(cx.tf.gather(cx.tensor(cx.to_onnx(x)), idx.t, axis=axis))]
    size = cx.onnx_shape(x)[axis]
    indices = np.where(idx.t < 0, idx.t + size, idx.t).astype(np.int32)
    if x.const:
        return [Val(np.take(x.t, indices, axis=axis), q=x.q)]
    if indices.ndim != 1:  # a scalar drops the axis, N-D indices add axes: ONNX order from here on
        x = cx.to_onnx(x)
    t = cx.tf.gather(x.t, indices, axis=cx.axis(x, axis))
    return [Val(t, x.nhwc, x.q)]


def _depth_to_space(cx: Lowering, node) -> list[Val]:
    """TF's DEPTH_TO_SPACE on NHWC is ONNX's DCR mode; CRD first gathers the channels into DCR order."""
    a = node_attrs(node)
    b = int(a["blocksize"])
    x = cx.to_nhwc(cx.get(node.input[0]))
    t = x.t
    if a.get("mode", b"DCR") == b"CRD":
        c = x.t.shape[-1] // (b * b)
        # DCR channel (i, j, k) holds CRD channel (k, i, j)
        perm = np.arange(c * b * b).reshape(c, b, b).transpose(1, 2, 0).reshape(-1).astype(np.int32)
        with cx.tf.name_scope("derived"):
            t = cx.tf.gather(t, perm, axis=3)
    return [Val(cx.tf.nn.depth_to_space(t, b), True, x.q)]


def _space_to_depth(cx: Lowering, node) -> list[Val]:
    x = cx.to_nhwc(cx.get(node.input[0]))
    return [Val(cx.tf.nn.space_to_depth(x.t, int(node_attrs(node)["blocksize"])), True, x.q)]


HANDLERS = {
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Gather": _gather,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
}

"""Reductions over axes (ReduceMean / ReduceMax / ReduceSum, GlobalMaxPool, ArgMax).

An NHWC value keeps its layout when the axes left after the reduction are in the same order in both
layouts (keepdims, or reducing H and W to [N, C]); otherwise it is brought back to ONNX order first.
"""

from __future__ import annotations

from edgekd.backends.tflite.graph import NCHW_AXIS_IN_NHWC, Lowering, Reject, Val
from edgekd.ir.proto_index import node_attrs


def _axes(cx: Lowering, node, rank: int) -> list[int]:
    a = node_attrs(node)
    if "axes" in a:
        axes = list(a["axes"])
    elif len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in cx.get(node.input[1]).t.reshape(-1)]
    else:
        axes = []
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            raise Reject("a reduction with noop_with_empty_axes=1 and no axes is not lowered")
        axes = list(range(rank))
    return sorted({ax % rank for ax in axes})


def _layout_for(cx: Lowering, x: Val, axes: list[int], keepdims: bool) -> Val:
    """``x`` in a layout whose reduction gives the ONNX result (NHWC kept when it does)."""
    if not x.nhwc or keepdims:
        return x
    kept = [NCHW_AXIS_IN_NHWC[i] for i in range(4) if i not in axes]
    return x if kept == sorted(kept) else cx.to_onnx(x)


def _reduce(fn_name: str):
    def lower(cx: Lowering, node) -> list[Val]:
        x = cx.get(node.input[0])
        rank = cx.rank(x)
        axes = _axes(cx, node, rank)
        keepdims = bool(node_attrs(node).get("keepdims", 1))
        x = _layout_for(cx, x, axes, keepdims)
        t = getattr(cx.tf, fn_name)(cx.tensor(x), axis=[cx.axis(x, ax) for ax in axes], keepdims=keepdims)
        return [Val(t, x.nhwc and keepdims)]

    return lower


def _global_max(cx: Lowering, node) -> list[Val]:
    x = cx.get(node.input[0])
    if cx.rank(x) != 4:
        x = cx.to_onnx(x)
        return [Val(cx.tf.reduce_max(cx.tensor(x), axis=list(range(2, cx.rank(x))), keepdims=True))]
    x = cx.to_nhwc(x)
    return [Val(cx.tf.reduce_max(x.t, axis=[1, 2], keepdims=True), True)]


def _argmax(cx: Lowering, node) -> list[Val]:
    a = node_attrs(node)
    if a.get("select_last_index", 0):
        raise Reject("ArgMax with select_last_index=1 is not lowered (TFLite's ARG_MAX takes the first)")
    x = cx.get(node.input[0])
    axis = a.get("axis", 0) % cx.rank(x)
    keepdims = bool(a.get("keepdims", 1))
    x = _layout_for(cx, x, [axis], keepdims)
    tf = cx.tf
    t = tf.math.argmax(cx.tensor(x), axis=cx.axis(x, axis), output_type=tf.int64)
    if keepdims:
        t = tf.expand_dims(t, cx.axis(x, axis))
    return [Val(t, x.nhwc and keepdims)]


HANDLERS = {
    "ReduceMean": _reduce("reduce_mean"),
    "ReduceMax": _reduce("reduce_max"),
    "ReduceSum": _reduce("reduce_sum"),
    "GlobalMaxPool": _global_max,
    "ArgMax": _argmax,
}

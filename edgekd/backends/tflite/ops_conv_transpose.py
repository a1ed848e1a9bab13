"""ConvTranspose → TRANSPOSE_CONV (int8 with per-channel weights and an int32 bias).

TFLite computes the full (VALID) transposed convolution; ONNX's pads crop it, so the lowering takes
the full output and slices the padded border off (a grid-preserving STRIDED_SLICE in int8).
"""

from __future__ import annotations

from edgekd.backends.tflite.graph import Lowering, Reject, Val
from edgekd.backends.tflite.ops import _bias
from edgekd.ir.proto_index import node_attrs


def output_crop(size: int, k: int, s: int, pads: tuple[int, int], out_pad: int) -> tuple[int, int]:
    """(start, length) of the ONNX output inside TF's VALID output of ``(size - 1)·s + k`` rows."""
    full = (size - 1) * s + k
    length = full - pads[0] - pads[1] + out_pad
    if pads[0] + length > full:
        raise Reject("ConvTranspose output_padding larger than the end padding reaches past TFLite's output")
    return pads[0], length


def _conv_transpose(cx: Lowering, node) -> list[Val]:
    tf = cx.tf
    a = node_attrs(node)
    if a.get("group", 1) != 1:
        raise Reject(f"grouped ConvTranspose (group={a['group']}): TRANSPOSE_CONV has no groups")
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise Reject("dilated ConvTranspose: TRANSPOSE_CONV has no dilation")
    if "output_shape" in a or a.get("auto_pad", b"NOTSET") != b"NOTSET":
        raise Reject("ConvTranspose with output_shape or auto_pad is not lowered (write explicit pads)")
    x = cx.to_nhwc(cx.get(node.input[0]))
    wv = cx.get(node.input[1])
    if not wv.const:
        raise Reject("weights computed at run time")
    w = wv.t  # [C_in, C_out, kh, kw]
    cout, (kh, kw) = w.shape[1], w.shape[2:]
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    out_pad = list(a.get("output_padding", [0, 0]))
    n, h, wd, _ = x.t.shape.as_list()
    # TF's [kh, kw, C_out, C_in]. No fake quant: per channel it would sit on the last axis, and a
    # transpose after it fails the converter ("mismatched quantized axes"). The dequantized int8 values
    # reach ±127·scale in every channel, so the converter's own symmetric per-channel quantization of
    # them recovers the same int8 values and scales (verify.py checks them against the simulation's).
    filt = tf.constant(w.transpose(2, 3, 1, 0).astype("float32"))
    full = [n, (h - 1) * strides[0] + kh, (wd - 1) * strides[1] + kw, cout]
    y = tf.nn.conv2d_transpose(x.t, filt, full, [1, *strides, 1], "VALID")
    bias = None
    if len(node.input) > 2 and node.input[2]:
        b = cx.get(node.input[2])
        if not b.const:
            raise Reject("bias computed at run time")
        bias = _bias(x, wv, b.t)
        y = tf.nn.bias_add(y, bias)
    cx.conv_scopes[f"n{cx.index}"] = {
        "node": node.name,
        "op": "TRANSPOSE_CONV",
        "weight_scales": None if wv.w is None else wv.w.scale,
        "bias": bias,
    }
    (t0, hl), (l0, wl) = (
        output_crop(h, kh, strides[0], (pads[0], pads[2]), out_pad[0]),
        output_crop(wd, kw, strides[1], (pads[1], pads[3]), out_pad[1]),
    )
    if (t0, l0, hl, wl) != (0, 0, full[1], full[2]):
        with tf.name_scope("derived"):
            y = y[:, t0 : t0 + hl, l0 : l0 + wl, :]
    return [Val(y, True)]


HANDLERS = {"ConvTranspose": _conv_transpose}

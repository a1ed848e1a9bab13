"""Lowers a QDQ (or float) ONNX graph to a TensorFlow function in NHWC that the TFLite converter
turns into a full-int8 flatbuffer with edgekd's own quantization parameters.

Every activation QuantizeLinear → DequantizeLinear pair becomes a ``fake_quant_with_min_max_vars``
whose range is ``[(-128 - zp)·s, (127 - zp)·s]``, so the converter recovers scale ``s`` and zero
point ``zp`` exactly and needs no representative dataset. Weights come from their int8
DequantizeLinear: dequantized values with a per-output-channel, narrow-range fake quant at ∓127·s,
so the converter recovers the same int8 values and scales. The graph is mirrored op by op, so a
fake quant sits where the simulation has its Q/DQ pair: after a Conv's fused ReLU/ReLU6 (the
converter then fuses conv, bias and activation into one int8 op), after every projection conv,
residual add and the logits.

Layout: the TF input is NHWC; every 4-D ONNX (NCHW) tensor produced by a spatial op is held in NHWC
and ops that care about axes (Concat, Split, Slice, Softmax, Pad, Transpose, Reshape, Flatten)
translate them. 4-D graph outputs stay NHWC; the backend's session transposes them back.

The converter's quirks this module works around (TF 2.21, measured):
- per-channel FULLY_CONNECTED weights fail (``'tfl.transpose' op has mismatched quantized axes``):
  Gemm / MatMul with constant weights become a 1×1 CONV_2D, which keeps them per channel (per-tensor
  FC weights measured 4 output steps from the simulation on mobilenetv3-small, 3 with this);
- depthwise weights get their per-channel fake quant on ``[kh, kw, 1, C·m]`` and are reshaped to
  ``[kh, kw, C, m]`` afterwards (applied to ``[kh, kw, C, 1]`` they silently share one scale);
- weights use ``narrow_range=True`` (else some channels get zero point -1 and XNNPACK refuses the model);
- a float bias equal in every channel (a splat) is quantized with the first channel's scale for all
  channels: biases are snapped to their int32 grid first, so their values differ per channel;
- ONNX's explicit padding is kept as ``SAME`` only where TF's SAME splits it identically, else it
  becomes an explicit pad (zeros for convs, the grid's lowest value for max pools) and ``VALID``.

Node names go into TF name scopes (``n<index>``), which the converter keeps in its tensor names;
``verify.py`` reads them back to compare the flatbuffer's scales with the ones asked for.
"""

from __future__ import annotations

from typing import Any

import onnx

from edgekd.backends.tflite.graph import TO_NHWC, Lowered, Lowering, scope_name
from edgekd.backends.tflite.handlers import COMPOSITES, HANDLERS
from edgekd.backends.tflite.rules import raise_unsupported, unsupported_nodes
from edgekd.errors import UnsupportedOpsError

__all__ = ["Lowered", "lower", "unsupported_nodes"]


def lower(model: onnx.ModelProto, float_nodes: frozenset[str] = frozenset()) -> Lowered:
    """Traces the ONNX graph as a TF function taking the input in NHWC. Raises UnsupportedOpsError
    naming every node it cannot express. ``float_nodes``: a detector's decode, kept float (see ops._sigmoid)."""
    bad = unsupported_nodes(model)
    if bad:
        raise_unsupported(bad)
    import tensorflow as tf

    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise UnsupportedOpsError(f"the tflite backend lowers single-input models; this one has {len(inputs)} inputs")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if any(d <= 0 for d in dims):
        raise UnsupportedOpsError(
            f"input {inputs[0].name!r} has unknown dimensions {dims}", "compile with a fixed --input-shape"
        )
    shape = tuple(dims[i] for i in TO_NHWC) if len(dims) == 4 else tuple(dims)
    cx = Lowering(tf, model, HANDLERS, COMPOSITES)
    cx.float_nodes = float_nodes
    holder: dict[str, Any] = {}

    def body(x):
        outs, nhwc = cx.run(x)
        holder["nhwc"], holder["shapes"] = nhwc, [tuple(o.shape.as_list()) for o in outs]
        return outs

    fn = tf.function(
        body, autograph=False, input_signature=[tf.TensorSpec(shape, tf.float32, name=scope_name(inputs[0].name))]
    )
    module = tf.Module()
    module.f = fn
    concrete = fn.get_concrete_function()
    module.weights = cx.variables
    producers = {o: n for n in g.node for o in n.output}

    def sources(name: str) -> set[str]:
        out, node = {name}, producers.get(name)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear", "Identity"):
            name = node.input[0]
            out.add(name)
            node = producers.get(name)
        return out

    return Lowered(
        concrete,
        module,
        inputs[0].name,
        shape,
        [o.name for o in g.output],
        holder["nhwc"],
        [sources(o.name) for o in g.output],
        holder["shapes"],
        cx.scopes,
        cx.conv_scopes,
        cx.notes,
        cx.fake_quants,
    )

"""Every ONNX op the TFLite lowering handles, by op type: one table from the handler modules, held
against the check table of ``rules.py``."""

from __future__ import annotations

from typing import Callable

import onnx

from edgekd.backends.tflite import ops, ops_conv_transpose, ops_elementwise, ops_lrn, ops_reduce, ops_shape
from edgekd.backends.tflite.graph import Lowering, Val
from edgekd.backends.tflite.rules import CHECKS

HANDLERS: dict[str, Callable[[Lowering, onnx.NodeProto], list[Val]]] = {
    **ops.HANDLERS,
    **ops_elementwise.HANDLERS,
    **ops_reduce.HANDLERS,
    **ops_lrn.HANDLERS,
    **ops_shape.HANDLERS,
    **ops_conv_transpose.HANDLERS,
}
# Functions written out in primitive ops that lower to one TFLite op (edgekd.ir.patterns.composites).
COMPOSITES: dict[str, Callable[[Lowering, Val], Val]] = {"gelu": ops_elementwise.gelu, "rsqrt": ops_elementwise.rsqrt}
assert set(HANDLERS) == set(CHECKS), "every checked op needs a handler"

"""Which ONNX nodes the TFLite lowering can express, and why not where it cannot: checked before any
converter runs (no TensorFlow needed)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from edgekd.backends.base import Unsupported
from edgekd.errors import UnsupportedOpsError
from edgekd.ir.patterns import composites
from edgekd.ir.proto_index import DEFAULT_DOMAINS, GraphIndex, node_attrs


def _check_conv(node, a, consts) -> str | None:
    if node.input[1] not in consts:
        return "weights computed at run time; TFLite needs constant conv weights"
    if len(a.get("kernel_shape", [1, 1])) != 2:
        return "only 2-D convolutions lower to TFLite CONV_2D"
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", b"SAME_UPPER"):
        return f"auto_pad {a['auto_pad'].decode()} has no TFLite equivalent"
    return None  # grouped convs are checked against the weight shape below


def _check_group(node, a, consts) -> str | None:
    group = a.get("group", 1)
    if group == 1:
        return None
    w = consts.get(node.input[1])
    if w is None:
        return None
    # depthwise: one input channel per group (any channel multiplier); else one CONV_2D per group
    if w.shape[0] % group == 0:
        return None
    return f"grouped convolution (group={group}) whose {w.shape[0]} output channels do not split into its groups"


def _check_pool(node, a, consts) -> str | None:
    if len(a.get("kernel_shape", [])) != 2:
        return "only 2-D pooling lowers to TFLite"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated pooling has no TFLite equivalent"
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", b"SAME_UPPER"):
        return f"auto_pad {a['auto_pad'].decode()} has no TFLite equivalent"
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        return "MaxPool's indices output has no TFLite equivalent"
    return None


def _check_gemm(node, a, consts) -> str | None:
    if a.get("transA", 0):
        return "Gemm with transA=1 is not lowered"
    if a.get("alpha", 1.0) != 1.0:
        return "Gemm with alpha != 1 is not lowered"
    return None


def _check_resize(node, a, consts) -> str | None:
    mode = a.get("mode", b"nearest")
    if mode not in (b"nearest", b"linear"):
        return f"Resize mode {mode.decode()} is not lowered (nearest and linear only)"
    coord = a.get("coordinate_transformation_mode", b"half_pixel")
    if mode == b"linear" and coord not in BILINEAR_COORDINATES:
        return (
            f"linear Resize with coordinate_transformation_mode={coord.decode()} has no TFLite equivalent "
            f"(lowered: {', '.join(c.decode() for c in BILINEAR_COORDINATES)})"
        )
    return None


def _check_pad(node, a, consts) -> str | None:
    mode = a.get("mode", b"constant")
    if mode not in (b"constant", b"reflect"):
        return f"Pad mode {mode.decode()} has no TFLite int8 equivalent"
    if len(node.input) > 3 and node.input[3]:
        return "Pad with axes is not lowered"
    if len(node.input) > 1 and node.input[1] not in consts:
        return "pads computed at run time"
    return None


def _check_const_inputs(*indices: int) -> Callable:
    def check(node, a, consts) -> str | None:
        for i in indices:
            if len(node.input) > i and node.input[i] and node.input[i] not in consts:
                return f"input {i} ({node.input[i]}) is computed at run time; TFLite needs it constant"
        return None

    return check


def _check_quant(node, a, consts) -> str | None:
    if node.op_type == "DequantizeLinear" and node.input[0] in consts:
        return None  # constants (weights, biases) are dequantized at lowering time
    scale = consts.get(node.input[1])
    zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None:
        return "scale computed at run time"
    if scale.size != 1:
        return "per-channel activation quantization has no TFLite equivalent"
    if zp is not None and zp.dtype != np.int8:
        return f"{zp.dtype} activations: this backend emits int8 (use activation scheme asymmetric-int8)"
    return None


def _ok(node, a, consts) -> None:
    return None


# Exponents of Pow with an int8 lowering: x² is an int8 MUL of x by itself, √x an int8 SQRT.
INT8_EXPONENTS = (1.0, 2.0, 0.5)
BILINEAR_COORDINATES = (b"half_pixel", b"pytorch_half_pixel", b"align_corners", b"asymmetric")


def _check_conv_transpose(node, a, consts) -> str | None:
    if node.input[1] not in consts:
        return "weights computed at run time; TFLite needs constant weights"
    if len(a.get("kernel_shape", consts[node.input[1]].shape[2:])) != 2:
        return "only 2-D transposed convolutions lower to TFLite TRANSPOSE_CONV"
    if a.get("group", 1) != 1:
        return f"grouped ConvTranspose (group={a['group']}): TRANSPOSE_CONV has no groups"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated ConvTranspose: TRANSPOSE_CONV has no dilation"
    if "output_shape" in a or a.get("auto_pad", b"NOTSET") != b"NOTSET":
        return "ConvTranspose with output_shape or auto_pad is not lowered (export it with explicit pads)"
    pads, out_pad = a.get("pads", [0, 0, 0, 0]), a.get("output_padding", [0, 0])
    if out_pad[0] > pads[2] or out_pad[1] > pads[3]:
        return "ConvTranspose output_padding larger than the end padding reaches past TFLite's output"
    return None


def _check_axes_input(node, a, consts) -> str | None:
    return _check_const_inputs(1)(node, a, consts)


def _check_argmax(node, a, consts) -> str | None:
    if a.get("select_last_index", 0):
        return "ArgMax with select_last_index=1: TFLite's ARG_MAX takes the first index"
    return None


def _check_lrn(node, a, consts) -> str | None:
    if int(a.get("size", 1)) % 2 == 0:
        return f"LRN with an even size ({a['size']}) sums a window TFLite's symmetric one cannot"
    return None


LRN_INT8_BETAS = (0.25, 0.5, 0.75, 1.0)  # written out in int8 ops by ops_lrn


def lrn_int8_refusal(a: dict) -> str | None:
    """Why this LRN cannot be written in int8 ops (None: it can)."""
    beta, bias = float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
    if beta not in LRN_INT8_BETAS:
        return f"LRN with beta {beta:g} has no int8 TFLite form (int8: beta {', '.join(map(str, LRN_INT8_BETAS))})"
    if bias <= 0:
        return f"LRN with bias {bias:g} ≤ 0 can divide by 0: it has no int8 TFLite form"
    return None


def _check_erf(node, a, consts) -> str | None:
    return "Erf has no TFLite op; only a GELU written with it (0.5·x·(1 + erf(x/√2))) lowers, to TFLite's GELU"


CHECKS: dict[str, Callable[[onnx.NodeProto, dict, dict], str | None]] = {
    "Conv": lambda n, a, c: _check_conv(n, a, c) or _check_group(n, a, c),
    "Gemm": _check_gemm,
    "MatMul": _ok,
    "Add": _ok,
    "Sub": _ok,
    "Mul": _ok,
    "Relu": _ok,
    "Clip": _check_const_inputs(1, 2),
    "Sigmoid": _ok,
    "HardSwish": _ok,
    "HardSigmoid": _ok,
    "MaxPool": _check_pool,
    "AveragePool": _check_pool,
    "GlobalAveragePool": _ok,
    "Concat": _ok,
    "Resize": lambda n, a, c: _check_resize(n, a, c) or _check_const_inputs(2, 3)(n, a, c),
    "Reshape": _check_const_inputs(1),
    "Flatten": _ok,
    "Transpose": _ok,
    "Pad": _check_pad,
    "Softmax": _ok,
    "Split": _check_const_inputs(1),
    "Slice": _check_const_inputs(1, 2, 3, 4),
    "Constant": _ok,
    "Identity": _ok,
    "QuantizeLinear": _check_quant,
    "DequantizeLinear": _check_quant,
    "ConvTranspose": _check_conv_transpose,
    "Div": _ok,
    "Pow": _check_const_inputs(1),
    "Sqrt": _ok,
    "Exp": _ok,
    "Tanh": _ok,
    "LeakyRelu": _ok,
    "PRelu": _check_const_inputs(1),
    "Elu": _ok,
    "Erf": _check_erf,
    "ReduceMean": _check_axes_input,
    "ReduceMax": _check_axes_input,
    "ReduceSum": _check_axes_input,
    "GlobalMaxPool": _ok,
    "ArgMax": _check_argmax,
    "LRN": _check_lrn,
    "Squeeze": _check_axes_input,
    "Unsqueeze": _check_axes_input,
    "Gather": _ok,
    "DepthToSpace": _ok,
    "SpaceToDepth": _ok,
}


def composite_nodes(model: onnx.ModelProto) -> dict[str, tuple[str, str, bool]]:
    """First output of every node inside a composite (``edgekd.ir.patterns.composites``) → (kind, the
    composite's input, whether it is the node producing its output)."""
    import onnx_ir as ir

    out: dict[str, tuple[str, str, bool]] = {}
    for c in composites(ir.from_proto(model).graph):
        for node in c.nodes:
            out[node.outputs[0].name] = (c.kind, c.input.name, node is c.nodes[-1])
    return out


def float_only_nodes(model: onnx.ModelProto) -> list[Unsupported]:
    """Nodes the lowering expresses only in float: a full-int8 compile cannot keep them."""
    consts = GraphIndex(model).constants_through(("Identity", "DequantizeLinear"))
    bad = []
    for node in model.graph.node:
        name, op = node.name or node.op_type, node.op_type
        if op == "Elu":
            bad.append(Unsupported(name, op, "Elu has no int8 TFLite kernel: the converter keeps it float"))
        elif op == "LRN" and (why := lrn_int8_refusal(node_attrs(node))):
            bad.append(Unsupported(name, op, why))
        elif (
            op == "Pow"
            and node.input[1] in consts
            and (consts[node.input[1]].size != 1 or float(consts[node.input[1]].reshape(-1)[0]) not in INT8_EXPONENTS)
        ):
            bad.append(
                Unsupported(
                    name,
                    op,
                    f"Pow with exponent {consts[node.input[1]].reshape(-1)[:4].tolist()} has "
                    "no int8 TFLite kernel (int8: exponents 1, 2 and 0.5)",
                )
            )
        elif op == "Gather" and node.input[1] not in consts:
            bad.append(Unsupported(name, op, "Gather by run-time indices is lowered in float only"))
    return bad


def unsupported_nodes(model: onnx.ModelProto) -> list[Unsupported]:
    """Every node this lowering cannot express, with the reason."""
    consts = GraphIndex(model).constants_through(("Identity", "DequantizeLinear"))  # shapes, not values
    inside = composite_nodes(model)
    bad = []
    for node in model.graph.node:
        if node.output and node.output[0] in inside:
            continue  # lowered as the one op it stands for
        if node.domain not in DEFAULT_DOMAINS:
            bad.append(Unsupported(node.name or node.op_type, node.op_type, f"custom domain {node.domain!r}"))
            continue
        check = CHECKS.get(node.op_type)
        if check is None:
            bad.append(
                Unsupported(
                    node.name or node.op_type,
                    node.op_type,
                    f"{node.op_type} is not lowered to TFLite (supported: {', '.join(sorted(CHECKS))})",
                )
            )
            continue
        reason = check(node, node_attrs(node), consts)
        if reason:
            bad.append(Unsupported(node.name or node.op_type, node.op_type, reason))
    return bad


def raise_unsupported(bad: list[Unsupported], where: str = "the tflite backend", downstream: int = 0) -> None:
    """``downstream``: tensors below the refused nodes, which were not tried (they read what was not lowered)."""
    listing = "\n".join(f"  {u.node} ({u.op}): {u.reason}" for u in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    below = f"\n  ({downstream} tensor(s) below them were not tried)" if downstream else ""
    raise UnsupportedOpsError(f"{len(bad)} node(s) cannot be lowered by {where}:\n{listing}{more}{below}")

"""Folds BatchNormalization into the Conv before it, and marks the ReLU / ReLU6 after a Conv (or an
Add/Sub/Mul) as fused; on targets that sum a residual Add into a convolution, marks that Conv too.

BN folding changes the graph: ``W' = W·γ/σ`` per output channel and ``b' = (b − μ)·γ/σ + β`` with
``σ = sqrt(var + ε)``. Activations stay in the graph (plain ONNX must run everywhere) and are
marked with node metadata, so the quantizer puts one Q/DQ after the activation rather than
between Conv and activation, as backends that fuse activations execute it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgekd.config import CompileConfig
from edgekd.ir.graph import FUSED_ACTIVATION, FUSED_ADD, FUSED_INTO, bypass, const_array, new_initializer, sole_consumer
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import ACTIVATIONS_MARKED, BN_FOLDED, ONNX_MODEL, CompileState, PassOutput

# Ops integer runtimes run with the ReLU / ReLU6 after them fused in, one rounding for both (TFLite's
# CONV_2D and ADD/SUB/MUL take a fused activation; oneDNN and TensorRT fuse them as post-ops).
FUSES_ACTIVATION = frozenset({"Conv", "Add", "Sub", "Mul"})


def fold_batchnorm(graph: ir.Graph, bn: ir.Node) -> bool:
    """Folds one inference-mode BN into its producer Conv; False (graph untouched) when it cannot."""
    if bn.op_type != "BatchNormalization" or len(bn.outputs) != 1 or bn.attributes.get_int("training_mode", 0):
        return False
    conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
    if conv is None or conv.op_type != "Conv" or sole_consumer(conv.outputs[0]) is not bn:
        return False
    weight = const_array(conv.inputs[1])
    bias_in = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = (
        const_array(bias_in)
        if bias_in is not None
        else np.zeros(weight.shape[0] if weight is not None else 0, np.float32)
    )
    gamma, beta, mean, var = (const_array(v) for v in bn.inputs[1:5])
    if any(a is None for a in (weight, bias, gamma, beta, mean, var)):
        return False  # weights computed at run time: nothing to fold into
    eps = bn.attributes.get_float("epsilon", 1e-5)
    # Fold in float64 so the folded float32 weights are the closest to the exact product.
    factor = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    new_w = (weight.astype(np.float64) * factor.reshape(shape)).astype(weight.dtype)
    new_b = ((bias.astype(np.float64) - mean) * factor + beta).astype(weight.dtype)
    base = conv.name or conv.outputs[0].name
    conv.replace_input_with(1, new_initializer(graph, f"{base}.weight_bn_folded", new_w))
    b_value = new_initializer(graph, f"{base}.bias_bn_folded", new_b)
    if len(conv.inputs) > 2:
        conv.replace_input_with(2, b_value)
    else:
        conv.resize_inputs(3)
        conv.replace_input_with(2, b_value)
    bypass(graph, bn, conv.outputs[0])
    return True


def activation_kind(node: ir.Node) -> str | None:
    """'Relu' or 'Relu6' when ``node`` is one of the activations that backends fuse into Conv."""
    if node.op_type == "Relu":
        return "Relu"
    if node.op_type == "Clip":
        lo = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        hi = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
        if lo is None:  # opset < 11 keeps the bounds as attributes
            lo = node.attributes.get_float("min", None)
            hi = node.attributes.get_float("max", None)
        if lo is not None and hi is not None and float(lo) == 0.0:
            if float(hi) == 6.0:
                return "Relu6"
            return f"Clip(0,{float(hi):g})"
    return None


def remove_unused_initializers(graph: ir.Graph) -> None:
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        graph.initializers.pop(name)


def conv_summed_into(add: ir.Node) -> ir.Node | None:
    """The Conv feeding residual ``add`` that a runtime with conv-sum fusion merges it into: OpenVINO's
    CPU plugin takes the first input's Conv when that Conv has no other reader, else the second's
    (both inputs quantized; a Conv with a fused activation keeps its own output)."""
    if add.op_type != "Add" or len(add.inputs) != 2 or any(const_array(v) is not None for v in add.inputs):
        return None
    for v in add.inputs:
        conv = v.producer() if v is not None else None
        if (
            conv is not None
            and conv.op_type == "Conv"
            and sole_consumer(v) is add
            and not conv.metadata_props.get(FUSED_ACTIVATION)
        ):
            return conv
    return None


@dataclass(frozen=True)
class FuseOutput(PassOutput):
    bn_folded: int
    activations_marked: int
    bn_left: int  # BatchNormalization nodes with nothing to fold into
    conv_add_marked: int = 0  # residual Adds summed into the Conv before them (fuse_conv_add targets)


class FuseConvBnReluPass(Pass):
    name = "fuse"
    requires = frozenset({ONNX_MODEL})
    provides = frozenset({BN_FOLDED, ACTIVATIONS_MARKED})

    def __init__(self, mark_activations: bool = True, mark_conv_add: bool = False):
        self.mark_activations, self.mark_conv_add = mark_activations, mark_conv_add

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "FuseConvBnReluPass":
        return cls(
            mark_activations=spec.fuse_activations,
            mark_conv_add=bool(spec.raw.get("pipeline", {}).get("fuse_conv_add", False)),
        )

    def run(self, state: CompileState) -> PassResult:
        graph = state.onnx_model.graph
        folded = sum(fold_batchnorm(graph, node) for node in list(graph) if node.op_type == "BatchNormalization")
        marked = 0
        if self.mark_activations:
            for conv in (n for n in graph if n.op_type in FUSES_ACTIVATION):
                act = sole_consumer(conv.outputs[0])
                kind = activation_kind(act) if act is not None else None
                if kind and conv.metadata_props.get(FUSED_ACTIVATION) != kind:
                    conv.metadata_props[FUSED_ACTIVATION] = kind
                    act.metadata_props[FUSED_INTO] = conv.name
                    marked += 1
        summed = 0
        if self.mark_conv_add:
            for add in [n for n in graph if n.op_type == "Add"]:
                conv = conv_summed_into(add)
                if conv is not None and conv.metadata_props.get(FUSED_ADD) != add.name:
                    conv.metadata_props[FUSED_ADD] = add.name or add.outputs[0].name
                    summed += 1
        if folded:
            remove_unused_initializers(graph)
        left = sum(1 for n in graph if n.op_type == "BatchNormalization")
        return PassResult(
            state, changed=bool(folded or marked or summed), output=FuseOutput(folded, marked, left, summed)
        )

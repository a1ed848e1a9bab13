"""Constant folding, shape-subgraph folding, dead-node and no-op removal, twin nodes merged: onnxscript's
optimizer and onnx-ir's passes, run in place on the ``onnx_ir`` model the pipeline carries (docs/canonicalize.md
says why this library).

Once the input shape is bound, ``Shape → Gather → Concat → Reshape`` chains are constants and fold
away; weights that old exporters generate at run time (``ConstantOfShape``) become initializers.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgekd.ir.graph import op_counts

# Constants up to this many elements are materialized (a VGG fully connected weight has 1e8): the
# backends need weights as constants, and the model already holds them in memory once.
MAX_FOLDED_ELEMENTS = 1 << 28
# Each round folds about one block's shapes (torchvision's Swin-T: 8 rounds left 120 Shape ops, 15 fold them
# all): a guard, not a budget.
MAX_ROUNDS = 64


def _fold_weight_generators(node: ir.Node) -> bool | None:
    """onnxscript keeps ConstantOfShape unfolded to keep files small; edgekd folds it: every backend
    needs its outputs as constants (weights, pads, masks)."""
    return True if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") else None


def _rewrite_rules():
    """onnxscript's default rewrite rules that keep the op set the backends know: no-op removal
    (Add 0, Mul 1, Dropout in inference, Cast to the same type, Expand/Transpose that change nothing),
    Reshape/Unsqueeze/Transpose chains collapsed, Min/Max → Clip, successive Relu/Clip merged, Pad
    folded into Conv, BatchNormalization folded into Conv/ConvTranspose/Gemm, Reshape shapes
    materialized. Left out: Flatten → Reshape and dropping zero biases (graph churn for no gain)."""
    from onnxscript import rewriter

    skipped = ("Flatten2Reshape", "RemoveOptionalBias")
    return [r for r in rewriter._DEFAULT_REWRITE_RULES if not (r.name or "").startswith(skipped)]


def _removed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {op: n - after.get(op, 0) for op, n in before.items() if n > after.get(op, 0)}


def _added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}


def simplify(model: ir.Model) -> dict[str, dict[str, int]]:
    """Folds and cleans ``model`` in place; returns the ops removed and added, by op type."""
    import onnxscript.optimizer as optimizer
    from onnxscript.rewriter import RewritePass

    before = op_counts(model.graph)
    quiet = logging.getLogger("onnxscript")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        # Folding resolves a Split's sizes or a Reshape's shape; shape inference then knows the shapes
        # below it, and the next round folds the Shape ops that read them: repeat until nothing changes.
        for _ in range(MAX_ROUNDS):
            nodes = len(model.graph)
            common.ShapeInferencePass(strict_mode=False)(model)
            optimizer.fold_constants(
                model,
                input_size_limit=MAX_FOLDED_ELEMENTS,
                output_size_limit=MAX_FOLDED_ELEMENTS,
                should_fold=_fold_weight_generators,
            )
            ir.passes.PassManager(
                [RewritePass(_rewrite_rules()), common.RemoveUnusedNodesPass()], steps=2, early_stop=True
            )(model)
            common.IdentityEliminationPass()(model)
            common.RemoveUnusedNodesPass()(model)
            if len(model.graph) == nodes:
                break
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        _contiguous_initializers(model.graph)
        ir.passes.Sequential(
            # Equal constants become one, then nodes computing the same thing from the same inputs one: a
            # converter merges such twins itself (TFLite did with the light Inception's identical 1×1
            # convolutions) and then meets the two output grids the quantizer gave them on one tensor.
            common.DeduplicateHashedInitializersPass(),
            common.CommonSubexpressionEliminationPass(),
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedOpsetsPass(),
        )(model)
    finally:
        quiet.level = level
    after = op_counts(model.graph)
    return {"removed": _removed(before, after), "added": _added(before, after)}


def _contiguous_initializers(graph: ir.Graph) -> None:
    """Every initializer's array in C order: a folded Transpose can leave a strided view (torchvision's
    Swin-T from torch's dynamo exporter), which onnx-ir's deduplication cannot hash."""
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        array = tensor.numpy()
        if not array.flags.c_contiguous:
            value.const_value = ir.Tensor(np.array(array, order="C"), name=tensor.name)

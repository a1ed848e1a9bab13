"""The import canonicalization, as one function over an ``onnx_ir`` model: what the canonicalize pass
runs and what ``edgekd inspect --target`` previews.

Order matters: the input shape is bound first so shape subgraphs become constants; the opset moves
into the target's range before folding so every later step reads one set of op semantics; folding
runs before the pattern rewrites so they see constants, not the subgraphs that computed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common

from edgekd.errors import OpsetConversionError
from edgekd.ir import normalize
from edgekd.ir.bind import bind_graph_input
from edgekd.ir.einsum import einsum_to_matmul
from edgekd.ir.graph import bypass
from edgekd.ir.opset import convert_opset, expand_newer_ops, target_opset
from edgekd.ir.patterns import count_patterns, fuse_hard_activations, is_layernorm
from edgekd.ir.simplify import simplify


@dataclass
class CanonicalReport:
    """What canonicalization did, for the manifest: counts per kind."""

    bound_dims: list[str] = field(default_factory=list)
    opset_from: int | None = None
    opset_to: int | None = None
    initializer_inputs_removed: int = 0
    removed_ops: dict[str, int] = field(default_factory=dict)  # folded, dead, no-op or twin nodes gone, by op
    rewrites: dict[str, int] = field(default_factory=dict)  # pattern rewrites, by kind
    patterns: dict[str, int] = field(default_factory=dict)  # recognized patterns, by kind
    nodes_before: int = 0
    nodes_after: int = 0

    def to_dict(self) -> dict:
        out = {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "bound_dims": self.bound_dims,
            "opset": {"from": self.opset_from, "to": self.opset_to or self.opset_from},
            "initializer_inputs_removed": self.initializer_inputs_removed,
            "removed_ops": self.removed_ops,
            "rewrites": self.rewrites,
            "patterns": self.patterns,
        }
        return out

    @property
    def changed(self) -> bool:
        return bool(
            self.bound_dims
            or self.opset_to
            or self.initializer_inputs_removed
            or self.removed_ops
            or any(self.rewrites.values())
        )


def model_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def _drop_initializer_inputs(model: ir.Model) -> int:
    before = len(model.graph.inputs)
    common.RemoveInitializersFromInputsPass()(model)
    if model.ir_version is not None and model.ir_version < 4:
        model.ir_version = 4  # IR 4 is the first where an initializer need not be a graph input
    return before - len(model.graph.inputs)


def _infer_shapes(model: ir.Model) -> None:
    common.ShapeInferencePass(strict_mode=False)(model)


def _drop_identities(graph: ir.Graph) -> None:
    """Identity nodes removed, their readers reading the input; one that names a graph output stays (the
    output keeps its name)."""
    for node in [n for n in graph if n.op_type == "Identity" and n.domain in ("", "ai.onnx")]:
        if not node.outputs[0].is_graph_output():
            bypass(graph, node, node.inputs[0])


# The pattern rewrites, in the order they run, by the key the report counts them under (and a backend's
# ``wrong_after`` names).
PATTERN_REWRITES = {
    "integer_input_to_float": normalize.integer_input_to_float,
    "sum_to_add": normalize.sum_to_add,
    "div_by_constant_to_mul": normalize.div_by_constant,
    "batchnorm_to_mul_add": normalize.lower_batchnorm,
    "reduce_mean_to_global_pool": normalize.reduce_mean_to_global_pool,
    "channel_shuffle_to_gather": normalize.channel_shuffle_to_gather,
    "square_to_mul": normalize.square_to_mul,
    "div_by_sqrt_to_rsqrt": normalize.div_by_sqrt,
    "softmax_unflattened": normalize.unflatten_softmax,
    "einsum_to_matmul": einsum_to_matmul,
}


LAYERNORM_OPSET = 17


def _fusable_layernorm(model: ir.Model, opset: int, opset_range: tuple[int, int], decompose: frozenset[str]) -> bool:
    """Whether raising the opset would let a LayerNorm written out in primitives become the fused op: the
    target takes LayerNormalization and its range reaches opset 17, the model is below it and holds one."""
    return (
        opset < LAYERNORM_OPSET <= opset_range[1]
        and "LayerNormalization" not in decompose
        and any(is_layernorm(n) for n in model.graph)
    )


def canonicalize(
    model: ir.Model,
    shape: Sequence[int],
    opset_range: tuple[int, int],
    preferred_opset: int,
    decompose: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
) -> tuple[ir.Model, CanonicalReport]:
    """The canonical form of ``model`` for input ``shape`` and a target's opset range (a new model when
    the opset changed, else ``model`` edited in place). ``decompose``: fused ops the target lacks
    (LayerNormalization), written out in primitives before the opset moves; ``skip``: rewrites (by
    report key) the target's runtime computes wrongly."""
    report = CanonicalReport(nodes_before=len(model.graph))
    report.initializer_inputs_removed = _drop_initializer_inputs(model)
    widened = normalize.float16_to_float32(model.graph)  # before binding: shape inference reads the types
    report.bound_dims = bind_graph_input(model, shape)
    report.opset_from = model_opset(model)
    decomposed = {}
    if "LayerNormalization" in decompose:
        _infer_shapes(model)
        decomposed["layernorm_decomposed"] = normalize.decompose_layernorm(model.graph, report.opset_from)
    to = target_opset(report.opset_from, opset_range, preferred_opset)
    optional = to is None and _fusable_layernorm(model, report.opset_from, opset_range, decompose)
    if optional:
        to = max(LAYERNORM_OPSET, min(preferred_opset, opset_range[1]))
    if to is not None:
        _drop_identities(model.graph)  # ONNX's converter has no adapter for Identity below opset 16
        try:
            proto, expanded = expand_newer_ops(ir.to_proto(model), to)
            model = ir.from_proto(convert_opset(proto, to))
            report.opset_to = to
            decomposed.update({f"{op.lower()}_expanded": n for op, n in expanded.items()})
        except OpsetConversionError:
            if not optional:
                raise  # in range as it is, the model keeps its opset and its LayerNorms stay written out
    _infer_shapes(model)
    counts = simplify(model)
    report.removed_ops = counts["removed"]
    graph = model.graph
    report.rewrites = {
        "float16_to_float32": widened,
        **decomposed,
        "layernorm_fused": normalize.fuse_layernorm(graph)
        if model_opset(model) >= LAYERNORM_OPSET and "LayerNormalization" not in decompose
        else 0,
        "hard_activation_fused": fuse_hard_activations(model, model_opset(model)),
    }
    if report.rewrites["hard_activation_fused"] or report.rewrites["layernorm_fused"]:
        common.RemoveUnusedNodesPass()(model)  # the rewrites below would count the replaced nodes too
    _infer_shapes(model)
    report.rewrites.update({key: 0 if key in skip else rewrite(graph) for key, rewrite in PATTERN_REWRITES.items()})
    report.rewrites["affine_chain_merged"] = normalize.merge_affine_chains(graph)
    report.rewrites["affine_folded_into_conv"] = normalize.fold_affine_into_conv(graph)
    report.rewrites["affine_folded_into_matmul"] = normalize.fold_affine_into_matmul(graph)
    ir.passes.Sequential(common.RemoveUnusedNodesPass(), common.TopologicalSortPass())(model)
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        graph.initializers.pop(name)
    _infer_shapes(model)
    report.rewrites = {k: v for k, v in report.rewrites.items() if v}
    report.patterns = count_patterns(graph)
    report.nodes_after = len(graph)
    return model, report

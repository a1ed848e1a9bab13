"""``Einsum`` that is a batched matrix product, written as the MatMul it is.

torch models write attention with ``torch.einsum`` (torchvision's MaxViT: ``"BGHID,BGHJD->BGHIJ"`` for
q·kᵀ, ``"BGHIJ,BGHJD->BGHID"`` for the weights times v). TFLite and Ascend have no Einsum, and a quantizer
that knows MatMul places its int8 inputs there; the same product as MatMul (a Transpose of the last two axes
where an operand is stored the other way round) runs everywhere.
"""

from __future__ import annotations

import onnx_ir as ir


def batched_matmul(equation: str) -> tuple[bool, bool] | None:
    """Whether each operand needs its last two axes swapped to make ``equation`` ``MatMul(a, b)``: both
    operands and the output share their leading (batch) axes in one order, and the product contracts one
    axis of each operand's last two; None for any other equation."""
    eq = equation.replace(" ", "")
    if eq.count("->") != 1 or "." in eq:
        return None
    operands, out = eq.split("->")
    if operands.count(",") != 1:
        return None
    a, b = operands.split(",")
    rank = len(out)
    if rank < 2 or not len(a) == len(b) == rank or not all(len(set(s)) == rank for s in (a, b, out)):
        return None
    if not a[:-2] == b[:-2] == out[:-2]:
        return None
    i, j = out[-2:]
    shared = set(a[-2:]) & set(b[-2:])
    if len(shared) != 1:
        return None
    (k,) = shared
    if set(a[-2:]) != {i, k} or set(b[-2:]) != {k, j}:
        return None
    return a[-2:] != i + k, b[-2:] != k + j


def _swapped_last_axes(graph: ir.Graph, value: ir.Value, rank: int, name: str, before: ir.Node) -> ir.Value:
    perm = [*range(rank - 2), rank - 1, rank - 2]
    node = ir.Node("", "Transpose", [value], attributes=[ir.AttrInt64s("perm", perm)], name=name)
    node.outputs[0].name, node.outputs[0].dtype = f"{name}_out", value.dtype
    if value.shape is not None:
        node.outputs[0].shape = ir.Shape([value.shape[p] for p in perm])
    graph.insert_before(before, node)
    return node.outputs[0]


def einsum_to_matmul(graph: ir.Graph) -> int:
    count = 0
    for node in [n for n in graph if n.op_type == "Einsum" and n.domain in ("", "ai.onnx")]:
        equation = node.attributes.get_string("equation", "")
        swaps = batched_matmul(equation)
        if swaps is None or len(node.inputs) != 2:
            continue
        rank = len(equation.split("->")[1].replace(" ", ""))
        base = node.name or "einsum"
        operands = [
            _swapped_last_axes(graph, v, rank, f"{base}_t{k}", node) if swap else v
            for k, (v, swap) in enumerate(zip(node.inputs, swaps))
        ]
        matmul = ir.Node("", "MatMul", operands, name=f"{base}_matmul")
        out = node.outputs[0]
        matmul.outputs[0].name, matmul.outputs[0].dtype, matmul.outputs[0].shape = f"{base}_mm", out.dtype, out.shape
        graph.insert_before(node, matmul)
        was_output, name = out.is_graph_output(), out.name
        ir.convenience.replace_all_uses_with(out, matmul.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        if was_output:
            matmul.outputs[0].name = name
        count += 1
    return count

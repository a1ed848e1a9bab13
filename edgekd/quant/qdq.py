"""Writes a quantization plan into the graph as standard QuantizeLinear/DequantizeLinear pairs.

The result is the simulation: ONNX Runtime runs it as is, and every backend's artifact is
compared with it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgekd.ir.graph import const_array, new_initializer
from edgekd.quant.placement import QuantPlan
from edgekd.quant.qparams import QParams, qparams_from_range, quantize, quantize_bias, weight_qparams

QDQ_MIN_OPSET = 13  # the first opset whose DequantizeLinear takes a per-channel axis


def _dq(
    graph: ir.Graph, before: ir.Node, q_value: ir.Value, scale: ir.Value, zp: ir.Value, axis: int | None, name: str
) -> ir.Value:
    attrs = {"axis": ir.AttrInt64("axis", axis)} if axis is not None else {}
    taken, base, k = {n.name for n in graph}, name, 1
    while name in taken:  # a bias or weight initializer shared by layers: one int32 bias per layer
        name, k = f"{base}_{k}", k + 1
    node = ir.Node("", "DequantizeLinear", [q_value, scale, zp], attributes=attrs, name=name)
    node.outputs[0].name = f"{name}_out"
    node.outputs[0].dtype = ir.DataType.FLOAT
    graph.insert_before(before, node)
    return node.outputs[0]


def _qp_initializers(graph: ir.Graph, prefix: str, qp: QParams) -> tuple[ir.Value, ir.Value]:
    return (
        new_initializer(graph, f"{prefix}_scale", np.asarray(qp.scale, np.float32)),
        new_initializer(graph, f"{prefix}_zero_point", np.asarray(qp.zero_point)),
    )


def _first_reader(graph: ir.Graph, consumers: set[str]) -> ir.Node | None:
    return next((n for n in graph if n.name in consumers), None)


def insert_activation_qdq(
    graph: ir.Graph, tensor: ir.Value, qp: QParams, consumers: tuple[tuple[str, int], ...], to_graph_output: bool
) -> bool:
    by_name = {n.name: n for n in graph}
    if not consumers and not to_graph_output:
        return False
    producer = tensor.producer()
    scale, zp = _qp_initializers(graph, tensor.name, qp)
    q = ir.Node("", "QuantizeLinear", [tensor, scale, zp], name=f"{tensor.name}_QuantizeLinear")
    q.outputs[0].name = f"{tensor.name}_quantized"
    if producer is not None:
        graph.insert_after(producer, q)
    else:  # a graph input: quantize before its first reader
        first = next(iter(graph), None)
        graph.insert_before(first, q) if first is not None else graph.append(q)
    dq = ir.Node("", "DequantizeLinear", [q.outputs[0], scale, zp], name=f"{tensor.name}_DequantizeLinear")
    dq.outputs[0].name = f"{tensor.name}_dequantized"
    dq.outputs[0].dtype = ir.DataType.FLOAT
    graph.insert_after(q, dq)
    for node_name, idx in consumers:
        by_name[node_name].replace_input_with(idx, dq.outputs[0])
    if to_graph_output and tensor.is_graph_output():
        outputs = graph.outputs
        i = next(k for k, o in enumerate(outputs) if o is tensor)
        outputs[i] = dq.outputs[0]
        original = tensor.name
        tensor.name = f"{original}_float"
        dq.outputs[0].name = original
    return True


def apply_plan(model: ir.Model, plan: QuantPlan, act_qparams: dict[str, QParams]) -> dict[str, dict]:
    """Quantizes activations and weights in place; returns the qparams written, by tensor name."""
    graph = model.graph
    values = {v.name: v for v in graph.inputs}
    for node in graph:
        values.update({o.name: o for o in node.outputs})
    written: dict[str, dict] = {}
    for name, site in plan.activations.items():
        qp = act_qparams.get(site.same_as or name)
        if qp is not None and insert_activation_qdq(graph, values[name], qp, site.consumers, site.to_graph_output):
            written[name] = qp.to_dict()

    by_name = {n.name: n for n in graph}
    for site in plan.weights:
        node = by_name[site.node]
        w_value = node.inputs[site.input_index]
        w = const_array(w_value)
        wq = weight_qparams(w, axis=site.axis)
        q_init = new_initializer(graph, f"{w_value.name}_quantized", quantize(w, wq))
        scale, zp = _qp_initializers(graph, w_value.name, wq)
        node.replace_input_with(
            site.input_index, _dq(graph, node, q_init, scale, zp, site.axis, f"{w_value.name}_DequantizeLinear")
        )
        written[w_value.name] = wq.to_dict()
        _quantize_bias(graph, node, wq)
    _quantize_constants(graph, plan, by_name, next(iter(act_qparams.values())).scheme if act_qparams else None)
    _guard_divisors(graph)
    for name in [n for n, v in graph.initializers.items() if not v.uses()]:
        graph.initializers.pop(name)
    return written


def _guard_divisors(graph: ir.Graph) -> int:
    """A Div by a quantized activation on a non-negative grid (LayerNorm's standard deviation) divides by
    at least one step: integer kernels cannot divide by the zero code (TFLite's DIV stops the model), and
    a float division by it is inf anyway. ``Clip(d, min=scale)`` changes nothing else: every other code
    is already at least one step."""
    count = 0
    for node in [n for n in graph if n.op_type == "Div" and len(n.inputs) == 2]:
        dq = node.inputs[1].producer() if node.inputs[1] is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or const_array(dq.inputs[0]) is not None:
            continue
        scale, zp = const_array(dq.inputs[1]), const_array(dq.inputs[2])
        if scale is None or zp is None or scale.size != 1 or int(zp) != int(np.iinfo(zp.dtype).min):
            continue
        step = new_initializer(graph, f"{dq.name}_one_step", np.asarray(scale, np.float32).reshape(()))
        clip = ir.Node("", "Clip", [node.inputs[1], step], name=f"{node.name}_nonzero_divisor")
        clip.outputs[0].name = f"{node.name}_nonzero_divisor"
        clip.outputs[0].dtype, clip.outputs[0].shape = node.inputs[1].dtype, node.inputs[1].shape
        graph.insert_before(node, clip)
        node.replace_input_with(1, clip.outputs[0])
        count += 1
    return count


def _quantize_constants(graph: ir.Graph, plan: QuantPlan, by_name: dict[str, ir.Node], scheme) -> None:
    """Each constant operand of the plan → DequantizeLinear of its int8 values, per tensor on the
    activation scheme over the constant's own range (so a scalar lands exactly on a code)."""
    if scheme is None:
        return
    for k, site in enumerate(plan.constants):
        node = by_name[site.node]
        value = node.inputs[site.input_index]
        c = const_array(value)
        qp = qparams_from_range(float(c.min()), float(c.max()), scheme)
        q_init = new_initializer(graph, f"{value.name}_operand{k}_quantized", quantize(c, qp))
        scale, zp = _qp_initializers(graph, f"{value.name}_operand{k}", qp)
        node.replace_input_with(
            site.input_index, _dq(graph, node, q_init, scale, zp, None, f"{value.name}_operand{k}_DequantizeLinear")
        )


def _input_scale(node: ir.Node) -> float | None:
    """The scale of the node's data input when that input comes from a DequantizeLinear."""
    dq = node.inputs[0].producer() if node.inputs[0] is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    s = const_array(dq.inputs[1])
    return float(s) if s is not None and s.ndim == 0 else None


def _quantize_bias(graph: ir.Graph, node: ir.Node, wq: QParams) -> None:
    """int32 bias with scale = input scale × weight scale, when the layer's input is quantized."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
        return
    s_in = _input_scale(node)
    bias = const_array(node.inputs[2])
    if s_in is None or bias is None or bias.ndim != 1:
        return
    q_bias, b_scale = quantize_bias(bias, s_in, np.asarray(wq.scale, np.float32))
    b_name = node.inputs[2].name
    q_init = new_initializer(graph, f"{b_name}_quantized", q_bias.astype(np.int32))
    scale = new_initializer(graph, f"{b_name}_scale", b_scale.astype(np.float32))
    zp = new_initializer(graph, f"{b_name}_zero_point", np.zeros_like(q_bias, dtype=np.int32))
    axis = 0 if b_scale.ndim == 1 and b_scale.size > 1 else None
    node.replace_input_with(2, _dq(graph, node, q_init, scale, zp, axis, f"{b_name}_DequantizeLinear"))

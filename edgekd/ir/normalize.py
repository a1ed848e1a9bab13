"""Rewrites that bring graphs from other exporters to the forms edgekd's backends and quantizer know.

Each function rewrites every match in place and returns how many it rewrote:

* ``sum_to_add``: ``Sum(a, b, ...)`` (Caffe2 residual joins) → a chain of ``Add``;
* ``div_by_constant``: ``x / c`` → ``x * (1/c)`` for float constants;
* ``lower_batchnorm``: a BatchNormalization no Conv/Gemm absorbed → ``x * s + t`` per channel;
* ``merge_affine_chains``: consecutive ``Mul``/``Add``/``Sub`` by constants → one ``Mul`` and one ``Add``;
* ``fold_affine_into_conv``: ``Conv → Mul(c) → Add(d)`` with per-channel constants → one Conv;
* ``fold_affine_into_matmul``: ``Mul(c) → Add(d) → MatMul(W) → Add(b)`` with per-feature constants → one MatMul
  and its bias Add (a written-out LayerNorm's scale and shift moved into the projection it feeds);
* ``reduce_mean_to_global_pool``: a mean over every spatial axis → GlobalAveragePool (+ Flatten);
* ``channel_shuffle_to_gather``: ShuffleNet's Reshape → Transpose → Reshape → one Gather of channels;
* ``square_to_mul``: ``Pow(x, 2)`` → ``Mul(x, x)``;
* ``div_by_sqrt``: ``a / sqrt(v)`` → ``a * (1 / sqrt(v))``;
* ``unflatten_softmax``: an opset-11 Softmax over the last axis, converted through Flatten/Reshape → one Softmax;
* ``decompose_layernorm``: LayerNormalization → its primitives, for targets without it;
* ``fuse_layernorm``: the primitives torch writes below opset 17 → LayerNormalization, for targets with it;
* ``integer_input_to_float``: an image input of uint8/int8 pixels that reaches float only through ``Cast``, directly
  or after ops that only move values → a float input of the same values (exact: pixels are small integers), so
  every backend and the quantizer see float;
* ``float16_to_float32``: a model exported in half precision (``model.half()``) → the same graph in float32
  (every float16 value widened exactly), the precision edgekd calibrates and quantizes from.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgekd.ir.graph import bypass, const_array, new_initializer, sole_consumer
from edgekd.ir.patterns import is_layernorm

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def _replace_output(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Readers of ``old`` (and a graph output) read ``new`` instead; ``new`` takes the graph output's name."""
    was_output = old.is_graph_output()
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    if was_output:
        name = old.name
        old.name = f"{name}_replaced"
        new.name = name


def _binary(graph: ir.Graph, op: str, a: ir.Value, b: ir.Value, name: str, after: ir.Node) -> ir.Node:
    node = ir.Node("", op, [a, b], name=name)
    node.outputs[0].name = f"{name}_out"
    node.outputs[0].dtype = a.dtype
    node.outputs[0].shape = a.shape
    graph.insert_after(after, node)
    return node


def sum_to_add(graph: ir.Graph) -> int:
    count = 0
    for node in [n for n in graph if n.op_type == "Sum" and n.domain in ("", "ai.onnx")]:
        inputs = [v for v in node.inputs if v is not None]
        if len(inputs) < 2:
            continue
        acc, at = inputs[0], node
        for k, v in enumerate(inputs[1:]):
            add = _binary(graph, "Add", acc, v, f"{node.name}_add{k}", at)
            acc, at = add.outputs[0], add
        acc.shape, acc.dtype = node.outputs[0].shape, node.outputs[0].dtype
        _replace_output(graph, node.outputs[0], acc)
        graph.remove(node, safe=True)
        count += 1
    return count


def div_by_constant(graph: ir.Graph) -> int:
    count = 0
    for node in [n for n in graph if n.op_type == "Div" and n.domain in ("", "ai.onnx")]:
        x, c = node.inputs[0], const_array(node.inputs[1])
        if c is None or const_array(x) is not None or not np.issubdtype(c.dtype, np.floating) or np.any(c == 0):
            continue
        inv = new_initializer(graph, f"{node.name or 'div'}_reciprocal", (1.0 / c.astype(np.float64)).astype(c.dtype))
        mul = _binary(graph, "Mul", x, inv, f"{node.name or 'div'}_as_mul", node)
        mul.outputs[0].shape, mul.outputs[0].dtype = node.outputs[0].shape, node.outputs[0].dtype
        _replace_output(graph, node.outputs[0], mul.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def _channel_shape(rank: int, channels: int) -> tuple[int, ...]:
    return (channels,) + (1,) * (rank - 2)


def lower_batchnorm(graph: ir.Graph) -> int:
    """Inference BatchNormalization → Mul + Add (after the Conv/Gemm folds had their chance)."""
    count = 0
    for bn in [n for n in graph if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]:
        x = bn.inputs[0]
        params = [const_array(v) for v in bn.inputs[1:5]]
        used_extra = any(o.uses() or o.is_graph_output() for o in bn.outputs[1:])
        if (
            any(p is None for p in params)
            or used_extra
            or bn.attributes.get_int("training_mode", 0)
            or x.shape is None
            or len(x.shape) < 2
        ):
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
        shift = beta - mean * scale
        shape = _channel_shape(len(x.shape), scale.size)
        dtype = params[0].dtype
        base = bn.name or bn.outputs[0].name
        s = new_initializer(graph, f"{base}_scale", scale.reshape(shape).astype(dtype))
        t = new_initializer(graph, f"{base}_shift", shift.reshape(shape).astype(dtype))
        mul = _binary(graph, "Mul", x, s, f"{base}_mul", bn)
        add = _binary(graph, "Add", mul.outputs[0], t, f"{base}_add", mul)
        add.outputs[0].shape, add.outputs[0].dtype = bn.outputs[0].shape, bn.outputs[0].dtype
        _replace_output(graph, bn.outputs[0], add.outputs[0])
        graph.remove(bn, safe=True)
        count += 1
    return count


def affine_step(node: ir.Node) -> tuple[ir.Value, str, np.ndarray] | None:
    """(data input, 'mul'|'add'|'sub', constant) when ``node`` is Mul/Add/Sub of a data value by a
    float constant whose broadcast does not grow the data."""
    if node.op_type not in ("Mul", "Add", "Sub") or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    ca, cb = const_array(a), const_array(b)
    if (ca is None) == (cb is None):
        return None
    if node.op_type == "Sub" and cb is None:
        return None  # c - x is not x * s + t with the same sign structure we track
    x, c = (b, ca) if cb is None else (a, cb)
    if x.shape is None or not x.shape.is_static() or not np.issubdtype(c.dtype, np.floating) or c.ndim > len(x.shape):
        return None
    dims = list(x.shape)
    padded = (1,) * (len(dims) - c.ndim) + c.shape
    if any(p not in (1, d) for p, d in zip(padded, dims)):
        return None
    return x, node.op_type.lower(), c.reshape(padded)


def merge_affine_chains(graph: ir.Graph) -> int:
    """Runs of ``* c`` / ``+ c`` / ``- c`` on one value → ``x * scale + shift`` (two nodes at most)."""
    count = 0
    changed = True
    while changed:
        changed = False
        for start in list(graph):
            step = affine_step(start)
            if step is None:
                continue
            x, chain = step[0], [start]
            while (
                (nxt := sole_consumer(chain[-1].outputs[0])) is not None
                and (s := affine_step(nxt)) is not None
                and s[0] is chain[-1].outputs[0]
            ):
                chain.append(nxt)
            if len(chain) < 2 or (len(chain) == 2 and chain[0].op_type == "Mul" and chain[1].op_type != "Mul"):
                continue  # already x * s + t
            scale, shift = np.ones(1, np.float64), np.zeros(1, np.float64)
            for node in chain:
                _, kind, c = affine_step(node)
                c = c.astype(np.float64)
                if kind == "mul":
                    scale, shift = scale * c, shift * c
                else:
                    shift = shift + (c if kind == "add" else -c)
            last = chain[-1].outputs[0]
            dtype = last.dtype.numpy() if last.dtype is not None else np.float32
            base, at, out = chain[0].name or last.name, chain[-1], x
            if np.any(scale != 1):
                mul = _binary(
                    graph,
                    "Mul",
                    out,
                    new_initializer(graph, f"{base}_scale", scale.astype(dtype)),
                    f"{base}_merged_mul",
                    at,
                )
                out, at = mul.outputs[0], mul
            if np.any(shift != 0) or out is x:
                add = _binary(
                    graph,
                    "Add",
                    out,
                    new_initializer(graph, f"{base}_shift", shift.astype(dtype)),
                    f"{base}_merged_add",
                    at,
                )
                out = add.outputs[0]
            out.shape, out.dtype = last.shape, last.dtype
            _replace_output(graph, last, out)
            for node in reversed(chain):
                graph.remove(node, safe=True)
            count += 1
            changed = True
            break  # the node list changed: start over
    return count


def per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """The per-output-channel vector of a constant that varies along axis 1 only, else None."""
    padded = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if padded.shape[0] != 1 or any(d != 1 for d in padded.shape[2:]) or padded.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).astype(np.float64)


def fold_affine_into_conv(graph: ir.Graph) -> int:
    """``Conv → * c`` and ``Conv → + c`` with per-channel constants become the Conv's weights and bias."""
    count = 0
    for conv in [n for n in graph if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]:
        while (
            (nxt := sole_consumer(conv.outputs[0])) is not None
            and (step := affine_step(nxt)) is not None
            and step[0] is conv.outputs[0]
        ):
            w = const_array(conv.inputs[1])
            b_in = conv.inputs[2] if len(conv.inputs) > 2 else None
            b = const_array(b_in) if b_in is not None else (np.zeros(w.shape[0], w.dtype) if w is not None else None)
            vec = per_channel(step[2], len(conv.outputs[0].shape), w.shape[0]) if w is not None else None
            if w is None or b is None or vec is None:
                break
            b = b.astype(np.float64)
            if step[1] == "mul":
                w = w.astype(np.float64) * vec.reshape((-1,) + (1,) * (w.ndim - 1))
                b = b * vec
            else:
                b = b + (vec if step[1] == "add" else -vec)
            base = conv.name or conv.outputs[0].name
            dtype = const_array(conv.inputs[1]).dtype
            conv.replace_input_with(1, new_initializer(graph, f"{base}_weight_affine", w.astype(dtype)))
            if len(conv.inputs) < 3:
                conv.resize_inputs(3)
            conv.replace_input_with(2, new_initializer(graph, f"{base}_bias_affine", b.astype(dtype)))
            out = nxt.outputs[0]
            _replace_output(graph, out, conv.outputs[0])
            graph.remove(nxt, safe=True)
            count += 1
    return count


def _last_axis(c: np.ndarray, features: int) -> np.ndarray | None:
    """The per-feature vector of a constant with one value per feature along the last axis, else None (a
    scalar too: GELU's ``· 0.5`` before a projection is part of the pattern a backend lowers whole)."""
    if c.ndim == 0 or c.shape[-1] != features or any(d != 1 for d in c.shape[:-1]):
        return None
    return c.reshape(-1).astype(np.float64)


def _linear_weight(node: ir.Node, x: ir.Value) -> np.ndarray | None:
    """W of ``x @ W`` when ``node`` is a MatMul reading ``x`` as its data input and a constant 2-D weight."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.inputs[0] is not x:
        return None
    w = const_array(node.inputs[1])
    return w if w is not None and w.ndim == 2 and np.issubdtype(w.dtype, np.floating) else None


def _bias_add(matmul: ir.Node) -> tuple[ir.Node, int] | None:
    """The ``+ b`` (b per output feature) that follows ``matmul`` as its only reader, and b's input index."""
    add = sole_consumer(matmul.outputs[0])
    step = affine_step(add) if add is not None else None
    if step is None or step[1] != "add" or step[0] is not matmul.outputs[0]:
        return None
    return add, 0 if const_array(add.inputs[0]) is not None else 1


def fold_affine_into_matmul(graph: ir.Graph) -> int:
    """``x * c → @ W`` and ``x + d → @ W + b`` with per-feature constants (a LayerNorm's scale and shift,
    written out) become ``x @ (c·W)`` and ``x @ W + (b + d·W)``, when every reader of the affine step is
    such a MatMul: one element-wise op less, so one int8 rounding less on targets that quantize each op's
    output (a ViT's LayerNorm before its attention and MLP projections). Measured (docs/canonicalize.md):
    rpi4 +0.3 dB on a ViT, +0.4 dB on a ConvNeXt; Ascend ±0.0 and -0.3 dB, where the scale folded into the
    weights widens some per-channel weight grids."""
    count = 0
    changed = True
    while changed:  # a shift folded first leaves its scale reading into the MatMuls: the next round takes it
        changed = False
        for node in list(graph):
            found = _folds_into_readers(node)
            if found is None:
                continue
            x, folds = found
            for reader, weight, bias in folds:
                base = reader.name or reader.outputs[0].name
                if weight is not None:
                    reader.replace_input_with(1, new_initializer(graph, f"{base}_weight_affine", weight))
                if bias is not None:
                    add, idx, array = bias
                    add.replace_input_with(idx, new_initializer(graph, f"{base}_bias_affine", array))
                reader.replace_input_with(0, x)
            graph.remove(node, safe=True)
            count += 1
            changed = True
    return count


def _folds_into_readers(node: ir.Node) -> tuple[ir.Value, list[tuple[ir.Node, np.ndarray | None, tuple | None]]] | None:
    """``node``'s data input and, per MatMul reading ``node`` (an affine step): (the MatMul, its new weight,
    (bias Add, input index, new bias)); None when one reader cannot take the step."""
    step = affine_step(node)
    out = node.outputs[0] if step is not None else None
    if out is None or out.is_graph_output() or not out.uses() or out.shape is None:
        return None
    x, kind, c = step
    features = out.shape[-1]
    vec = _last_axis(c, features) if isinstance(features, int) else None
    if vec is None:
        return None
    folds = []
    for reader in out.consumers():
        w = _linear_weight(reader, out)
        if w is None or w.shape[0] != features:
            return None
        if kind == "mul":
            folds.append((reader, (vec[:, None] * w.astype(np.float64)).astype(w.dtype), None))
            continue
        bias = _bias_add(reader)
        b = const_array(bias[0].inputs[bias[1]]) if bias is not None else None
        b_vec = _last_axis(b, w.shape[1]) if b is not None and b.ndim >= 1 else None
        if b_vec is None:
            return None  # a shift needs a per-feature bias to move into
        shifted = b_vec + (vec if kind == "add" else -vec) @ w.astype(np.float64)
        folds.append((reader, None, (bias[0], bias[1], shifted.astype(b.dtype).reshape(b.shape[:-1] + (-1,)))))
    return x, folds


def _reduce_axes(node: ir.Node) -> list[int] | None:
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes"))
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_array(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return None


def reduce_mean_to_global_pool(graph: ir.Graph) -> int:
    """``x.mean((2, 3))`` as exporters write global pooling → GlobalAveragePool (keepdims=0: + Flatten)."""
    count = 0
    for node in [n for n in graph if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")]:
        x = node.inputs[0]
        axes = _reduce_axes(node)
        if x.shape is None or len(x.shape) < 3 or axes is None or x.dtype not in (None, ir.DataType.FLOAT):
            continue
        rank = len(x.shape)
        if sorted(a % rank for a in axes) != list(range(2, rank)):
            continue
        base = node.name or node.outputs[0].name
        pool = ir.Node("", "GlobalAveragePool", [x], name=f"{base}_global_pool")
        pool.outputs[0].name, pool.outputs[0].dtype = f"{base}_pooled", x.dtype
        pool.outputs[0].shape = ir.Shape(list(x.shape)[:2] + [1] * (rank - 2))
        graph.insert_after(node, pool)
        out = pool.outputs[0]
        if not node.attributes.get_int("keepdims", 1):
            flat = ir.Node("", "Flatten", [out], attributes={"axis": ir.AttrInt64("axis", 1)}, name=f"{base}_flatten")
            flat.outputs[0].name, flat.outputs[0].dtype = f"{base}_flat", x.dtype
            flat.outputs[0].shape = node.outputs[0].shape
            graph.insert_after(pool, flat)
            out = flat.outputs[0]
        _replace_output(graph, node.outputs[0], out)
        graph.remove(node, safe=True)
        count += 1
    return count


def _static_shape(v: ir.Value | None) -> list[int] | None:
    if v is None or v.shape is None or not v.shape.is_static():
        return None
    return [int(d) for d in v.shape]


def channel_shuffle_to_gather(graph: ir.Graph) -> int:
    """ShuffleNet's channel shuffle, ``x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W)``,
    → one Gather of the channels in their shuffled order. The same values, but an op every backend
    lowers without leaving the channels-last layout (TFLite: a GATHER on the channel axis instead of
    two layout transposes, which the converter reorders around the Q/DQ of the tensor before them)."""
    count = 0
    for first in [n for n in graph if n.op_type == "Reshape" and n.domain in ("", "ai.onnx")]:
        x, mid = first.inputs[0], first.outputs[0]
        shape, split = _static_shape(x), _static_shape(mid)
        trans = sole_consumer(mid)
        if (
            shape is None
            or split is None
            or len(shape) != 4
            or len(split) != 5
            or trans is None
            or trans.op_type != "Transpose"
            or list(trans.attributes.get_ints("perm", [])) != [0, 2, 1, 3, 4]
        ):
            continue
        n, c, h, w = shape
        g = split[1]
        last = sole_consumer(trans.outputs[0])
        if (
            split != [n, g, c // g, h, w]
            or g * (c // g) != c
            or last is None
            or last.op_type != "Reshape"
            or _static_shape(last.outputs[0]) != shape
        ):
            continue
        base = first.name or mid.name
        perm = np.arange(c).reshape(g, c // g).T.reshape(-1).astype(np.int64)
        gather = ir.Node(
            "",
            "Gather",
            [x, new_initializer(graph, f"{base}_shuffled_channels", perm)],
            attributes={"axis": ir.AttrInt64("axis", 1)},
            name=f"{base}_channel_shuffle",
        )
        gather.outputs[0].name = f"{base}_shuffled"
        gather.outputs[0].dtype, gather.outputs[0].shape = last.outputs[0].dtype, last.outputs[0].shape
        graph.insert_after(last, gather)
        _replace_output(graph, last.outputs[0], gather.outputs[0])
        for node in (last, trans, first):
            graph.remove(node, safe=True)
        count += 1
    return count


class _NodeChain:
    """Nodes inserted one after another behind ``at``, each named ``{base}_{suffix}``; a reduction runs
    over ``axes`` of ``x`` (as an input from opset 18, an attribute before)."""

    def __init__(self, graph: ir.Graph, at: ir.Node, base: str, x: ir.Value, axes: list[int], opset: int):
        self.graph, self.at, self.base, self.x, self.axes, self.opset = graph, at, base, x, axes, opset

    def add(self, op: str, inputs: list[ir.Value], suffix: str, reduce: bool = False) -> ir.Value:
        attrs = {}
        if reduce and self.opset >= 18:
            inputs = inputs + [new_initializer(self.graph, f"{self.base}_axes", np.asarray(self.axes, np.int64))]
        elif reduce:
            attrs["axes"] = ir.AttrInt64s("axes", self.axes)
        node = ir.Node("", op, inputs, attributes=attrs, name=f"{self.base}_{suffix}")
        node.outputs[0].name, node.outputs[0].dtype = f"{self.base}_{suffix}", self.x.dtype
        node.outputs[0].shape = (
            ir.Shape([1 if i in self.axes else d for i, d in enumerate(self.x.shape)]) if reduce else inputs[0].shape
        )
        self.graph.insert_after(self.at, node)
        self.at = node
        return node.outputs[0]


def _all_equal(value: ir.Value, number: float) -> bool:
    while value.producer() is not None and value.producer().op_type == "Identity":  # torch's shared initializers
        value = value.producer().inputs[0]
    array = const_array(value)
    return array is not None and bool(np.all(array == number))


def decompose_layernorm(graph: ir.Graph, opset: int) -> int:
    """LayerNormalization (opset 17) → ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add, for
    targets whose opset range or op list lacks it. ``(x - μ)²`` is a Mul, not a Pow: every target that
    lacks the fused op takes a Mul (Ascend's op table has no Pow). Nodes whose Mean / InvStdDev outputs
    are read stay."""
    count = 0
    for ln in [n for n in graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]:
        x, scale = ln.inputs[0], ln.inputs[1]
        bias = ln.inputs[2] if len(ln.inputs) > 2 else None
        if x.shape is None or any(o.uses() or o.is_graph_output() for o in ln.outputs[1:]):
            continue
        rank = len(x.shape)
        axes = list(range(ln.attributes.get_int("axis", -1) % rank, rank))
        base = ln.name or ln.outputs[0].name
        eps = new_initializer(
            graph, f"{base}_epsilon", np.asarray(ln.attributes.get_float("epsilon", 1e-5), np.float32)
        )
        add = _NodeChain(graph, ln, base, x, axes, opset).add
        centred = add("Sub", [x, add("ReduceMean", [x], "mean", reduce=True)], "centred")
        var = add("ReduceMean", [add("Mul", [centred, centred], "square")], "variance", reduce=True)
        out = add("Div", [centred, add("Sqrt", [add("Add", [var, eps], "variance_eps")], "std")], "normalized")
        # An identity scale or bias (a LayerNorm as initialized) writes no Mul / Add: each would be one more
        # int8 grid for the same values, which a converter that drops it finds unequal where a Gather or
        # Reshape must keep its input's grid.
        if not _all_equal(scale, 1.0):
            out = add("Mul", [out, scale], "scaled")
        if bias is not None and not _all_equal(bias, 0.0):
            out = add("Add", [out, bias], "shifted")
        out.shape = ln.outputs[0].shape
        _replace_output(graph, ln.outputs[0], out)
        graph.remove(ln, safe=True)
        count += 1
    return count


def square_to_mul(graph: ir.Graph) -> int:
    """``Pow(x, 2)`` (LayerNorm as exported below opset 17) → ``Mul(x, x)``: the same value, an op every
    target runs (Ascend's op table has no Pow; TFLite's int8 MUL computes it)."""
    count = 0
    for node in [n for n in graph if n.op_type == "Pow" and n.domain in ("", "ai.onnx")]:
        e = const_array(node.inputs[1])
        if e is None or e.size != 1 or float(e.reshape(-1)[0]) != 2.0 or const_array(node.inputs[0]) is not None:
            continue
        x = node.inputs[0]
        mul = _binary(graph, "Mul", x, x, f"{node.name or 'pow'}_square", node)
        mul.outputs[0].shape, mul.outputs[0].dtype = node.outputs[0].shape, node.outputs[0].dtype
        _replace_output(graph, node.outputs[0], mul.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def unflatten_softmax(graph: ir.Graph) -> int:
    """``Flatten(axis=r-1) → Softmax(-1) → Reshape(back)`` → ``Softmax(axis=-1)``: how ONNX's version
    converter keeps an opset-11 Softmax over the last axis (opset 11 coerced to 2-D). The same values,
    without the 2-D detour that hides a detector's DFL softmax from the decode it belongs to."""
    count = 0
    for flat in [n for n in graph if n.op_type == "Flatten" and n.domain in ("", "ai.onnx")]:
        shape = _static_shape(flat.inputs[0])
        soft = sole_consumer(flat.outputs[0])
        if shape is None or soft is None or soft.op_type not in ("Softmax", "LogSoftmax"):
            continue
        back = sole_consumer(soft.outputs[0])
        axis = flat.attributes.get_int("axis", 1) % max(len(shape), 1)
        if (
            axis != len(shape) - 1
            or soft.attributes.get_int("axis", -1) not in (-1, 1)
            or back is None
            or back.op_type != "Reshape"
            or _static_shape(back.outputs[0]) != shape
        ):
            continue
        soft.replace_input_with(0, flat.inputs[0])
        soft.attributes["axis"] = ir.AttrInt64("axis", -1)
        soft.outputs[0].shape = ir.Shape(shape)
        _replace_output(graph, back.outputs[0], soft.outputs[0])
        graph.remove([back, flat], safe=True)
        count += 1
    return count


def div_by_sqrt(graph: ir.Graph) -> int:
    """``a / sqrt(v)`` (a LayerNorm's normalization, written out) → ``a * (1 / sqrt(v))``: the same value,
    with ``1 / sqrt(v)`` the one op integer runtimes have for it (TFLite's RSQRT, a composite the
    quantizer puts no pair inside). Wherever pairs sit inside the LayerNorm (placements outputs, qlinear,
    quantizable-inputs), a token whose variance rounds to zero then gets the largest reciprocal the grid
    holds, the narrowest calibrated token's, not a division by one step of the square root's grid (which
    TFLite's int8 DIV does not even define at zero). Measured on the coverage ViT, whose class token has
    a variance of 0.0037 at its first LayerNorm, on a grid of step 0.0043: that LayerNorm wrote -13
    where float has -1.1; the rpi4 simulation was 9.6 dB from float, 24 dB with the reciprocal; at
    opset 13 (the exporter's LayerNorm) on onnx-cpu, 76.6 % top-1 agreement and 11.8 dB, 96.0 % and
    25.4 dB with it. The cost: the reciprocal's grid is coarsest for the widest token, where the square
    root's was for the narrowest (the coverage ConvNeXt at opset 13: onnx-cpu 31.8 → 29.9 dB,
    openvino-cpu 33.7 → 30.6 dB, rpi4 28.6 → 27.7 dB, top-1 agreement 98.4 → 98.0 %, 97.8 → 98.6 %,
    97.8 → 98.6 %)."""
    count = 0
    for node in [n for n in graph if n.op_type == "Div" and n.domain in ("", "ai.onnx")]:
        a, root = node.inputs[0], node.inputs[1]
        sqrt = root.producer() if root is not None else None
        if sqrt is None or sqrt.op_type != "Sqrt" or const_array(a) is not None:
            continue
        base = node.name or node.outputs[0].name
        dtype = root.dtype.numpy() if root.dtype is not None else np.float32
        one = new_initializer(graph, f"{base}_one", np.ones((), dtype))
        inverse = ir.Node("", "Div", [one, root], name=f"{base}_reciprocal_sqrt")
        inverse.outputs[0].name = f"{base}_reciprocal_sqrt"
        inverse.outputs[0].dtype, inverse.outputs[0].shape = root.dtype, root.shape
        graph.insert_before(node, inverse)
        mul = _binary(graph, "Mul", a, inverse.outputs[0], f"{base}_as_mul", node)
        mul.outputs[0].shape, mul.outputs[0].dtype = node.outputs[0].shape, node.outputs[0].dtype
        _replace_output(graph, node.outputs[0], mul.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


INTEGER_PIXELS = (ir.DataType.UINT8, ir.DataType.INT8)


# Ops that only move values: integer pixels pass through them unchanged on their way to a Cast.
PIXEL_MOVES = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def integer_reader(value: ir.Value) -> ir.Node | None:
    """The first node that computes on the integer ``value`` — anything but an op that only moves it (a
    channels-last Transpose, a Reshape) or a Cast to float — or None when every path reaches such a Cast."""
    for use in value.uses():
        node = use.node
        if node.op_type == "Cast" and node.attributes.get_int("to") == ir.DataType.FLOAT:
            continue
        if node.op_type not in PIXEL_MOVES or use.idx != 0 or node.outputs[0].is_graph_output():
            return node
        if (inner := integer_reader(node.outputs[0])) is not None:
            return inner
    return None


def integer_input_to_float(graph: ir.Graph) -> int:
    """Image inputs of uint8/int8 pixels that reach float only through Casts, directly or after ops that only
    move values (TF exports: NHWC uint8 → Transpose → Cast), become float inputs of the same values; the Casts
    go. Exact: pixels are small integers."""
    count = 0
    for value in graph.inputs:
        if value.dtype not in INTEGER_PIXELS or not value.uses() or integer_reader(value) is not None:
            continue
        stack = [value]
        while stack:
            v = stack.pop()
            v.dtype = ir.DataType.FLOAT
            for node in [use.node for use in v.uses()]:
                if node.op_type == "Cast":
                    bypass(graph, node, v)
                else:
                    stack.append(node.outputs[0])
        count += 1
    return count


def float16_to_float32(graph: ir.Graph) -> int:
    """Returns how many float16 tensors (initializers, Constant values) were widened; inputs, outputs and every
    intermediate value follow."""
    count = 0
    for value in list(graph.initializers.values()):
        if value.dtype == ir.DataType.FLOAT16 and value.const_value is not None:
            value.const_value = ir.tensor(value.const_value.numpy().astype(np.float32), name=value.name)
            value.dtype = ir.DataType.FLOAT
            count += 1
    for node in graph:
        if node.op_type == "Constant" and "value" in node.attributes:
            tensor = node.attributes["value"].as_tensor()
            if tensor.dtype == ir.DataType.FLOAT16:
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(tensor.numpy().astype(np.float32)))
                count += 1
        if node.op_type == "Cast" and node.attributes.get_int("to") == ir.DataType.FLOAT16:
            node.attributes["to"] = ir.AttrInt64("to", ir.DataType.FLOAT)
        for v in node.outputs:
            if v.dtype == ir.DataType.FLOAT16:
                v.dtype = ir.DataType.FLOAT
    for v in [*graph.inputs, *graph.outputs]:
        if v.dtype == ir.DataType.FLOAT16:
            v.dtype = ir.DataType.FLOAT
            count += v.is_graph_input()
    return count


def _trailing_axes(node: ir.Node, rank: int) -> int | None:
    """The first axis of a keepdims mean over the trailing axes of a rank-``rank`` tensor, else None."""
    axes = _reduce_axes(node)
    if axes is None or not node.attributes.get_int("keepdims", 1):
        return None
    axes = sorted(a % rank for a in axes)
    return axes[0] if axes == list(range(axes[0], rank)) else None


def _affine_constant(node: ir.Node | None, op: str, data: ir.Value, shape: tuple[int, ...]) -> np.ndarray | None:
    """The constant ``node`` (an ``op`` of ``data`` by it) applies, as an array of the normalized ``shape``."""
    if node is None or node.op_type != op or len(node.inputs) != 2 or data not in node.inputs:
        return None
    c = const_array(node.inputs[1] if node.inputs[0] is data else node.inputs[0])
    if c is None or c.ndim > len(shape) and any(d != 1 for d in c.shape[: c.ndim - len(shape)]):
        return None
    c = c.reshape(c.shape[max(0, c.ndim - len(shape)) :])
    try:
        return np.broadcast_to(c, shape).astype(np.float32)
    except ValueError:
        return None


def _squares(node: ir.Node, v: ir.Value) -> bool:
    """``node`` computes ``v²``: ``Mul(v, v)`` or ``Pow(v, 2)``."""
    if node.op_type == "Mul":
        return len(node.inputs) == 2 and node.inputs[0] is v and node.inputs[1] is v
    exponent = const_array(node.inputs[1]) if node.op_type == "Pow" and node.inputs[0] is v else None
    return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0


def fuse_layernorm(graph: ir.Graph) -> int:
    """``(x - mean(x)) / sqrt(mean((x - mean(x))²) + ε) * γ + β`` over trailing axes, as torch exports
    LayerNorm below opset 17, → one LayerNormalization (the model must be at opset 17 or later). The
    quantizer then puts no grid inside it, as it does not inside the fused op: the coverage ViT exported at
    opset 13 for onnx-cpu had Q/DQ on its statistics and kept 22 dB against float where the opset-17
    export, with the fused op, kept 28 dB."""
    count = 0
    for div in [n for n in graph if n.op_type == "Div" and is_layernorm(n)]:
        sub, sqrt = div.inputs[0].producer(), div.inputs[1].producer()
        x, add = sub.inputs[0], sqrt.inputs[0].producer()
        mean, var = sub.inputs[1].producer(), add.inputs[0].producer()
        eps = const_array(add.inputs[1])
        rank = len(x.shape) if x.shape is not None else 0
        axis = _trailing_axes(mean, rank) if rank and mean.inputs[0] is x else None
        if axis is None or _trailing_axes(var, rank) != axis or eps is None or eps.size != 1:
            continue
        if not _squares(var.inputs[0].producer(), sub.outputs[0]):
            continue
        shape = tuple(x.shape[axis:])
        if not all(isinstance(d, int) for d in shape):
            continue
        last, scale, bias = div, np.ones(shape, np.float32), None
        gamma = _affine_constant(nxt := sole_consumer(last.outputs[0]), "Mul", last.outputs[0], shape)
        if gamma is not None:
            last, scale = nxt, gamma
            bias = _affine_constant(nxt := sole_consumer(last.outputs[0]), "Add", last.outputs[0], shape)
            if bias is not None:
                last = nxt
        base = div.name or div.outputs[0].name
        inputs = [x, new_initializer(graph, f"{base}_ln_scale", scale)]
        if bias is not None:
            inputs.append(new_initializer(graph, f"{base}_ln_bias", bias))
        ln = ir.Node(
            "",
            "LayerNormalization",
            inputs,
            attributes={
                "axis": ir.AttrInt64("axis", axis),
                "epsilon": ir.AttrFloat32("epsilon", float(eps.reshape(-1)[0])),
            },
            name=f"{base}_layernorm",
        )
        ln.outputs[0].name = f"{base}_layernorm"
        ln.outputs[0].dtype, ln.outputs[0].shape = last.outputs[0].dtype, last.outputs[0].shape
        graph.insert_after(last, ln)
        _replace_output(graph, last.outputs[0], ln.outputs[0])
        count += 1
    return count

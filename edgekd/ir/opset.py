"""Moving a model into a target's opset range with ONNX's version converter, and around its gaps: ops newer
than the target written out in ONNX's own definitions of them, ops whose later versions a node does not use
moved down as they are, flags the converter's adapters keep where the older op has none."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import version_converter

from edgekd.errors import OpsetConversionError


def onnx_opset(model: onnx.ModelProto | onnx.FunctionProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def target_opset(current: int, opset_range: tuple[int, int], preferred: int) -> int | None:
    """The opset to convert to: None when ``current`` is inside the range; below it, the target's preferred
    opset (or the range's floor when that is higher); above it, the range's top (the fewest steps down,
    which is where the converter has the fewest adapters)."""
    lo, hi = opset_range
    if lo <= current <= hi:
        return None
    return max(lo, min(preferred, hi)) if current < lo else hi


def relabel_safe(model: onnx.ModelProto, opset: int) -> bool:
    """Whether every default-domain op of ``model`` has the same definition at ``opset`` as at the
    model's own opset, so going down is only a new version number."""
    current = onnx_opset(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, current, "").since_version
        except onnx.defs.SchemaError:
            return False
        if since > opset:
            return False
    return True


def _failing_op(message: str, model: onnx.ModelProto) -> str | None:
    """The op type the converter named in its error, else None."""
    ops = {n.op_type for n in model.graph.node}
    named = [op for op in re.findall(r"\b([A-Z][A-Za-z0-9]+)\b", message) if op in ops]
    return named[0] if named else None


def _without_default_reduce_flags(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without ``noop_with_empty_axes=0`` on its reductions (the default, so the same function).

    Why: torch's dynamo exporter writes the flag explicitly, and onnx's opset-18 → 17 adapter for the
    reductions moves ``axes`` into an attribute but keeps the flag, which opset 17 does not define
    ("Unrecognized attribute: noop_with_empty_axes for operator ReduceMean")."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type.startswith("Reduce") and node.domain in ("", "ai.onnx"):
            for attr in [a for a in node.attribute if a.name == "noop_with_empty_axes" and a.i == 0]:
                node.attribute.remove(attr)
    return out


def _defined_at(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


def _function_body(node: onnx.NodeProto, opset: int, types: dict[str, onnx.TypeProto]) -> onnx.FunctionProto | None:
    """The function ONNX defines ``node`` by at ``opset``, for its inputs' types; None if it defines none."""
    schema = onnx.defs.get_schema(node.op_type, opset, "")
    if schema.has_context_dependent_function:
        if any(i and i not in types for i in node.input):
            return None
        empty = onnx.TypeProto()
        encoded = [(types[i] if i else empty).SerializeToString() for i in node.input]
        return onnx.FunctionProto.FromString(schema.get_context_dependent_function(node.SerializeToString(), encoded))
    return schema.function_body if schema.has_function else None


EXPANDED = "edgekd.expanded"  # the domain the expanded ops are called in until the inliner replaces them


def expand_newer_ops(model: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``model`` with each op that ``opset`` does not define yet replaced by the older ops ONNX defines it
    by (Gelu-20 → Erf or Tanh arithmetic), and how many of each; ops ONNX gives no function stay.

    Why: torch 2.14's default exporter writes opset 20 with Gelu, and the version converter has no
    adapter below an op's first version, so every GELU network was refused by targets of opset ≤ 17."""
    current = onnx_opset(model)
    newer = {
        i
        for i, n in enumerate(model.graph.node)
        if n.domain in ("", "ai.onnx") and _defined_at(n.op_type, current) and not _defined_at(n.op_type, opset)
    }
    if not newer:
        return model, {}
    import onnx.inliner

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type
        for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
        if v.type.HasField("tensor_type")
    }
    types.update({t.name: onnx.helper.make_tensor_type_proto(t.data_type, None) for t in model.graph.initializer})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    counts: dict[str, int] = {}
    for i, node in enumerate(out.graph.node):
        if i not in newer or (body := _function_body(node, current, types)) is None:
            continue
        if onnx_opset(body) != current:  # written for another opset (LayerNormalization-17's): not inlinable here
            continue
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        body.name, body.domain = f"{node.op_type}_{len(out.functions)}", EXPANDED
        out.functions.append(body)
        node.op_type, node.domain = body.name, EXPANDED
    if not counts:
        return model, {}
    out.opset_import.append(onnx.helper.make_opsetid(EXPANDED, 1))
    inlined = onnx.inliner.inline_local_functions(out)
    del inlined.opset_import[:]
    inlined.opset_import.extend(o for o in out.opset_import if o.domain != EXPANDED)
    return inlined, counts


# Ops whose later versions only added what a node may leave unused: such a node going down is the older op
# under another version number, where ONNX's converter has no adapter (Pad 18 → 17, ConstantOfShape 20 → 19,
# both in Swin as torch's dynamo exporter writes it). op → (the oldest version it is then, whether a node is one).
_OLD_TYPES = {
    onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.BOOL,
    *(getattr(onnx.TensorProto, t) for t in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")),
}  # fmt: skip
UNUSED_ADDITIONS = {
    # Pad-18 added the `axes` input, Pad-19 the `wrap` mode; Pad-13 took bfloat16.
    "Pad": (13, lambda n: len(n.input) < 4 and _attr(n, "mode", b"constant") != b"wrap"),
    # Split-18 added `num_outputs` (``_split_sizes_given`` turns it into the sizes input where the axis is known).
    "Split": (13, lambda n: _attr(n, "num_outputs", None) is None),
    # ConstantOfShape-20 and later added bfloat16, float8 and int4 values.
    "ConstantOfShape": (
        9,
        lambda n: getattr(_attr(n, "value", None), "data_type", onnx.TensorProto.FLOAT) in _OLD_TYPES,
    ),
}
SET_ASIDE = "edgekd.set_aside"  # the domain such nodes wait in while the converter moves the rest


def _attr(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _split_sizes_given(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each ``Split(num_outputs=n)`` whose axis has a known size given its sizes as an input instead (as
    Split-18 cuts: ``ceil(size / n)`` each, the last one what is left), the form every Split version takes."""
    splits = [n for n in model.graph.node if n.op_type == "Split" and _attr(n, "num_outputs", None) is not None]
    if not splits:
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.input, *inferred.graph.value_info)
    }
    dims.update({t.name: list(t.dims) for t in model.graph.initializer})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type != "Split" or (n := _attr(node, "num_outputs", None)) is None:
            continue
        shape = dims.get(node.input[0])
        size = shape[_attr(node, "axis", 0)] if shape else None
        if not size:
            continue
        chunk = -(-size // n)
        sizes = onnx.numpy_helper.from_array(
            np.array([chunk] * (n - 1) + [size - chunk * (n - 1)], np.int64), f"{node.output[0]}_split_sizes"
        )
        out.graph.initializer.append(sizes)
        del node.input[1:]
        node.input.append(sizes.name)
        node.attribute.remove(next(a for a in node.attribute if a.name == "num_outputs"))
    return out


def _converted(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """ONNX's converter on ``model``, the nodes of ``UNUSED_ADDITIONS`` kept out of its way going down (going
    up, the converter's adapters move them: Split-11's ``split`` attribute becomes Split-13's input)."""
    current = onnx_opset(model)
    down = current is not None and opset < current
    aside = onnx.ModelProto()
    aside.CopyFrom(_split_sizes_given(model) if down and opset < 18 else model)
    moved = False
    for node in aside.graph.node:
        rule = UNUSED_ADDITIONS.get(node.op_type)
        if not (down and rule and node.domain in ("", "ai.onnx") and rule[1](node)):
            continue
        if onnx.defs.get_schema(node.op_type, opset, "").since_version >= rule[0]:  # not below that version
            node.domain, moved = SET_ASIDE, True
    if moved:
        aside.opset_import.append(onnx.helper.make_opsetid(SET_ASIDE, 1))
    converted = version_converter.convert_version(aside, opset)
    for node in converted.graph.node:
        if node.domain == SET_ASIDE:
            node.domain = ""
    kept = [o for o in converted.opset_import if o.domain != SET_ASIDE]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)
    return converted


def convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` at ``opset``; fails naming the op the converter has no adapter for."""
    current = onnx_opset(model)
    if current is not None and opset < 18 <= current:
        model = _without_default_reduce_flags(model)
    if current is not None and opset < current and relabel_safe(model, opset):
        relabelled = onnx.ModelProto()
        relabelled.CopyFrom(model)
        for entry in relabelled.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = opset
        return relabelled
    try:
        converted = _converted(model, opset)
        onnx.checker.check_model(converted)
    except Exception as e:  # the converter raises RuntimeError/ValueError/checker errors with free text
        text = (str(e).splitlines() or [""])[0][:300]
        op = _failing_op(str(e), model)
        what = f"op {op}" if op else "the graph"
        raise OpsetConversionError(
            f"cannot convert the model from opset {current} to {opset}: {what} does not convert ({text})",
            f"re-export the model at opset {opset}" + (f", or replace its {op} nodes" if op else ""),
        ) from e
    return converted

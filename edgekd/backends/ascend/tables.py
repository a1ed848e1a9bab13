"""The Ascend op table: one row per ONNX node, checked against ``targets/ascend-ops.toml``.

Q/DQ nodes get no row: each pair is folded into the quantization columns of the layer it feeds,
written in AMCT's convention (scale_d / offset_d for the layer's data, scale_w / offset_w for its
weights). The facts (operator mapping, limits, layouts, the convention and their sources) live in
the data file; this module only evaluates them.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomllib

from edgekd.backends.base import Unsupported
from edgekd.errors import ConfigError
from edgekd.ir.proto_index import DEFAULT_DOMAINS, GraphIndex, default_opset, node_attrs
from edgekd.resources import data_dir

if TYPE_CHECKING:
    import onnx

    from edgekd.specs import TargetSpec

QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
STATUSES = ("supported", "constrained", "unsupported")


# --------------------------------------------------------------------------------------------- data


def ops_file(spec: "TargetSpec") -> Path:
    """The spec's ``[ascend] ops_file``, beside the spec (a user's own spec can ship its own)."""
    name = spec.raw.get("ascend", {}).get("ops_file", "ascend-ops.toml")
    for candidate in (spec.path.parent / name, data_dir("targets") / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"target {spec.name}: the Ascend operator data {name!r} is not beside {spec.path}",
        "set [ascend] ops_file to a file like targets/ascend-ops.toml",
    )


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def load_ops(spec: "TargetSpec") -> dict[str, Any]:
    path = ops_file(spec)
    return _load(path, path.stat().st_mtime)


def _attrs(node) -> dict[str, Any]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in node_attrs(node).items()}


def node_names(nodes) -> list[str]:
    """Row names: the node's name, or op_index when it has none; made unique."""
    names, seen = [], {}
    for i, n in enumerate(nodes):
        base = n.name or f"{n.op_type}_{i}"
        k = seen.get(base, 0)
        seen[base] = k + 1
        names.append(base if k == 0 else f"{base}__{k}")
    return names


# -------------------------------------------------------------------------------------- checking


def _check(c: dict[str, Any], op: str, attrs: dict[str, Any], in_shapes: list[list | None]) -> str | None:
    """The constraint's text when the node breaks it, else None (also when it cannot be checked)."""
    kind = c.get("check")
    lo, hi = c.get("range", (None, c.get("max")))
    bad: Any = None
    if kind in ("attr_range", "attr_equals", "attr_product_max"):
        value = attrs.get(c["attr"], c.get("default"))
        if value is None:
            return None
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if kind == "attr_range":
            bad = next((x for x in values if not lo <= x <= hi), None)
        elif kind == "attr_equals":
            want = c["value"] if isinstance(c["value"], list) else [c["value"]]
            bad = None if values == want else value
        else:
            area = math.prod(values)
            bad = area if area > c["max"] else None
    elif kind == "dim_range":
        idx = c["input"]
        shape = in_shapes[idx] if idx < len(in_shapes) else None
        for d in c["dims"]:
            size = shape[d] if shape is not None and -len(shape) <= d < len(shape) else None
            if isinstance(size, int) and not lo <= size <= hi:
                bad = size
                break
    else:
        raise ConfigError(
            f"unknown constraint check {kind!r} for {op}",
            "use one of attr_range, attr_equals, attr_product_max, dim_range",
        )
    if bad is None:
        return None
    return c["text"].format(op=op, attr=c.get("attr", ""), value=bad, lo=lo, hi=hi)


def node_problems(node, view_: GraphIndex, ops: dict[str, Any]) -> list[tuple[str, str]]:
    """(severity, text) for every rule of ascend-ops.toml this node breaks."""
    if node.domain not in DEFAULT_DOMAINS:
        return [
            ("error", f"{node.op_type} from domain {node.domain!r} is not an ai.onnx operator; ATC parses ai.onnx only")
        ]
    entry = ops.get("ops", {}).get(node.op_type)
    if entry is None:
        return [("error", f"{node.op_type} is not in the Ascend ONNX operator list (targets/ascend-ops.toml)")]
    problems = []
    lo_hi = entry.get("opsets")
    if lo_hi and view_.opset is not None and not lo_hi[0] <= view_.opset <= lo_hi[1]:
        problems.append(
            ("error", f"{node.op_type} at opset {view_.opset} outside its documented opsets [{lo_hi[0]}, {lo_hi[1]}]")
        )
    attrs = _attrs(node)
    in_shapes = [view_.shapes.get(name) if name else None for name in node.input]
    for c in entry.get("constraints", []):
        text = _check(c, node.op_type, attrs, in_shapes)
        if text:
            problems.append((c.get("severity", "error"), text))
    return problems


def opset_problem(proto: "onnx.ModelProto", spec: "TargetSpec") -> str | None:
    opset = default_opset(proto)
    lo, hi = spec.opset_range
    if opset is not None and not lo <= opset <= hi:
        return f"ONNX opset {opset} outside supported range [{lo}, {hi}] (ATC --framework=5)"
    return None


def unsupported(proto: "onnx.ModelProto", spec: "TargetSpec") -> list[Unsupported]:
    """Every node ATC refuses or whose documented limits it breaks, by name; and the model's opset."""
    ops = load_ops(spec)
    v = GraphIndex.with_shapes(proto)
    out = []
    problem = opset_problem(proto, spec)
    if problem:
        out.append(Unsupported("(model)", "opset", problem))
    for name, node in zip(node_names(v.nodes), v.nodes):
        if node.op_type in QDQ:
            continue
        errors = [text for severity, text in node_problems(node, v, ops) if severity == "error"]
        if errors:
            out.append(Unsupported(name, node.op_type, "; ".join(errors)))
    return out


# ----------------------------------------------------------------------------------------- table


def _scalar(a: np.ndarray | None) -> float | int | None:
    if a is None or a.size != 1:
        return None
    x = a.reshape(()).item()
    return float(x) if isinstance(x, float) else int(x)


def _qparams_key(candidates: list[str], qparams: dict[str, Any]) -> str:
    return next((c for c in candidates if c in qparams), candidates[0])


def _dequantized(name: str, v: GraphIndex):
    """The DequantizeLinear producing ``name``, if any."""
    return v.produced_by(name, "DequantizeLinear")


def _source_name(name: str, v: GraphIndex) -> str:
    """The tensor behind a DQ(Q(x)) or DQ(initializer) chain; ``name`` itself otherwise."""
    dq = _dequantized(name, v)
    if dq is None:
        return name
    q = v.produced_by(dq.input[0], "QuantizeLinear")
    return q.input[0] if q is not None else dq.input[0]


def _quantization(node, v: GraphIndex, qops: dict[str, Any], qparams: dict[str, Any]) -> dict[str, Any] | None:
    """The node's Q/DQ in AMCT terms: scale_d/offset_d (data input), scale_w/offset_w, out_scale/out_offset."""
    q: dict[str, Any] = {}
    dq = _dequantized(node.input[0], v) if node.input and node.input[0] else None
    if dq is not None:
        data = _source_name(node.input[0], v)
        zp = _scalar(v.constants.get(dq.input[2])) if len(dq.input) > 2 and dq.input[2] else None
        q.update(
            scale_d=_scalar(v.constants.get(dq.input[1])),
            offset_d=0 if zp is None else zp,
            data_tensor=_qparams_key([data, data.removesuffix("_float")], qparams),
        )
    if node.op_type in qops.get("ops", ()) and len(node.input) > 1:
        wdq = _dequantized(node.input[1], v)
        if wdq is not None and v.constants.get(wdq.input[0]) is not None:
            scale = np.atleast_1d(v.constants[wdq.input[1]]).astype(np.float64)
            zp_name = v.input(wdq, 2)
            zp = np.atleast_1d(v.constants[zp_name]) if zp_name else np.zeros(scale.shape)
            q.update(
                scale_w=[float(s) for s in scale],
                offset_w=[int(z) for z in zp],
                weight_tensor=_qparams_key(
                    [wdq.name.removesuffix("_DequantizeLinear"), wdq.input[0].removesuffix("_quantized")], qparams
                ),
            )
    quantizers = [c for c in v.readers(node.output[0]) if c.op_type == "QuantizeLinear"] if node.output else []
    if quantizers:
        oq = quantizers[0]
        q.update(
            out_scale=_scalar(v.constants.get(oq.input[1])),
            out_offset=_scalar(v.constants.get(oq.input[2])) if len(oq.input) > 2 else 0,
        )
    return q or None


def _layout(entry: dict[str, Any] | None, shape: list | None) -> str:
    rank = len(shape) if shape is not None else None
    if entry is not None and entry.get("format") == "NC1HWC0" and rank == 4:
        return "NC1HWC0"
    return "NCHW" if rank == 4 else "ND"


def _row(name: str, node, v: GraphIndex, ops: dict[str, Any], compute: str, qparams: dict[str, Any]) -> dict[str, Any]:
    entry = ops.get("ops", {}).get(node.op_type)
    qops = ops.get("quantization", {})
    problems = node_problems(node, v, ops)
    quant = _quantization(node, v, qops, qparams)
    int8 = bool(quant and "scale_w" in quant and "scale_d" in quant)
    in_names = [n for n in node.input if n]
    in_shapes = [v.shapes.get(n) for n in in_names]
    if int8:
        channels = in_shapes[0][1] if in_shapes and in_shapes[0] and len(in_shapes[0]) > 1 else None
        if node.op_type in ("Gemm", "MatMul") and in_shapes and in_shapes[0]:
            channels = in_shapes[0][-1]
        if isinstance(channels, int) and channels < qops.get("min_input_channels", 0):
            problems.append(("warn", qops["min_input_channels_text"].format(op=node.op_type, value=channels)))
            int8 = False
        n_scales = len(quant["scale_w"])
        if n_scales > 1 and node.op_type not in qops.get("per_channel_ops", ()):
            problems.append(("warn", qops["per_channel_text"].format(op=node.op_type, value=n_scales)))
    severities = {s for s, _ in problems}
    status = "unsupported" if "error" in severities else "constrained" if "warn" in severities else "supported"
    data_shape = in_shapes[0] if in_shapes else None
    fmt = _layout(
        entry, data_shape if data_shape is not None else v.shapes.get(node.output[0]) if node.output else None
    )
    ascend_dtype = "int8" if int8 else compute
    c0 = ops.get("formats", {}).get("c0", {}).get(ascend_dtype) if fmt == "NC1HWC0" else None
    ascend_shape = None
    if c0 and data_shape and all(isinstance(d, int) for d in data_shape):
        n, c, h, w = data_shape
        ascend_shape = [n, -(-c // c0), h, w, c0]
    q = quant or {}
    return {
        "node": name,
        "onnx_op": node.op_type,
        "ascend_op": entry.get("ascend_op") if entry else None,
        "ascend_op_verified": bool(entry) and entry.get("ascend_op_verified", True),
        "status": status,
        "reasons": [text for _, text in problems],
        "input_names": [_source_name(n, v) for n in in_names],
        "input_shapes": in_shapes,
        "output_shapes": [v.shapes.get(o) for o in node.output],
        "onnx_dtypes": {
            "inputs": [v.dtypes.get(_source_name(n, v)) for n in in_names],
            "outputs": [v.dtypes.get(o) for o in node.output],
        },
        "ascend_dtype": ascend_dtype,
        "format": fmt,
        "c0": c0,
        "ascend_input_shape": ascend_shape,
        "scale_d": q.get("scale_d"),
        "offset_d": q.get("offset_d"),
        "scale_w": q.get("scale_w"),
        "offset_w": q.get("offset_w"),
        "out_scale": q.get("out_scale"),
        "out_offset": q.get("out_offset"),
        "data_tensor": q.get("data_tensor"),
        "weight_tensor": q.get("weight_tensor"),
    }


def build_table(
    proto: "onnx.ModelProto",
    spec: "TargetSpec",
    precision: str,
    qparams: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """The op table of ``proto`` for ``spec``: rows, the model-level checks, and the conventions used."""
    ops = load_ops(spec)
    v = GraphIndex.with_shapes(proto, input_shape)
    compute = "float32" if precision == "fp32" else "float16"
    rows = [
        _row(name, node, v, ops, compute, qparams or {})
        for name, node in zip(node_names(v.nodes), v.nodes)
        if node.op_type not in QDQ
    ]
    lo, hi = spec.opset_range
    problem = opset_problem(proto, spec)
    qfacts = ops.get("quantization", {})
    return {
        "format_version": 1,
        "target": spec.name,
        "soc_version": spec.raw.get("ascend", {}).get("soc_version"),
        "precision": precision,
        "ops_file": str(ops_file(spec).name),
        "opset": {
            "model": v.opset,
            "supported": [lo, hi],
            "ok": problem is None,
            "problem": problem,
            "source": spec.raw.get("onnx", {}).get("sources"),
        },
        "conventions": {
            "quantization": qfacts.get("formula"),
            "sign": qfacts.get("sign_convention"),
            "quantization_source": qfacts.get("formula_source"),
            "record_source": qfacts.get("record_source"),
            "int8_ops": qfacts.get("ops"),
            "int8_ops_source": qfacts.get("ops_source"),
            "nc1hwc0": ops.get("formats", {}).get("nc1hwc0"),
            "c0": ops.get("formats", {}).get("c0"),
            "format_sources": [ops.get("formats", {}).get(k) for k in ("nc1hwc0_source", "c0_source", "layout_source")],
            "ascend_dtype": f"int8 for quantized {'/'.join(qfacts.get('ops', []))} layers, else {compute} "
            "(ATC computes in float16 unless --precision_mode says otherwise)",
        },
        "summary": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
        "rows": rows,
    }

"""Checks of a converted TFLite flatbuffer: the converter fails silently (a float op left in, a
per-channel weight collapsed to one scale, a range it chose itself), so the backend reads the model
back through the LiteRT interpreter and compares it with what it asked for.

Checked: no float tensor in the compute path (activations and weights int8, biases int32); QUANTIZE /
DEQUANTIZE ops only where unavoidable (int8 → int8 requantization before a concatenation, float
model inputs and outputs when asked for); per-channel conv weights with the simulation's scales;
every activation's scale and zero point equal to the simulation's (matched through the name scopes
``lower.py`` put into the TF graph, which the converter keeps in its tensor names).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekd.backends.tflite.lower import Lowered
from edgekd.errors import FidelityError, UnsupportedOpsError

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
# Input positions of (data, weights, bias) where they are not (0, 1, 2): TRANSPOSE_CONV takes the output
# shape first.
OPERANDS = {"TRANSPOSE_CONV": (2, 1, 3)}
# Ops whose output must sit on their input's grid (TFLite's int8 spec): a scale the converter moved
# onto a CONCATENATION's grid travels through them.
GRID_OPS = (
    "RESHAPE",
    "RESIZE_NEAREST_NEIGHBOR",
    "RESIZE_BILINEAR",
    "MAX_POOL_2D",
    "PAD",
    "PADV2",
    "SPLIT",
    "SPLIT_V",
    "STRIDED_SLICE",
    "SLICE",
    "TRANSPOSE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "GATHER",
    "DEPTH_TO_SPACE",
    "SPACE_TO_DEPTH",
    "REDUCE_MAX",
    "TILE",
)
FLOAT_TYPES = (np.float32, np.float16, np.float64)
SCALE_RTOL = 1e-6  # float32 rounding of min/max → scale; anything beyond means another range


def interpreter(model: bytes | str, threads: int = 1, delegates: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interp = Interpreter(**source, num_threads=threads, experimental_op_resolver_type=kind)
    interp.allocate_tensors()
    return interp


def _ops(interp) -> list[dict[str, Any]]:
    # The interpreter's op list (private but long-stable; the Analyzer only prints text).
    return interp._get_ops_details()


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if a.size else 0.0


def _derived(parts: list[str]) -> bool:
    """A tensor made inside a ``derived`` name scope; TF numbers a second one in the same op ``derived_1``."""
    return any(p == "derived" or re.fullmatch(r"derived_\d+", p) for p in parts)


def owner(name: str, order: dict[str, int]) -> tuple[str | None, bool]:
    """The lowering scope a tensor belongs to (the latest in graph order among the scopes named in
    its fused name), and whether it is an intermediate the lowering derived inside that op."""
    best, derived = None, True
    for token in name.split(";"):
        parts = token.split("/")
        scope = parts[0]
        if scope not in order:
            continue
        if best is None or order[scope] > order[best]:
            best, derived = scope, _derived(parts)
        elif scope == best:
            derived = derived and _derived(parts)
    return best, (derived if best is not None else False)


def name_io(model: bytes, lowered: Lowered) -> bytes:
    """The flatbuffer with its outputs in the ONNX model's order and its inputs and outputs named as
    the ONNX model's: the converter orders outputs its own way (yolo-det's six came out permuted).
    Each output is found by the lowering scope in its tensor name."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.convert_bytearray_to_object(model)
    sg = obj.subgraphs[0]
    order = {s: i for i, s in enumerate(lowered.scopes)}
    names = [t.name.decode() for t in sg.tensors]
    remaining = [int(i) for i in sg.outputs]
    chosen: list[int | None] = []
    for sources in lowered.output_sources:  # by the lowering scope in the tensor name
        found = [
            i
            for i in remaining
            if (owner(names[i], order)[0] in order and lowered.scopes[owner(names[i], order)[0]] in sources)
        ]
        chosen.append(found[0] if len(found) == 1 else None)
        if len(found) == 1:
            remaining.remove(found[0])
    for k, shape in enumerate(lowered.output_shapes):  # else by a shape no other output has
        if chosen[k] is None:
            found = [i for i in remaining if tuple(sg.tensors[i].shape) == shape]
            if len(found) == 1 or len(remaining) == 1:
                chosen[k] = found[0] if len(found) == 1 else remaining[0]
                remaining.remove(chosen[k])
    if None in chosen:
        missing = [n for n, c in zip(lowered.outputs, chosen) if c is None]
        raise FidelityError(
            f"cannot tell which TFLite outputs are the ONNX outputs {missing} (left: {[names[i] for i in remaining]})",
            "report this with the model; the converter named its outputs unexpectedly",
        )
    sg.outputs = np.asarray(chosen, np.int32)
    for i, onnx_name in zip(chosen, lowered.outputs):
        sg.tensors[i].name = onnx_name.encode()
    sg.tensors[int(sg.inputs[0])].name = lowered.input_name.encode()
    for sig in obj.signatureDefs or []:
        if sig.subgraphIndex != 0:
            continue
        sig.inputs = [_tensor_map(schema, lowered.input_name, int(sg.inputs[0]))]
        sig.outputs = [_tensor_map(schema, n, i) for n, i in zip(lowered.outputs, chosen)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _tensor_map(schema, name: str, index: int):
    m = schema.TensorMapT()
    m.name, m.tensorIndex = name.encode(), index
    return m


def delegation(model: bytes, threads: int = 1) -> dict[str, Any]:
    """Which ops XNNPACK (LiteRT's default delegate) takes, and which it leaves to the builtin kernels."""
    interp = interpreter(model, threads, delegates=True)
    ops = _ops(interp)
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    partitions = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {int(t): o["index"] for o in original for t in o["outputs"]}
    by_index = {o["index"]: o for o in original}
    taken: set[int] = set()
    for d in partitions:
        stop = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            if t in stop or t not in producer or producer[t] in taken:
                continue
            taken.add(producer[t])
            stack.extend(int(i) for i in by_index[producer[t]]["inputs"] if i >= 0)
    left = Counter(o["op_name"] for o in original if o["index"] not in taken)
    return {
        "delegate": "xnnpack",
        "partitions": len(partitions),
        "delegated_ops": len(taken),
        "not_delegated": dict(sorted(left.items())),
    }


@dataclass(frozen=True)
class _Readback:
    """The converted flatbuffer as the LiteRT interpreter reads it back (no delegate)."""

    interp: Any
    tensors: dict[int, dict]
    ops: list[dict]
    io_tensors: set[int]
    float_scopes: set[str] = field(default_factory=set)  # name scopes of a detector's float decode
    float_edges: set[str] = field(default_factory=set)  # DEQUANTIZE outputs read only inside the float decode

    @classmethod
    def of(cls, model: bytes) -> "_Readback":
        interp = interpreter(model, delegates=False)
        io = {d["index"] for d in interp.get_input_details()} | {d["index"] for d in interp.get_output_details()}
        return cls(interp, {t["index"]: t for t in interp.get_tensor_details()}, _ops(interp), io)

    def qparams(self, index: int) -> dict:
        return self.tensors[index]["quantization_parameters"]


def check_flatbuffer(
    model: bytes,
    lowered: Lowered,
    expected: dict[str, dict],
    quantized: bool,
    float_decode: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Reads the flatbuffer back and returns the backend report for the manifest; raises
    UnsupportedOpsError when it is not fully int8 outside ``float_decode`` (the ONNX tensors of a
    detector's decode, float by design), FidelityError when its ranges are not the ones asked for."""
    fb = _Readback.of(model)
    fb.float_scopes.update(scope for scope, onnx_name in lowered.scopes.items() if onnx_name in float_decode)
    fb.float_edges.update(_dequantized_into_decode(fb))
    report: dict[str, Any] = {
        "ops": dict(sorted(Counter(o["op_name"] for o in fb.ops).items())),
        "tensor_dtypes": dict(sorted(Counter(t["dtype"].__name__ for t in fb.tensors.values()).items())),
    }
    if not quantized:
        return report
    problems_int8: list[str] = []
    problems_ranges: list[str] = []
    report["float_tensors"] = _float_tensors(fb, problems_int8)
    report["requantize_ops"], report["io_conversions"] = _quantize_ops(fb, problems_int8)
    report["weights"] = _check_weights(fb, lowered, problems_ranges)
    report["forced"] = list(lowered.notes)
    report["activations"] = _check_activations(fb, lowered, expected, report["forced"], problems_ranges)
    if problems_int8:
        raise UnsupportedOpsError(
            "the converted TFLite model is not fully int8: " + "; ".join(problems_int8),
            "the ops named above have no int8 TFLite kernel or lost their fake quant; change the "
            "model, or keep it in fp32",
        )
    if problems_ranges:
        raise FidelityError(
            "the TFLite converter did not keep the simulation's quantization: " + "; ".join(problems_ranges)
        )
    return report


def _in_float_decode(fb: _Readback, name: str) -> bool:
    """A tensor of the float decode: in the name scope of a decode node, a float constant it reads, or the
    dequantized int8 tensor it starts from."""
    if not fb.float_scopes:
        return False
    constant = re.fullmatch(r"arith\.constant\d*", name) is not None or name.endswith("/Const")
    # an int8 op reading a float constant would need a QUANTIZE, reported on its own
    return name.split("/")[0] in fb.float_scopes or constant or name in fb.float_edges


def _dequantized_into_decode(fb: _Readback) -> set[str]:
    """Names of DEQUANTIZE outputs whose every reader writes only float-decode tensors: where the float
    decode (and a detector's float head convolutions) reads the int8 graph. The converter names such a
    tensor after the fake quant it replaced, outside the decode's scopes."""
    if not fb.float_scopes:
        return set()
    readers: dict[int, list[dict]] = {}
    for o in fb.ops:
        for i in o["inputs"]:
            readers.setdefault(int(i), []).append(o)
    out = set()
    for o in fb.ops:
        if o["op_name"] != "DEQUANTIZE":
            continue
        dst = int(o["outputs"][0])
        ops = readers.get(dst, [])
        if ops and all(fb.tensors[int(t)]["name"].split("/")[0] in fb.float_scopes for r in ops for t in r["outputs"]):
            out.add(fb.tensors[dst]["name"])
    return out


def _float_tensors(fb: _Readback, problems: list[str]) -> list[str]:
    """Float tensors outside the model's inputs and outputs (and a detector's float decode): the compute
    path must be int8."""
    float_tensors = [
        t["name"]
        for i, t in fb.tensors.items()
        if t["dtype"] in FLOAT_TYPES and i not in fb.io_tensors and not _in_float_decode(fb, t["name"])
    ]
    if float_tensors:
        problems.append(
            f"{len(float_tensors)} float tensor(s) in the compute path: "
            + ", ".join(float_tensors[:8])
            + (" ..." if len(float_tensors) > 8 else "")
        )
    return float_tensors


def _quantize_ops(fb: _Readback, problems: list[str]) -> tuple[int, list[str]]:
    """QUANTIZE / DEQUANTIZE: int8 → int8 requantization is exact integer work; float edges only at I/O.
    Returns the number of requantize ops (before CONCATENATION, whose inputs must share its scale) and
    the I/O conversions."""
    requant, edges, stray = 0, [], []
    for o in fb.ops:
        if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE"):
            continue
        src, dst = fb.tensors[int(o["inputs"][0])], fb.tensors[int(o["outputs"][0])]
        if src["dtype"] == np.int8 and dst["dtype"] == np.int8:
            requant += 1
        elif o["op_name"] == "DEQUANTIZE" and _in_float_decode(fb, dst["name"]):
            edges.append(f"DEQUANTIZE into the float decode at {dst['name']}")
        elif int(o["inputs"][0]) in fb.io_tensors or int(o["outputs"][0]) in fb.io_tensors:
            at = src["name"] if o["op_name"] == "QUANTIZE" else dst["name"]
            edges.append(f"{o['op_name']} {src['dtype'].__name__}→{dst['dtype'].__name__} at {at}")
        else:
            stray.append(f"{o['op_name']} {src['name']}")
    if stray:
        problems.append(f"{len(stray)} QUANTIZE/DEQUANTIZE op(s) inside the graph: " + ", ".join(stray[:8]))
    return requant, edges


def _check_weights(fb: _Readback, lowered: Lowered, problems: list[str]) -> dict[str, Any]:
    """Weights per channel with the simulation's scales; biases int32 with the layer's values."""
    per_channel, per_tensor, bias_bad, requantized, w_diff = 0, [], [], [], 0.0
    for o in fb.ops:
        if o["op_name"] not in WEIGHTED_OPS:
            continue
        _, w_at, b_at = OPERANDS.get(o["op_name"], (0, 1, 2))
        w = fb.tensors[int(o["inputs"][w_at])]
        out_name = fb.tensors[int(o["outputs"][0])]["name"]
        info = _conv_info(w["name"] + ";" + out_name, lowered)  # outputs carry ONNX names: the weight has the scope
        if w["dtype"] != np.int8:
            continue  # already reported as a float tensor
        scales = w["quantization_parameters"]["scales"]
        if len(o["inputs"]) > b_at and o["inputs"][b_at] >= 0:
            bad = _bias_problem(fb, o, scales, info.get("bias"))
            if bad is not None:
                bias_bad.append(f"{out_name} ({bad})")
        channels = w["shape"][-1] if o["op_name"] == "DEPTHWISE_CONV_2D" else w["shape"][0]
        want = info.get("weight_scales")
        if want is None and info:
            requantized.append(out_name)  # float in the simulation, int8 with the converter's own ranges
            continue
        if len(scales) == channels and (want is None or np.size(want) == channels):
            per_channel += 1
            if want is not None:
                w_diff = max(w_diff, _rel(scales, want))
        else:
            per_tensor.append(out_name)
    if per_tensor:
        problems.append(f"{len(per_tensor)} weight(s) lost their per-channel scales: " + ", ".join(per_tensor[:5]))
    if w_diff > SCALE_RTOL:
        problems.append(f"weight scales differ from the simulation's by up to {w_diff:.2e} (relative)")
    if requantized:
        problems.append(
            f"{len(requantized)} layer(s) float in the simulation were quantized by the converter "
            "with ranges of its own: " + ", ".join(requantized[:5])
        )
    if bias_bad:
        problems.append(
            f"{len(bias_bad)} bias(es) are not int32 on the input x weight grid: " + ", ".join(bias_bad[:5])
        )
    return {"per_channel": per_channel, "per_tensor": per_tensor, "max_rel_scale_diff": w_diff}


def _bias_problem(fb: _Readback, op: dict, w_scales: np.ndarray, want_bias: np.ndarray | None) -> str | None:
    """What is wrong with a weighted op's bias (input 2), or None. TFLite's int8 spec: bias scale = input
    scale × weight scale, per output channel; and the values must be the layer's (a splat bias got the
    first channel's scale for all of them)."""
    x_at, _, b_at = OPERANDS.get(op["op_name"], (0, 1, 2))
    b = fb.tensors[int(op["inputs"][b_at])]
    in_scale = fb.qparams(int(op["inputs"][x_at]))["scales"]
    b_scales = b["quantization_parameters"]["scales"]
    if b["dtype"] != np.int32:
        return b["dtype"].__name__
    if (
        len(in_scale) == 1
        and len(b_scales) == len(w_scales)
        and _rel(b_scales, np.float32(in_scale[0]) * w_scales) > 1e-5
    ):
        return "bias scale is not input scale x weight scale"
    got = fb.interp.get_tensor(int(op["inputs"][b_at])).astype(np.float64) * b_scales
    if (
        want_bias is not None
        and got.shape == want_bias.shape
        and np.any(np.abs(got - want_bias) > 0.5 * b_scales + 1e-6 * np.abs(want_bias))
    ):
        return "int32 bias values are not the layer's bias"
    return None


def _activation_targets(fb: _Readback, lowered: Lowered) -> dict[int, str]:
    """Each int8 activation of the flatbuffer → the ONNX tensor whose range it must hold."""
    order = {s: i for i, s in enumerate(lowered.scopes)}
    requant_outputs = {int(o["outputs"][0]) for o in fb.ops if o["op_name"] == "QUANTIZE"}
    inputs, outputs = fb.interp.get_input_details(), fb.interp.get_output_details()
    produced = {int(t) for o in fb.ops for t in o["outputs"]} | {d["index"] for d in inputs}
    targets: dict[int, str] = {}
    for i, t in fb.tensors.items():
        if i in requant_outputs or i not in produced or t["dtype"] != np.int8:
            continue
        scope, derived = owner(t["name"], order)
        if scope is not None and not derived:
            targets[i] = lowered.scopes[scope]
    # inputs and outputs carry the ONNX names (see tflite.name_io), so they are matched by position
    for d, onnx_name in [*zip(inputs, [lowered.input_name]), *zip(outputs, lowered.outputs)]:
        if d["dtype"] == np.int8:
            targets[d["index"]] = onnx_name
    return targets


def _check_activations(
    fb: _Readback, lowered: Lowered, expected: dict[str, dict], forced: list, problems: list[str]
) -> dict[str, Any]:
    """Every quantized activation against the simulation's scale and zero point; a difference the
    converter is forced into (a CONCATENATION's grid, an op keeping its input's grid) is added to
    ``forced`` instead of ``problems``."""
    checked, unmatched, a_diff = 0, [], 0.0
    mismatched: list[str] = []
    moved: list[dict[str, Any]] = []
    kept_grid: list[dict[str, Any]] = []
    # a graph output's own tensor is renamed by the quantizer (``<name>_float``); its qparams keep the name
    output_of = {src: out for out, sources in zip(lowered.outputs, lowered.output_sources) for src in sources}
    for i, onnx_name in _activation_targets(fb, lowered).items():
        onnx_name = onnx_name if onnx_name in expected else output_of.get(onnx_name, onnx_name)
        want = expected.get(onnx_name)
        if want is None or np.size(want["scale"]) != 1:
            unmatched.append(onnx_name)
            continue
        qp = fb.qparams(i)
        if len(qp["scales"]) != 1:
            mismatched.append(f"{onnx_name} (per-channel in the flatbuffer)")
            continue
        checked += 1
        got_scale, got_zp = float(qp["scales"][0]), int(qp["zero_points"][0])
        want_scale, want_zp = float(np.float32(want["scale"])), int(want["zero_point"])
        diff = _rel(got_scale, want_scale)
        if diff <= SCALE_RTOL and got_zp == want_zp:
            a_diff = max(a_diff, diff)
            continue
        concat = _concat_grid(i, fb.ops, fb.tensors)
        after = _requantized_after(i, fb.ops, fb.tensors, want_scale, want_zp)
        if concat is not None:
            moved.append(
                {
                    "tensor": onnx_name,
                    "onto": concat,
                    "scale": got_scale,
                    "zero_point": got_zp,
                    "asked_scale": float(want["scale"]),
                    "asked_zero_point": want_zp,
                }
            )
        elif after is not None:
            kept_grid.append({"tensor": onnx_name, "op": after})
        else:
            mismatched.append(
                f"{onnx_name}: scale {got_scale:.6g}, zero point {got_zp} (asked {float(want['scale']):.6g}, {want_zp})"
            )
    forced.extend(_forced_grids(moved, kept_grid))
    if checked == 0:
        problems.append("no activation of the flatbuffer could be matched with the simulation's tensors")
    if mismatched:
        problems.append(
            f"{len(mismatched)} activation range(s) differ from the simulation's, e.g. " + "; ".join(mismatched[:4])
        )
    return {
        "checked": checked,
        "without_qparams": unmatched,
        "max_rel_scale_diff": a_diff,
        "mismatches": mismatched,
        "moved_onto_concat_grid": len(moved),
        "requantized_after_same_grid_op": len(kept_grid),
    }


def _forced_grids(moved: list[dict], kept_grid: list[dict]) -> list[dict[str, Any]]:
    """The report's notes for activation ranges TFLite's int8 kernels force the converter to change."""
    notes = []
    if moved:
        notes.append(
            {
                "forced": "producer written onto a CONCATENATION's grid",
                "tensors": moved,
                "reason": "TFLite's int8 CONCATENATION needs every input on its output grid; the "
                "converter moves a producer onto it instead of adding a requantize op "
                "(one rounding instead of the simulation's two)",
            }
        )
    if kept_grid:
        notes.append(
            {
                "forced": "requantized after an op that keeps its input's grid",
                "tensors": kept_grid,
                "reason": "TFLite's int8 kernels for these ops need output scale = input scale; the "
                "converter adds a QUANTIZE to the asked range after them (two roundings "
                "where the simulation has one)",
            }
        )
    return notes


def _conv_scope(out_name: str, lowered: Lowered) -> str | None:
    """The lowering scope of a weighted op: ``n<index>``, or ``n<index>/g<k>`` for one group of a
    grouped convolution."""
    for token in out_name.split(";"):
        parts = token.split("/")
        for scope in ("/".join(parts[:2]), parts[0]):
            if scope in lowered.conv_scopes:
                return scope
    return None


def _conv_info(out_name: str, lowered: Lowered) -> dict:
    scope = _conv_scope(out_name, lowered)
    return {} if scope is None else lowered.conv_scopes[scope]


def _requantized_after(index: int, ops: list[dict], tensors: dict[int, dict], scale: float, zp: int) -> str | None:
    """The op that produced the tensor, when it kept its input's grid (TFLite's int8 AVERAGE_POOL_2D,
    for one, must) and a QUANTIZE right after brings the value to the asked range."""
    producer = next((o for o in ops if index in [int(t) for t in o["outputs"]]), None)
    if producer is None or not len(producer["inputs"]):
        return None
    src = tensors[int(producer["inputs"][0])]["quantization_parameters"]
    mine = tensors[index]["quantization_parameters"]
    if not len(src["scales"]) or (float(src["scales"][0]), int(src["zero_points"][0])) != (
        float(mine["scales"][0]),
        int(mine["zero_points"][0]),
    ):
        return None
    for o in ops:
        if o["op_name"] == "QUANTIZE" and int(o["inputs"][0]) == index:
            qp = tensors[int(o["outputs"][0])]["quantization_parameters"]
            if int(qp["zero_points"][0]) == zp and _rel(qp["scales"][0], scale) <= SCALE_RTOL:
                return producer["op_name"]
    return None


def _concat_grid(index: int, ops: list[dict], tensors: dict[int, dict]) -> str | None:
    """The CONCATENATION (reached directly or through grid-preserving ops) whose output grid the
    tensor was moved onto, if any: TFLite's int8 CONCATENATION needs its inputs on its output grid,
    and the converter writes a producer straight onto it instead of adding a requantize op."""
    qp = tensors[index]["quantization_parameters"]
    mine = (float(qp["scales"][0]), int(qp["zero_points"][0]))
    seen, stack = set(), [index]
    while stack:
        t = stack.pop()
        for o in ops:
            if t not in [int(i) for i in o["inputs"]] or o["index"] in seen:
                continue
            seen.add(o["index"])
            out = tensors[int(o["outputs"][0])]
            oq = out["quantization_parameters"]
            if not len(oq["scales"]) or (float(oq["scales"][0]), int(oq["zero_points"][0])) != mine:
                continue
            if o["op_name"] == "CONCATENATION":
                return out["name"]
            if o["op_name"] in GRID_OPS:
                stack.extend(int(i) for i in o["outputs"])
    return None

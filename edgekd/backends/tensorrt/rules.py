"""Static checks of an ONNX graph against TensorRT's documented rules, for one target's TensorRT.

TensorRT cannot be installed where edgekd compiles, so what its ONNX parser and builder would reject
is checked here, from the facts in the target spec's ``[tensorrt]`` and ``[ops]`` tables:

* Explicit quantization (TensorRT Developer Guide, "Explicit Quantization"; onnx-tensorrt
  operators.md): QuantizeLinear/DequantizeLinear zero points are int8 and 0, scales are positive,
  finite, build-time constants; weights are per output channel (or per tensor), activations per
  tensor; every Q feeds DequantizeLinear nodes with the same scale and zero point; DequantizeLinear
  reads int8 only (TensorRT 8.5 has no int32 DequantizeLinear: biases stay float).
* The opset: at least 13 (per-channel DequantizeLinear) and within the spec's range, whose top is
  the highest opset the target's parser takes.
* Ops: the parser's support table, plus the restrictions edgekd can see statically.
* DLA (reported, not fatal): which nodes TensorRT cannot place on the DLA and runs on the GPU.
* 2:4 structured sparsity: which weights have the pattern sparse kernels need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.backends.base import Unsupported
from edgekd.ir.proto_index import DEFAULT_DOMAINS, GraphIndex, attr, default_opset

if TYPE_CHECKING:
    import onnx

    from edgekd.specs import TargetSpec

MIN_OPSET = 13  # per-channel (axis) DequantizeLinear
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "node": self.node, "message": self.message}

    def __str__(self) -> str:
        return f"{self.node}: [{self.rule}] {self.message}"


@dataclass(frozen=True)
class TensorRTFacts:
    """What the target spec says about its TensorRT (``[tensorrt]``, ``[ops]``, ``[onnx]``)."""

    target: str
    version: str
    opset_range: tuple[int, int]
    supported_ops: frozenset[str]
    op_source: str
    resize_coordinate_modes: tuple[str, ...]
    resize_modes: tuple[str, ...]
    dla_cores: int
    dla: dict[str, Any] = field(default_factory=dict)
    sparse_2to4: bool = False
    workspace_mib: int = 1024
    build_only_flag: str = "--skipInference"

    @classmethod
    def from_spec(cls, spec: "TargetSpec") -> "TensorRTFacts":
        from edgekd.errors import ConfigError

        trt = spec.raw.get("tensorrt")
        if not isinstance(trt, dict) or "version" not in trt:
            raise ConfigError(
                f"target spec {spec.path} has no [tensorrt] table with a version",
                "compare with targets/jetson-xavier.toml",
            )
        ops = spec.raw.get("ops", {})
        return cls(
            target=spec.name,
            version=str(trt["version"]),
            opset_range=spec.opset_range,
            supported_ops=frozenset(ops.get("supported", ())),
            op_source=ops.get("source", ""),
            resize_coordinate_modes=tuple(ops.get("resize_coordinate_modes", ())),
            resize_modes=tuple(ops.get("resize_modes", ())),
            dla_cores=int(trt.get("dla_cores", 0)),
            dla=dict(trt.get("dla", {})),
            sparse_2to4=bool(trt.get("sparse_2to4", False)),
            workspace_mib=int(trt.get("workspace_mib", 1024)),
            build_only_flag=str(trt.get("build_only_flag", "--skipInference")),
        )


def _label(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def output_channel_axis(node, weight_ndim: int) -> int:
    """The axis of a weighted node's weight (input 1) that holds its output channels."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return weight_ndim - 1  # MatMul [.., K, N]


# --- opset and ops -----------------------------------------------------------------------------


def check_opset(model: "onnx.ModelProto", facts: TensorRTFacts) -> list[Violation]:
    version = default_opset(model)
    lo, hi = max(MIN_OPSET, facts.opset_range[0]), facts.opset_range[1]
    if version is None:
        return [Violation("opset", "(model)", "the model imports no default-domain opset")]
    if not lo <= version <= hi:
        return [
            Violation(
                "opset",
                "(model)",
                f"opset {version} is outside [{lo}, {hi}]: TensorRT {facts.version} "
                f"on {facts.target} parses opsets up to {hi}, and per-channel DequantizeLinear needs "
                f"{MIN_OPSET}",
            )
        ]
    return []


def unsupported_ops(model: "onnx.ModelProto", facts: TensorRTFacts) -> list[Unsupported]:
    """Nodes TensorRT's ONNX parser rejects, by the target's op table and the restrictions in it."""
    out = []
    for n in model.graph.node:
        label = _label(n)
        if n.domain not in DEFAULT_DOMAINS:
            out.append(Unsupported(label, n.op_type, f"custom domain {n.domain!r} needs a TensorRT plugin"))
        elif facts.supported_ops and n.op_type not in facts.supported_ops:
            out.append(
                Unsupported(
                    label,
                    n.op_type,
                    f"{n.op_type} is not supported by TensorRT {facts.version}'s ONNX parser ({facts.op_source})",
                )
            )
        elif n.op_type == "Resize":
            mode = attr(n, "mode", b"nearest")
            coord = attr(n, "coordinate_transformation_mode", b"half_pixel")
            mode, coord = (v.decode() if isinstance(v, bytes) else v for v in (mode, coord))
            if facts.resize_modes and mode not in facts.resize_modes:
                out.append(
                    Unsupported(
                        label, n.op_type, f"Resize mode {mode!r} (TensorRT takes {', '.join(facts.resize_modes)})"
                    )
                )
            if facts.resize_coordinate_modes and coord not in facts.resize_coordinate_modes:
                out.append(
                    Unsupported(label, n.op_type, f"Resize coordinate_transformation_mode {coord!r} is not supported")
                )
        elif n.op_type in ("MaxPool", "AveragePool", "LpPool"):
            kernel = attr(n, "kernel_shape", [])
            if len(kernel) not in (2, 3):
                out.append(Unsupported(label, n.op_type, f"{len(kernel)}-D pooling: TensorRT pools in 2-D or 3-D only"))
            if n.op_type == "MaxPool" and len([o for o in n.output if o]) > 1:
                out.append(Unsupported(label, n.op_type, "MaxPool's Indices output is not supported"))
    return out


# --- explicit quantization -----------------------------------------------------------------------


def _qdq_params(g: GraphIndex, node) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
    return g.const(node, 1), g.const(node, 2), attr(node, "axis")


def _check_params(g: GraphIndex, node, out: list[Violation]) -> None:
    label = _label(node)
    scale, zp, _ = _qdq_params(g, node)
    if scale is None:
        out.append(Violation("scale-constant", label, "the scale is not a build-time constant (an initializer)"))
    elif scale.dtype != np.float32 or not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        out.append(
            Violation(
                "scale-positive",
                label,
                f"scales must be positive finite float32, got {scale.dtype} {np.asarray(scale).ravel()[:4].tolist()}",
            )
        )
    if zp is None:
        if node.op_type == "QuantizeLinear" or g.input(node, 2) is not None:
            out.append(
                Violation(
                    "zero-point",
                    label,
                    "no constant int8 zero point (without one, QuantizeLinear produces uint8, which TensorRT rejects)",
                )
            )
        return
    if zp.dtype != np.int8:
        out.append(Violation("zero-point", label, f"zero point is {zp.dtype}; TensorRT quantizes to int8 only"))
    if np.any(zp != 0):
        out.append(
            Violation(
                "zero-point",
                label,
                f"zero point must be 0 (TensorRT quantization is symmetric), got {np.asarray(zp).ravel()[:4].tolist()}",
            )
        )
    if scale is not None and zp.shape != scale.shape:
        out.append(
            Violation("zero-point", label, f"zero point shape {zp.shape} differs from scale shape {scale.shape}")
        )


def _check_weight_dq(g: GraphIndex, node, out: list[Violation], counts: dict[str, int]) -> None:
    label = _label(node)
    data = g.const(node, 0)
    scale, _, axis = _qdq_params(g, node)
    if data.dtype != np.int8:
        out.append(
            Violation(
                "dequantize-int8",
                label,
                f"DequantizeLinear reads {data.dtype}; TensorRT's reads int8 only (fold int32 biases to float)",
            )
        )
        return
    if scale is None:
        return
    readers = [(n, i) for n, i in g.consumers.get(node.output[0], []) if n.op_type in WEIGHTED and i == 1]
    if scale.ndim == 0 or scale.size == 1 and axis is None:
        counts["weights_per_tensor"] += 1
        return
    axis = 1 if axis is None else axis  # the ONNX default
    axis = axis + data.ndim if axis < 0 else axis
    if scale.ndim != 1 or not 0 <= axis < data.ndim or scale.size != data.shape[axis]:
        out.append(
            Violation(
                "weight-per-channel",
                label,
                f"{scale.size} scales along axis {axis} of a weight shaped {list(data.shape)}",
            )
        )
        return
    for reader, _ in readers:
        want = output_channel_axis(reader, data.ndim)
        if axis != want:
            out.append(
                Violation(
                    "weight-per-channel",
                    label,
                    f"per-channel scales on axis {axis}; {reader.op_type} "
                    f"{_label(reader)} has its {data.shape[want]} output channels on axis {want}",
                )
            )
            return
    counts["weights_per_channel"] += 1


def _check_pair(g: GraphIndex, q, out: list[Violation]) -> bool:
    """A QuantizeLinear must feed only DequantizeLinear nodes with its own scale, zero point and axis."""
    readers = g.consumers.get(q.output[0], [])
    if not readers or q.output[0] in g.outputs:
        out.append(
            Violation(
                "qdq-pair", _label(q), "the quantized tensor leaves the graph instead of feeding a DequantizeLinear"
            )
        )
        return False
    s_q, z_q, a_q = _qdq_params(g, q)
    ok = True
    for reader, idx in readers:
        if reader.op_type != "DequantizeLinear" or idx != 0:
            out.append(
                Violation(
                    "qdq-pair",
                    _label(q),
                    f"int8 output read by {reader.op_type} {_label(reader)}, not by a DequantizeLinear",
                )
            )
            ok = False
            continue
        s_d, z_d, a_d = _qdq_params(g, reader)
        same = (
            s_q is not None
            and s_d is not None
            and np.array_equal(s_q, s_d)
            and a_q == a_d
            and (z_q is None) == (z_d is None)
            and (z_q is None or np.array_equal(z_q, z_d))
        )
        if not same:
            out.append(
                Violation(
                    "qdq-pair",
                    _label(q),
                    f"DequantizeLinear {_label(reader)} uses a different scale, "
                    "zero point or axis than its QuantizeLinear",
                )
            )
            ok = False
    return ok


def check_qdq(model: "onnx.ModelProto") -> tuple[dict[str, int], list[Violation]]:
    """TensorRT's explicit-quantization rules; returns counts of what passed and the violations."""
    g = GraphIndex(model)
    out: list[Violation] = []
    counts = {
        "quantize_linear": 0,
        "dequantize_linear": 0,
        "activation_pairs": 0,
        "weights_per_channel": 0,
        "weights_per_tensor": 0,
    }
    for n in g.nodes:
        if n.op_type not in QDQ:
            continue
        is_q = n.op_type == "QuantizeLinear"
        counts["quantize_linear" if is_q else "dequantize_linear"] += 1
        _check_params(g, n, out)
        constant_input = g.input(n, 0) in g.constants
        if constant_input and not is_q:  # a weight (or other constant) stored in int8
            _check_weight_dq(g, n, out, counts)
            continue
        if not constant_input:  # an activation
            scale, _, axis = _qdq_params(g, n)
            if (scale is not None and scale.ndim != 0) or axis is not None:
                shape = None if scale is None else list(scale.shape)
                out.append(
                    Violation(
                        "activation-per-tensor",
                        _label(n),
                        "activations are quantized per tensor: a "
                        f"scalar scale and no axis attribute (scale shape {shape}, axis {axis})",
                    )
                )
        if not is_q:
            if g.produced_by(g.input(n, 0), "QuantizeLinear") is None:
                out.append(
                    Violation(
                        "qdq-pair",
                        _label(n),
                        f"DequantizeLinear of {g.input(n, 0)!r}, which no QuantizeLinear produces",
                    )
                )
        elif _check_pair(g, n, out) and not constant_input:
            counts["activation_pairs"] += 1
    return counts, out


# --- DLA -------------------------------------------------------------------------------------------


def _within(value, bounds) -> bool:
    lo, hi = bounds
    return all(lo <= v <= hi for v in value)


def _dla_reason(g: GraphIndex, n, dla: dict[str, Any]) -> str | None:
    """Why TensorRT would run ``n`` on the GPU instead of the DLA, or None."""
    ops = set(dla.get("ops", ()))
    if n.op_type not in ops:
        return f"{n.op_type} is not a layer TensorRT runs on {dla.get('platform', 'this')} DLA"
    if n.op_type in ("Conv", "ConvTranspose"):
        kernel = attr(n, "kernel_shape") or (list(g.weight(n).shape[2:]) if g.weight(n) is not None else [])
        if len(kernel) != 2:
            return f"{len(kernel)}-D convolution (DLA: 2-D only)"
        pads, strides = attr(n, "pads", [0] * 4), attr(n, "strides", [1, 1])
        dil, groups = attr(n, "dilations", [1, 1]), attr(n, "group", 1)
        if not _within(kernel, dla.get("conv_kernel", (1, 32))):
            return f"kernel {kernel} outside {dla.get('conv_kernel')}"
        if not _within(pads, dla.get("conv_padding", (0, 31))) or any(p >= k for p, k in zip(pads, kernel + kernel)):
            return f"padding {pads} outside {dla.get('conv_padding')} or not below the kernel size"
        if not _within(strides, dla.get("conv_stride", (1, 8))):
            return f"stride {strides} outside {dla.get('conv_stride')}"
        if not _within(dil, dla.get("conv_dilation", (1, 32))):
            return f"dilation {dil} outside {dla.get('conv_dilation')}"
        if not _within([groups], dla.get("conv_groups", (1, 8192))):
            return f"{groups} groups outside {dla.get('conv_groups')}"
    elif n.op_type in ("MaxPool", "AveragePool"):
        kernel = attr(n, "kernel_shape", [])
        if len(kernel) != 2:
            return f"{len(kernel)}-D pooling (DLA: 2-D only)"
        if not _within(kernel, dla.get("pool_kernel", (1, 8))):
            return f"pooling window {kernel} outside {dla.get('pool_kernel')}"
        if not _within(attr(n, "pads", [0] * 4), dla.get("pool_padding", (0, 7))):
            return f"pooling padding outside {dla.get('pool_padding')}"
        if not _within(attr(n, "strides", [1, 1]), dla.get("pool_stride", (1, 16))):
            return f"pooling stride outside {dla.get('pool_stride')}"
    elif n.op_type == "Clip":
        lo, hi = g.const(n, 1), g.const(n, 2)
        bounds = dla.get("clip_max", (1, 127))
        if lo is None or hi is None or float(lo) != 0.0 or not bounds[0] <= float(hi) <= bounds[1]:
            return f"Clip runs on DLA only as clipped ReLU: min 0, max in {list(bounds)}"
    elif n.op_type == "Concat" and attr(n, "axis") != 1:
        return f"Concat along axis {attr(n, 'axis')} (DLA: channel axis only)"
    elif n.op_type in ("Gemm", "MatMul") and g.weight(n) is None:
        return f"{n.op_type} with a weight computed at run time (DLA: constant weights only)"
    return None


def dla_report(model: "onnx.ModelProto", facts: TensorRTFacts) -> dict[str, Any]:
    """Which nodes of the (Q/DQ-free) graph TensorRT would leave on the GPU when building for DLA."""
    g = GraphIndex(model)
    fallback, on_dla = [], 0
    for n in g.nodes:
        if n.op_type in QDQ or n.op_type == "Constant":
            continue
        reason = _dla_reason(g, n, facts.dla)
        if reason is None:
            on_dla += 1
        else:
            fallback.append({"node": _label(n), "op": n.op_type, "reason": reason})
    return {
        "cores": facts.dla_cores,
        "platform": facts.dla.get("platform"),
        "nodes_on_dla": on_dla,
        "falls_back_to_gpu": fallback,
        "note": (
            "DLA builds (build_engine.sh with DLA_CORE=N) use implicit int8 from calibration.cache and "
            "--allowGPUFallback: the nodes listed run on the GPU, and each switch between DLA and GPU costs "
            "a reformat; at most 16 DLA loadables load per core"
        ),
    }


# --- 2:4 structured sparsity ---------------------------------------------------------------------


def _as_out_in(node, w: np.ndarray) -> np.ndarray | None:
    """The weight as [out, in, ...] with the input channels on axis 1."""
    if node.op_type == "Conv" and w.ndim >= 3:
        return w
    if node.op_type == "Gemm" and w.ndim == 2:
        return w if attr(node, "transB", 0) else w.T
    if node.op_type == "MatMul" and w.ndim == 2:
        return w.T
    return None


def is_2to4_sparse(w: np.ndarray) -> bool:
    """Every group of 4 consecutive input channels (axis 1), for each output channel and kernel position,
    holds at least 2 zeros. Needs a multiple of 4 input channels."""
    if w.ndim < 2 or w.shape[1] % 4:
        return False
    groups = w.reshape(w.shape[0], w.shape[1] // 4, 4, -1)
    return bool(np.all(np.count_nonzero(groups, axis=2) <= 2))


def sparsity_report(model: "onnx.ModelProto") -> dict[str, Any]:
    g = GraphIndex(model)
    eligible, sparse = [], []
    for n in g.nodes:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = g.weight(n)
        w = _as_out_in(n, w) if w is not None else None
        if w is None or w.shape[1] % 4:
            continue  # TensorRT's sparse kernels need input channels in groups of 4
        eligible.append(_label(n))
        if is_2to4_sparse(w):
            sparse.append(_label(n))
    return {"eligible_layers": len(eligible), "sparse_layers": sparse}

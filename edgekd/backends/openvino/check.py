"""What OpenVINO's CPU plugin actually executes: the IR's constants and the compiled model's runtime graph.

OpenVINO's ONNX frontend turns each activation QuantizeLinear/DequantizeLinear pair into a
FakeQuantize and each int8 weight into Constant(i8) → Convert → Multiply(per-channel scale); at
compile time the CPU plugin's low-precision transformations decide, layer by layer, whether a
weighted layer runs on integer kernels. They skip a layer silently (it then runs in f32) when
its Q/DQ pattern is not one they handle, so the compiled model is read back rather than trusted.

In the runtime graph (``CompiledModel.get_runtime_model()``) every node is an ``ExecutionNode``
whose ``rt_info`` names the plugin's layer type (``layerType``: Convolution also covers grouped
and depthwise convolutions, FullyConnected covers MatMul with a constant weight), the kernel
(``primitiveType``, e.g. ``brgconv_avx512_1x1_I8``) and the node's ``runtimePrecision``; the
element types of its input ports say what the kernel reads: u8/i8 activations × i8 weights is
an integer layer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgekd.backends.base import ExecutedLayer
from edgekd.errors import FidelityError

# Runtime layer types of weighted layers (the CPU plugin's names, and the IR's for other plugins).
WEIGHTED_LAYER_TYPES = frozenset(
    {
        "Convolution",
        "GroupConvolution",
        "FullyConnected",
        "MatMul",
        "Deconvolution",
        "ConvolutionBackpropData",
        "GroupConvolutionBackpropData",
    }
)
INTEGER = frozenset({"u8", "i8", "u4", "i4"})
ONNX_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _rt(node, key: str) -> str:
    info = node.get_rt_info()
    return info[key].astype(str) if key in info else ""


def _port_type(port) -> str:
    return port.get_element_type().get_type_name()


def onnx_name(fused: list[str], names: set[str], outputs: dict[str, str]) -> str | None:
    """The ONNX node a runtime layer came from. The frontend names what it splits off a node by
    extending the node's name ("/conv/Conv/WithoutBiases/DequantizationMultiply"), and names a node
    that produces a graph output by that output ("output")."""
    for name in fused:
        parts = name.split("/")
        for k in range(len(parts), 0, -1):
            if "/".join(parts[:k]) in names:
                return "/".join(parts[:k])
    return next((outputs[n] for n in fused if n in outputs), None)


def runtime_layers(compiled, names: set[str], outputs: dict[str, str]) -> list[dict[str, Any]]:
    """Every weighted layer of the compiled model: its ONNX node (by ``names``, the weighted nodes,
    or ``outputs``, their output tensors), and the types its kernel reads and writes."""
    layers = []
    for node in compiled.get_runtime_model().get_ordered_ops():
        kind = _rt(node, "layerType")
        if kind not in WEIGHTED_LAYER_TYPES:
            continue
        fused = [n for n in _rt(node, "originalLayersNames").split(",") if n]
        name = onnx_name(fused, names, outputs) or (fused[0] if fused else node.get_friendly_name())
        inputs = [_port_type(p) for p in node.inputs()]
        act, weight = (inputs + ["", ""])[:2]
        layers.append(
            {
                "name": name,
                "type": kind,
                "precision": f"{act}x{weight}",
                "integer": act in INTEGER and weight in INTEGER,
                "output": _rt(node, "outputPrecisions"),
                "runtime_precision": _rt(node, "runtimePrecision"),
                "kernel": _rt(node, "primitiveType"),
            }
        )
    return layers


# Runtime nodes that move, reorder or feed data: not compute layers.
NOT_LAYERS = frozenset(
    {
        "Input",
        "Output",
        "Const",
        "Reorder",
        "Reshape",
        "Transpose",
        "Concatenation",
        "Split",
        "StridedSlice",
        "Gather",
        "ShapeOf",
    }
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def executed_layers(
    compiled, op_types: dict[str, str], outputs: dict[str, str], macs: dict[str, int]
) -> list[ExecutedLayer]:
    """Every compute node of the compiled model, mapped to the ONNX node it came from (``op_types``: node
    name → op type; ``outputs``: output tensor → node). A weighted layer is integer when its activation
    and its weight are; another when the plugin computes it in u8/i8 (``runtimePrecision``). A node that
    only quantizes the model input (a FakeQuantize from a Q/DQ pair) is not a layer."""
    layers = []
    for node in compiled.get_runtime_model().get_ordered_ops():
        kind = _rt(node, "layerType")
        if kind in NOT_LAYERS:
            continue
        fused = [n for n in _rt(node, "originalLayersNames").split(",") if n]
        name = onnx_name(fused, set(op_types), outputs) or (fused[0] if fused else node.get_friendly_name())
        op = op_types.get(name, kind)
        if op in QDQ_OPS:
            continue
        inputs = [_port_type(p) for p in node.inputs()]
        if kind in WEIGHTED_LAYER_TYPES:
            integer = len(inputs) > 1 and inputs[0] in INTEGER and inputs[1] in INTEGER
        else:
            integer = _rt(node, "runtimePrecision") in INTEGER
        layers.append(ExecutedLayer(name, op, integer, f"{kind}:{_rt(node, 'primitiveType')}", macs.get(name, 0)))
    return layers


def ir_constants(model) -> dict[str, int]:
    """Constant count per element type in the IR (f16 here means weights were compressed)."""
    return dict(
        sorted(
            Counter(
                op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"
            ).items()
        )
    )


def summarize(layers: list[dict[str, Any]], keep_float: set[str]) -> dict[str, Any]:
    precisions: dict[str, Counter] = {}
    for layer in layers:
        precisions.setdefault(layer["type"], Counter())[layer["precision"]] += 1
    floats = [layer["name"] for layer in layers if not layer["integer"]]
    return {
        "runtime_precisions": {k: dict(v) for k, v in sorted(precisions.items())},
        "int8_layers": sum(1 for layer in layers if layer["integer"]),
        "float_layers": len(floats),
        "float_layer_names": floats,
        # float although the quantizer gave them Q/DQ: the plugin did not take the pattern
        "unexpected_float": [n for n in floats if n not in keep_float],
    }


def require_int8(report: dict[str, Any], device: str) -> None:
    """An int8 compile whose CPU model runs no weighted layer in int8 is not an int8 artifact."""
    if report["int8_layers"] == 0:
        seen = ", ".join(f"{t}: {dict(p)}" for t, p in report["runtime_precisions"].items()) or "no weighted layers"
        raise FidelityError(
            f"the OpenVINO CPU plugin runs none of the weighted layers in int8 on {device} ({seen})",
            "the plugin runs a layer in int8 only when both its input and its weight come through Q/DQ pairs: "
            "check that the quantize pass ran (--precision int8 --calib DIR) and see backend_report.layers; "
            "on CPUs without int8 support (no AVX2/VNNI) use --precision fp32",
        )


def cpu_facts(core) -> dict[str, Any]:
    def prop(name: str):
        try:
            value = core.get_property("CPU", name)
        except RuntimeError:
            return None
        if hasattr(value, "get_type_name"):  # an element type: "f32", "bf16"
            return value.get_type_name()
        return value if isinstance(value, (str, int, float, list)) else str(value)

    return {
        "device": prop("FULL_DEVICE_NAME"),
        "capabilities": prop("OPTIMIZATION_CAPABILITIES"),
        "default_inference_precision": prop("INFERENCE_PRECISION_HINT"),
    }


def bin_bytes(xml: Path) -> int:
    return xml.with_suffix(".bin").stat().st_size

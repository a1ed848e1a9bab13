"""The converted model's activations (int8 ones dequantized), read out of LiteRT for ``edgekd.runtime.divergence``.

LiteRT keeps every intermediate tensor when asked (``experimental_preserve_all_tensors``). Each site is
found through the lowering's name scopes in the converter's fused tensor names (``verify.owner``), on the
site's own scale; of several such tensors (a grouped convolution's parts), the whole one. A 4-D tensor the
lowering holds in NHWC (a spatial op's output) is transposed back to the ONNX layout; one it holds in the
ONNX layout (a Reshape's 4-D output, as MaxViT's window partitions) is read as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.backends.tflite.graph import lowering_scopes
from edgekd.backends.tflite.verify import owner


def tap(model_path: Path, sites, model, feed):
    """``feed(interpreter, x)`` sets the input as the session does; returns x → {site tensor: values}."""
    from ai_edge_litert.interpreter import Interpreter

    scopes = lowering_scopes(model.graph)
    onnx_shapes = _static_shapes(model)
    order = {s: i for i, s in enumerate(scopes)}
    interp = Interpreter(model_path=str(model_path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    carried: dict[str, list[dict]] = {}
    for d in interp.get_tensor_details():
        scope, derived = owner(d["name"], order)
        if scope is not None and not derived and (d["quantization"][0] or d["dtype"] == np.float32):
            carried.setdefault(scopes[scope], []).append(d)
    given = interp.get_input_details()[0]
    if given["quantization"][0]:  # the int8 input is the graph input's pair, as the runner quantizes it
        carried[model.graph.input[0].name] = [given]
    chosen = {}
    for s in sites:
        scale = float(np.max(s.scale))
        same_grid = [
            d
            for d in carried.get(s.tensor, [])
            if (abs(d["quantization"][0] - scale) <= 1e-6 * scale if s.integer else d["dtype"] == np.float32)
        ]
        if same_grid and s.scale.size == 1:
            chosen[s.tensor] = max(same_grid, key=lambda d: int(np.prod(d["shape"])))

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        feed(interp, x)
        interp.invoke()
        out = {}
        for tensor, d in chosen.items():
            scale, zero = d["quantization"]
            y = interp.get_tensor(d["index"]).astype(np.float32)
            y = (y - zero) * np.float32(scale) if scale else y
            out[tensor] = y.transpose(0, 3, 1, 2) if held_nhwc(y.shape, onnx_shapes.get(tensor)) else y
        return out

    return run


def held_nhwc(shape: tuple[int, ...], onnx_shape: tuple[int, ...] | None) -> bool:
    """Whether LiteRT's tensor of ``shape`` holds the ONNX tensor of ``onnx_shape`` channels last. Only the
    shapes tell: a 4-D tensor of another shape than the ONNX one (or of an unknown one) is a spatial op's
    output in NHWC; where both layouts fit (C = H = W) it is taken for one too, as most are."""
    if len(shape) != 4:
        return False
    if onnx_shape is None or tuple(shape) != tuple(onnx_shape):
        return True
    return tuple(shape) == (onnx_shape[0], *onnx_shape[2:], onnx_shape[1])


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    out = {}
    for v in values:
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[v.name] = tuple(d.dim_value for d in dims)
    return out

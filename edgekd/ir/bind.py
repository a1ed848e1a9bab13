"""Binding a model's dynamic and symbolic input dimensions to the shape the user compiles for.

Exporters write unknown dimensions as symbols (``N``, ``height``), as empty dims, or as ``-1``/``0``;
all of them bind to the shape given. Only a fixed dimension that differs is a mismatch.
"""

from __future__ import annotations

from typing import Sequence

import onnx
import onnx_ir as ir

from edgekd.errors import InputShapeError

Dim = int | str | None  # a fixed size, a symbol, or unknown


def proto_dims(value_info: onnx.ValueInfoProto) -> list[Dim]:
    """The declared dimensions of a graph input: ints where fixed (> 0), the symbol or None where not."""
    dims: list[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return dims


def describe(dims: Sequence[Dim]) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in dims) + ")"


def bind_shape(name: str, dims: Sequence[Dim], shape: Sequence[int] | None) -> tuple[int, ...]:
    """The concrete input shape: ``shape`` checked against the model's ``dims``, or, without a shape,
    the model's own dims with a dynamic batch taken as 1. Fails when a fixed dim differs, when the rank
    differs, or when no shape is given and a dim other than the batch is unknown."""
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if not dims:  # a model that declares no shape at all takes what the user says
            return shape
        fixed_mismatch = [i for i, (d, s) in enumerate(zip(dims, shape)) if isinstance(d, int) and d != s]
        if len(dims) != len(shape) or fixed_mismatch:
            what = (
                f"rank {len(shape)} vs {len(dims)}"
                if len(dims) != len(shape)
                else "fixed dim " + ", ".join(f"{i} is {dims[i]}" for i in fixed_mismatch)
            )
            raise InputShapeError(
                f"--input-shape {shape} does not match the model's input {name!r} of shape "
                f"{describe(dims)} ({what}); only its dynamic dims can be chosen"
            )
        return shape
    if dims and all(isinstance(d, int) for d in dims[1:]):
        return (dims[0] if isinstance(dims[0], int) else 1, *dims[1:])
    raise InputShapeError(
        f"the model's input {name!r} has dynamic dimensions {describe(dims)}",
        f"pass --input-shape with a size for each, e.g. 1,3,224,224 for {describe(dims)}",
    )


def bind_graph_input(model: ir.Model, shape: Sequence[int]) -> list[str]:
    """Sets the (one) data input of ``model`` to ``shape``; returns the symbols it bound ('?' for
    unnamed dims). Initializers that older exporters also list as graph inputs are not data inputs."""
    data = [v for v in model.graph.inputs if not v.is_initializer()]
    if len(data) != 1:
        raise InputShapeError(f"the model has {len(data)} data inputs; edgekd compiles single-input image models")
    value = data[0]
    old = [
        d if isinstance(d, int) and d > 0 else (d.value if isinstance(d, ir.SymbolicDim) else None)
        for d in (value.shape if value.shape is not None else [])
    ]
    bind_shape(value.name, old, shape)
    bound = [d or "?" for d in old if not isinstance(d, int)]
    value.shape = ir.Shape(list(shape))
    return bound

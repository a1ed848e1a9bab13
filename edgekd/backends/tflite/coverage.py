"""What LiteRT executes: the flatbuffer's ops as its interpreter reads them, each with the types of the
tensors it reads. Names are the output tensors' (the lowering's name scopes); MACs come from the
weight and output shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.backends.base import ExecutedLayer

INTEGER = (np.int8, np.uint8, np.int16)
# Ops that move data or change its type: not compute layers.
NOT_LAYERS = frozenset(
    {
        "QUANTIZE",
        "DEQUANTIZE",
        "RESHAPE",
        "TRANSPOSE",
        "SQUEEZE",
        "EXPAND_DIMS",
        "PAD",
        "PADV2",
        "STRIDED_SLICE",
        "SLICE",
        "SPLIT",
        "SPLIT_V",
        "GATHER",
        "CONCATENATION",
        "PACK",
        "UNPACK",
        "SHAPE",
    }
)


def _macs(op: str, weight: tuple[int, ...], out: tuple[int, ...]) -> int:
    n = int(np.prod(out))
    if op == "CONV_2D":
        return n * int(np.prod(weight[1:]))  # filter [O, kh, kw, I]
    if op == "DEPTHWISE_CONV_2D":
        return n * int(np.prod(weight[1:3]))  # filter [1, kh, kw, O]
    if op in ("FULLY_CONNECTED", "TRANSPOSE_CONV"):
        return n * int(np.prod(weight[1:]))
    return 0


def executed_layers(model_path: Path) -> list[ExecutedLayer]:
    from edgekd.backends.tflite.verify import interpreter

    interp = interpreter(Path(model_path), delegates=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    layers = []
    for op in interp._get_ops_details():  # private but long-stable (see verify.py)
        kind = op["op_name"]
        ins = [int(i) for i in op["inputs"] if i >= 0]
        outs = [int(i) for i in op["outputs"] if i >= 0]
        if kind in NOT_LAYERS or not ins or not outs:
            continue
        first, out = tensors[ins[0]], tensors[outs[0]]
        weight = tuple(int(d) for d in tensors[ins[1]]["shape"]) if len(ins) > 1 else ()
        layers.append(
            ExecutedLayer(
                out["name"],
                kind,
                first["dtype"] in INTEGER,
                kind,
                _macs(kind, weight, tuple(int(d) for d in out["shape"])),
            )
        )
    return layers

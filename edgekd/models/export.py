"""torch.nn.Module → ONNX, the one export every caller uses (the export pass, `edgekd inspect`)."""

from __future__ import annotations

import io
import warnings
from typing import Sequence

from edgekd.errors import InputShapeError


def output_count(module, shape: Sequence[int]) -> int:
    """How many outputs the module returns for a zero input of ``shape``."""
    import torch

    with torch.no_grad():
        try:
            outputs = module.eval()(torch.zeros(tuple(shape), dtype=torch.float32))
        except RuntimeError as e:
            raise InputShapeError(f"the model does not accept input shape {tuple(shape)}: {e}") from e
    return len(outputs) if isinstance(outputs, (tuple, list)) else 1


def export_onnx(module, shape: Sequence[int], opset: int, input_name: str = "input", fold_constants: bool = True):
    """The module as a checked ``onnx.ModelProto``: one input of ``shape``, outputs named ``output``
    (or ``output0``, ``output1``, …). With ``fold_constants`` torch's exporter already folds eval-mode
    BatchNormalization into Conv; without it, BN nodes stay for the fuse pass (as they do in graphs
    from other frameworks)."""
    import onnx
    import torch

    n_out = output_count(module, shape)
    named = getattr(module, "output_names", None)  # e.g. a decoded detector's ("boxes", "scores")
    if named and len(named) == n_out:
        output_names = list(named)
    else:
        output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices are not the user's business
        torch.onnx.export(
            module.eval(),
            (torch.zeros(tuple(shape), dtype=torch.float32),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=output_names,
            do_constant_folding=fold_constants,
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto

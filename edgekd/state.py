"""The one object that flows through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgekd.config import CompileConfig, InputSpec
from edgekd.specs import TargetSpec

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import nn

# Facts a pass may require or provide. Kept as strings so a user's pass can add its own.
TORCH_MODEL = "torch-model"
ONNX_MODEL = "onnx-model"
BN_FOLDED = "bn-folded"
ACTIVATIONS_MARKED = "activations-marked"
CALIBRATED = "calibrated"
SENSITIVITY = "sensitivity-measured"
QUANTIZED = "quantized"
EMITTED = "emitted"


@dataclass
class PassRecord:
    name: str
    changed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None  # filled by the timing instrument


@dataclass
class CompileState:
    spec: TargetSpec
    config: CompileConfig
    input: InputSpec
    workdir: Path  # where emit writes; becomes the artifact directory
    torch_model: "nn.Module | None" = None
    onnx_model: "ir.Model | None" = None
    # Outputs the artifact must reproduce: model input batch → list of output arrays.
    reference: Callable[[np.ndarray], list[np.ndarray]] | None = None
    reference_name: str = ""
    float_reference: Callable[[np.ndarray], list[np.ndarray]] | None = None  # the float model, kept after quantize
    float_onnx: bytes | None = None  # the float graph just before quantization
    keep_float: set[str] = field(default_factory=set)  # layers passes chose to keep in float
    labels: tuple[str, ...] | None = None
    calibration: Any = None
    qparams: dict[str, Any] = field(default_factory=dict)
    facts: set[str] = field(default_factory=set)
    records: list[PassRecord] = field(default_factory=list)
    artifact_files: list[str] = field(default_factory=list)  # relative to workdir
    # fidelity, accuracy, model profile; "backend": what the backend checked and wants in the manifest
    metrics: dict[str, Any] = field(default_factory=dict)
    emit: Callable[[str], None] | None = None  # progress lines for long passes (training), when someone listens

    @property
    def precision(self) -> str:
        return self.config.precision or self.spec.default_precision

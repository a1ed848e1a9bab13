"""The one object that flows through the pipeline, and the typed records passes leave in it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from edgekd.config import CompileConfig, InputSpec
from edgekd.runtime import RunFn
from edgekd.specs import TargetSpec

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import nn

    from edgekd.quant.calibrate import Calibration

# Facts a pass may require or provide. Kept as strings so a user's pass can add its own.
TORCH_MODEL = "torch-model"
ONNX_MODEL = "onnx-model"
BN_FOLDED = "bn-folded"
ACTIVATIONS_MARKED = "activations-marked"
CALIBRATED = "calibrated"
SENSITIVITY = "sensitivity-measured"
QUANTIZED = "quantized"
EMITTED = "emitted"


@dataclass(frozen=True)
class PassOutput:
    """What a pass produced, as typed fields. ``section`` names the manifest entry the output fills
    (None: it shows only in the pass list); ``summary()`` is its line in the pass list."""

    section: ClassVar[str | None] = None

    def to_manifest(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, Any]:
        return self.to_manifest()


@dataclass(frozen=True)
class Metrics(PassOutput):
    """Free-form figures, for passes (a user's own) that have no typed output of their own."""

    values: dict[str, Any] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass(frozen=True)
class SourceInfo:
    """The model the compile started from."""

    model: str
    kind: str  # torch | onnx
    sha256: str | None
    weights: str | None


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    sqnr_db: float  # output SQNR with only this layer quantized; lower is more sensitive


@dataclass
class PassRecord:
    name: str
    changed: bool
    output: PassOutput | None = None
    seconds: float | None = None  # filled by the timing instrument

    @property
    def metrics(self) -> dict[str, Any]:
        return self.output.summary() if self.output is not None else {}


Output = TypeVar("Output", bound=PassOutput)


@dataclass
class CompileState:
    spec: TargetSpec
    config: CompileConfig
    input: InputSpec
    workdir: Path  # where emit writes; becomes the artifact directory
    torch_model: "nn.Module | None" = None
    onnx_model: "ir.Model | None" = None
    source: SourceInfo | None = None
    # Outputs the artifact must reproduce: model input batch → list of output arrays.
    reference: RunFn | None = None
    reference_name: str = ""
    float_reference: RunFn | None = None  # the float model, kept after quantize
    float_onnx: bytes | None = None  # the float graph just before quantization
    labels: tuple[str, ...] | None = None
    calibration: "Calibration | None" = None
    sensitivity: tuple[LayerSensitivity, ...] = ()  # most sensitive first
    keep_float: set[str] = field(default_factory=set)  # layers in float: the user's names and what passes chose
    float_region: frozenset[str] = frozenset()  # a quantized detector's float decode and heads (no Q/DQ there)
    qparams: dict[str, Any] = field(default_factory=dict)
    facts: set[str] = field(default_factory=set)
    records: list[PassRecord] = field(default_factory=list)
    artifact_files: list[str] = field(default_factory=list)  # relative to workdir
    emit: Callable[[str], None] | None = None  # progress lines for long passes (training), when someone listens

    def __post_init__(self) -> None:
        self.keep_float |= set(self.config.quantization.keep_float)

    @property
    def precision(self) -> str:
        return self.config.precision or self.spec.default_precision

    @property
    def quantized(self) -> bool:
        """Whether the graph now carries Q/DQ (an int8 compile whose quantize pass ran)."""
        return QUANTIZED in self.facts

    def output(self, kind: type[Output]) -> Output | None:
        """The latest output of that type a pass left, or None."""
        return next((r.output for r in reversed(self.records) if isinstance(r.output, kind)), None)

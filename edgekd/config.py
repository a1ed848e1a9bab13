"""The user's choices for one compile, grouped by the pass that reads them, frozen and written into
the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from edgekd.data.preprocess import Preprocess
from edgekd.errors import ConfigError

CONFIG_VERSION = 2


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: its ONNX name, NCHW/NHWC shape, and how pixels become values."""

    name: str = "input"
    shape: tuple[int, ...] | None = None
    dtype: str = "float32"
    preprocess: Preprocess = field(default_factory=Preprocess)


@dataclass(frozen=True)
class CalibrationOptions:
    data: Path | None = None  # sample images or .npy/.npz (verification too, calibration for int8)
    samples: int | None = 512  # at most this many calibration samples (None: all)
    batch: int = 32  # samples per observer update (EMA step) when the graph allows it
    # No observer is best for every model: on the converged CIFAR-10 teacher, min/max over every sample is 6 dB
    # closer to float than EMA (whose first batch keeps most of the weight and clips later images), but the
    # people-det detectors keep less mAP with it (the student on openvino-cpu: 97.6 % of float with EMA over
    # batches of 4, 92.7 % with min/max, 96.5 % with mse); EMA stays the default until one wins on both.
    method: str = "ema"  # ema | minmax | percentile | mse
    ema_constant: float = 0.01
    percentile: float = 99.99
    activation_scheme: str | None = None  # None: the target's


@dataclass(frozen=True)
class QuantizationOptions:
    keep_float: tuple[str, ...] = ()  # layer (node) names kept in float
    keep_float_count: int = 0  # keep the N most sensitive layers in float
    sensitivity_samples: int = 32


@dataclass(frozen=True)
class EvaluationOptions:
    data: Path | None = None  # labelled image folder for float vs quantized top-1
    samples: int | None = 1000
    max_drop: float | None = None  # top-1 points; with data, return layers to float until met


@dataclass(frozen=True)
class TrainingOptions:
    student: str | None = None
    data: Path | None = None
    epochs: int = 10
    sparsity: float | None = None
    sparsity_pattern: str = "unstructured"  # unstructured | 2:4
    options: Mapping[str, Any] = field(default_factory=dict)  # edgekd.distill.options.KNOWN
    resume: bool = False  # continue distillation / sparsity training from <output>.checkpoints


@dataclass(frozen=True)
class QATOptions:
    epochs: int = 0  # quantization-aware training after calibration (0: none asked for)
    ranges: str = "learn"  # learn (LSQ-style, by gradient) | ema (moving average of batch min/max)
    lr: float = 0.0005  # QAT fine-tunes a trained model: far below distillation's learning rate
    alpha: float = 1.0  # KD share of the loss; below 1 mixes in cross-entropy on the labels
    fallback_epochs: int = 3  # QAT run when --max-drop is missed after PTQ and mixed precision (0: fail instead)


@dataclass(frozen=True)
class VerificationOptions:
    samples: int = 16
    keep_failed: bool = False


@dataclass(frozen=True)
class DetectionOptions:
    """``--nms``: NonMaxSuppression inside the artifact, after the float decode (targets whose runtime has
    the op); without it the runner does NMS. The thresholds are the deployed ones, baked into the graph."""

    nms: bool = False
    conf: float = 0.25  # a box whose best class scores below this is never returned
    iou: float = 0.7  # a box overlapping a better one of its class by more than this is dropped
    max_det: int = 300  # most boxes kept per class and image


@dataclass(frozen=True)
class SearchOptions:
    """``--precision auto`` and ``--latency-budget``: where candidates are timed, and how."""

    device: str | None = None  # None: --bench's device, else the target's bench device
    inventory: Path | None = None  # device inventory for SSH boards
    latency_budget_ms: float | None = None  # keep only students at most this slow on the device
    proxy_epochs: int = 1  # distillation epochs that rank the students within the budget
    repeats: int = 3  # interleaved timing repeats per candidate

    def for_candidate(self) -> "SearchOptions":
        """A candidate's compile searches nothing and is timed by the search, not by its own flags."""
        return replace(self, latency_budget_ms=None, device=None, inventory=None)


@dataclass(frozen=True)
class CompileConfig:
    model: str
    target: str
    output: Path
    force: bool = False
    weights: Path | None = None
    allow_pickle: bool = False
    input: InputSpec = field(default_factory=InputSpec)
    labels: tuple[str, ...] | None = None
    precision: str | None = None  # None: the target's default; "auto": the fastest within --max-drop
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    qat: QATOptions = field(default_factory=QATOptions)
    verification: VerificationOptions = field(default_factory=VerificationOptions)
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    search: SearchOptions = field(default_factory=SearchOptions)
    passes: tuple[str, ...] | None = None  # None: the target's default pipeline
    skip: tuple[str, ...] = ()
    bench: str | None = None
    seed: int = 0

    def input_paths(self) -> list[Path]:
        """Every file or folder this compile reads: an output must never hold one of them."""
        candidates = [
            Path(self.model),
            self.weights,
            self.calibration.data,
            self.evaluation.data,
            self.training.data,
            Path(self.target),
        ]
        return [p for p in candidates if p is not None and p.exists()]

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return {"version": CONFIG_VERSION, **plain(asdict(self))}


# The flat option names of the CLI and of api.make_config → (group, field).
FLAT_OPTIONS: dict[str, tuple[str, str]] = {
    "calib": ("calibration", "data"),
    "calib_samples": ("calibration", "samples"),
    "calib_batch": ("calibration", "batch"),
    "calib_method": ("calibration", "method"),
    "ema_constant": ("calibration", "ema_constant"),
    "percentile": ("calibration", "percentile"),
    "activation_scheme": ("calibration", "activation_scheme"),
    "keep_float": ("quantization", "keep_float"),
    "keep_float_count": ("quantization", "keep_float_count"),
    "sensitivity_samples": ("quantization", "sensitivity_samples"),
    "eval": ("evaluation", "data"),
    "eval_samples": ("evaluation", "samples"),
    "max_drop": ("evaluation", "max_drop"),
    "student": ("training", "student"),
    "data": ("training", "data"),
    "epochs": ("training", "epochs"),
    "sparsity": ("training", "sparsity"),
    "sparsity_pattern": ("training", "sparsity_pattern"),
    "train_options": ("training", "options"),
    "resume": ("training", "resume"),
    "qat_epochs": ("qat", "epochs"),
    "qat_ranges": ("qat", "ranges"),
    "qat_lr": ("qat", "lr"),
    "qat_alpha": ("qat", "alpha"),
    "qat_fallback_epochs": ("qat", "fallback_epochs"),
    "verify_samples": ("verification", "samples"),
    "keep_failed": ("verification", "keep_failed"),
    "nms": ("detection", "nms"),
    "nms_conf": ("detection", "conf"),
    "nms_iou": ("detection", "iou"),
    "nms_max_det": ("detection", "max_det"),
    "device": ("search", "device"),
    "inventory": ("search", "inventory"),
    "latency_budget": ("search", "latency_budget_ms"),
    "proxy_epochs": ("search", "proxy_epochs"),
    "search_repeats": ("search", "repeats"),
}
_GROUPS = {
    "calibration": CalibrationOptions,
    "quantization": QuantizationOptions,
    "evaluation": EvaluationOptions,
    "training": TrainingOptions,
    "qat": QATOptions,
    "verification": VerificationOptions,
    "detection": DetectionOptions,
    "search": SearchOptions,
}
_PATHS = {"calib", "eval", "data", "inventory"}


def grouped_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Flat options (``calib=..., max_drop=...``) → CompileConfig keyword arguments with the groups built;
    top-level fields pass through, unknown names raise."""
    top = {f.name for f in fields(CompileConfig)}
    groups: dict[str, dict[str, Any]] = {g: {} for g in _GROUPS}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in FLAT_OPTIONS:
            group, name = FLAT_OPTIONS[key]
            groups[group][name] = Path(value) if key in _PATHS and value is not None else value
        elif key in top:
            out[key] = value
        else:
            raise ConfigError(f"unknown compile option {key!r}", f"known: {', '.join(sorted(set(FLAT_OPTIONS) | top))}")
    for group, kwargs in groups.items():
        if kwargs:
            out[group] = _GROUPS[group](**kwargs)
    return out

"""The user's choices for one compile, frozen and written into the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgekd.data.preprocess import Preprocess

CONFIG_VERSION = 1


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: its ONNX name, NCHW/NHWC shape, and how pixels become values."""

    name: str = "input"
    shape: tuple[int, ...] | None = None
    dtype: str = "float32"
    preprocess: Preprocess = field(default_factory=Preprocess)


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
    precision: str | None = None  # None: the target's default
    calib: Path | None = None
    calib_samples: int | None = 512  # at most this many calibration samples (None: all)
    calib_batch: int = 32  # samples per observer update (EMA step) when the graph allows it
    calib_method: str = "ema"  # ema | minmax | percentile
    ema_constant: float = 0.01
    percentile: float = 99.99
    activation_scheme: str | None = None  # None: the target's
    keep_float: tuple[str, ...] = ()  # layer (node) names kept in float
    keep_float_count: int = 0  # keep the N most sensitive layers in float
    sensitivity_samples: int = 32
    eval: Path | None = None  # labelled image folder for float vs quantized top-1
    eval_samples: int | None = 1000
    max_drop: float | None = None  # top-1 points; with --eval, return layers to float until met
    student: str | None = None
    data: Path | None = None
    epochs: int = 10
    sparsity: float | None = None
    sparsity_pattern: str = "unstructured"  # unstructured | 2:4
    train_options: Mapping[str, Any] = field(default_factory=dict)  # edgekd.distill.options.KNOWN
    resume: bool = False  # continue distillation / sparsity training from <output>.checkpoints
    passes: tuple[str, ...] | None = None  # None: the target's default pipeline
    skip: tuple[str, ...] = ()
    verify_samples: int = 16
    keep_failed: bool = False
    bench: str | None = None
    seed: int = 0

    def input_paths(self) -> list[Path]:
        """Every file or folder this compile reads: an output must never hold one of them."""
        candidates = [Path(self.model), self.weights, self.calib, self.eval, self.data, Path(self.target)]
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

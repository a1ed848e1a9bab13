"""Measures activation ranges on sample data with the configured observer (EMA min/max by default)."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from edgekd.config import CompileConfig
from edgekd.data.folder import scan_image_folder
from edgekd.data.samples import count_samples, iter_batches
from edgekd.errors import ConfigError, UnknownNameError, UnsupportedOpsError
from edgekd.ir.detector import looks_like_detector
from edgekd.ir.normalize import INTEGER_PIXELS, integer_reader
from edgekd.passes.base import Pass, PassResult
from edgekd.quant.calibrate import Calibration, observe
from edgekd.quant.observers import make_observer
from edgekd.quant.placement import target_plan
from edgekd.specs import DEFAULT_PLACEMENT, TargetSpec
from edgekd.state import ACTIVATIONS_MARKED, BN_FOLDED, CALIBRATED, ONNX_MODEL, CompileState, PassOutput

MIN_SAMPLES = 256
DETECTOR_MIN_SAMPLES = 300  # a detector's ranges depend on how many objects, of which sizes, the images hold


class CalibrationWarning(UserWarning):
    pass


def source_hash(path: Path, limit: int | None) -> str:
    if path.suffix in (".npy", ".npz"):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    folder = scan_image_folder(path)
    return folder.subset(range(min(len(folder), limit or len(folder)))).content_hash()


@dataclass(frozen=True)
class CalibrationOutput(PassOutput):
    section = "calibration"

    samples: int
    source: str
    sha256: str
    method: str
    scheme: str
    placement: str
    tensors: int
    observer_args: dict = field(default_factory=dict)

    def to_manifest(self) -> dict:
        return {
            "samples": self.samples,
            "source": self.source,
            "sha256": self.sha256,
            "method": self.method,
            **self.observer_args,
            "scheme": self.scheme,
            "placement": self.placement,
        }

    def summary(self) -> dict:
        return {"samples": self.samples, "tensors": self.tensors, "method": self.method}


def check_layer_names(state: CompileState) -> None:
    """--keep-float names must name layers of this graph; a typo would otherwise be recorded and ignored."""
    nodes = {n.name for n in state.onnx_model.graph}
    unknown = sorted(set(state.config.quantization.keep_float) - nodes)
    if unknown:
        weighted = [n.name for n in state.onnx_model.graph if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
        raise UnknownNameError(
            "layer for --keep-float",
            unknown[0],
            weighted[:30],
            hint=f"layers with weights: {', '.join(weighted[:12])}"
            f"{', …' if len(weighted) > 12 else ''} (`edgekd inspect` lists all)",
        )


def check_float_input(graph: ir.Graph) -> None:
    """An integer pixel input that canonicalize could not make float (the model computes on the integers before
    any Cast) gets a named error here, not ONNX Runtime's 'Unexpected input data type' from inside calibration."""
    first = graph.inputs[0]
    if first.dtype in INTEGER_PIXELS:
        node = integer_reader(first)
        where = f" ({node.op_type} {node.name!r})" if node is not None else ""
        raise UnsupportedOpsError(
            f"input {first.name!r} holds {first.dtype.name.lower()} pixels that the model computes on as integers"
            f"{where} before converting them to float; int8 quantization starts from a float graph",
            "re-export the model with a float input, or with a Cast to float right after the input (layout ops "
            "such as a Transpose may come first); --precision fp32 compiles it as it is",
        )


class CalibratePass(Pass):
    name = "calibrate"
    requires = frozenset({ONNX_MODEL, BN_FOLDED, ACTIVATIONS_MARKED})
    provides = frozenset({CALIBRATED})

    def __init__(
        self,
        data: Path,
        scheme: str,
        method: str = "ema",
        limit: int | None = 512,
        batch: int = 32,
        placement: str | None = None,
        **observer_args,
    ):
        self.data, self.scheme, self.method, self.limit, self.batch = Path(data), scheme, method, limit, batch
        self.placement = placement or DEFAULT_PLACEMENT[scheme]
        self.observer_args = observer_args
        make_observer(method, **observer_args)  # bad names and arguments fail at build time

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "CalibratePass":
        c = config.calibration
        if c.data is None:
            raise ConfigError(
                "int8 needs calibration data", "pass --calib DIR (an image folder or .npy/.npz of samples)"
            )
        args = {"ema": {"averaging_constant": c.ema_constant}, "percentile": {"percentile": c.percentile}}
        scheme = c.activation_scheme or spec.activation_scheme
        return cls(c.data, scheme, c.method, c.samples, c.batch, spec.placement_for(scheme), **args.get(c.method, {}))

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return (config.precision or spec.default_precision) == "int8"

    def run(self, state: CompileState) -> PassResult:
        check_layer_names(state)
        check_float_input(state.onnx_model.graph)
        available = count_samples(self.data)
        n = min(available, self.limit) if self.limit else available
        detector = looks_like_detector(state.onnx_model.graph)
        minimum = DETECTOR_MIN_SAMPLES if detector else MIN_SAMPLES
        if n < minimum:
            warnings.warn(
                f"calibrating {'a detector ' if detector else ''}on {n} samples; use at least {minimum}"
                f"{' images like those it will see (e.g. a YOLO train/images folder)' if detector else ''}",
                CalibrationWarning,
                stacklevel=2,
            )
        plan = target_plan(state.onnx_model, state.spec, self.placement)
        proto = ir.to_proto(state.onnx_model)
        batches = iter_batches(self.data, state.input.preprocess, tuple(state.input.shape), limit=n)
        observers, seen = observe(
            proto, plan.observed, batches, lambda t: make_observer(self.method, **self.observer_args), self.batch
        )
        state.calibration = Calibration(
            self.scheme, plan, observers, seen, str(self.data), source_hash(self.data, n), self.method
        )
        return PassResult(
            state,
            changed=False,
            output=CalibrationOutput(
                seen,
                str(self.data),
                state.calibration.sha256,
                self.method,
                self.scheme,
                self.placement,
                len(observers),
                dict(self.observer_args),
            ),
        )

"""One interface every backend implements: emit the artifact, run it in its official runtime."""

from __future__ import annotations

import abc
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from edgekd.errors import EdgekdError, ToolchainMissingError
from edgekd.runtime import RunFn

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

    from edgekd.runtime.divergence import Site, TapFn
    from edgekd.specs import TargetSpec


@dataclass(frozen=True)
class EmitInput:
    """What a backend needs to write its artifact."""

    model: "ir.Model"  # the graph to emit; with Q/DQ when quantized (then it is also the simulation)
    spec: "TargetSpec"
    precision: str
    quantized: bool  # Q/DQ in the graph (int8 whose quantize pass ran)
    qparams: dict[str, Any]  # tensor → {scale, zero_point, ...} as the quantizer wrote them
    keep_float: frozenset[str]  # layers the compile keeps in float
    input_shape: tuple[int, ...]
    float_onnx: bytes | None  # the float graph just before quantization
    outdir: Path
    float_region: frozenset[str] = frozenset()  # nodes the quantizer left float in a Q/DQ graph (detector tail)


@dataclass
class EmitResult:
    """The files written (relative to ``outdir``), the backend's report for the manifest, and a failure
    found after writing (an artifact that is not what was asked), raised once the files are recorded so
    that --keep-failed can keep them."""

    files: list[str]
    report: dict[str, Any] | None = None
    failure: EdgekdError | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str, ...]
    dtype: str
    layout: str | None = None
    scale: float | None = None  # set when the tensor is quantized
    zero_point: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}
        if self.scale is not None:
            d["quantization"] = {"scale": self.scale, "zero_point": self.zero_point}
        return d


@dataclass(frozen=True)
class ExecutedLayer:
    """One compute layer as the runtime compiled it: whether its kernel computes on integers."""

    name: str  # the emitted ONNX node it comes from, else the runtime's name for it
    op: str  # the ONNX op type, else the runtime's
    integer: bool
    kernel: str  # the runtime's op or kernel
    macs: int = 0  # multiply-accumulates (weighted layers)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "integer": self.integer, "kernel": self.kernel, "macs": self.macs}


@dataclass(frozen=True)
class Unsupported:
    """A node the target cannot run, and the rule it breaks."""

    node: str
    op: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "reason": self.reason}


class Backend(abc.ABC):
    name: ClassVar[str]
    runtime: ClassVar[str]  # the runner's name for the runtime that executes the artifact
    # True where the runtime here only stands in for the device's (Ascend: ONNX Runtime for the NPU's .om):
    # its outputs verify the artifact, its timings say nothing about the device.
    local_stand_in: ClassVar[bool] = False
    packages: ClassVar[tuple[str, ...]]  # distributions that must be installed
    modules: ClassVar[tuple[str, ...]]  # modules imported at call time
    extra: ClassVar[str | None] = None  # pip extra that installs them
    # The activation schemes (edgekd.quant.qparams.SCHEMES) the runtime computes; None: every one.
    activation_schemes: ClassVar[tuple[str, ...] | None] = None
    # canonicalize rewrites (CanonicalReport.rewrites keys) this runtime computes wrongly: not applied
    wrong_after: ClassVar[frozenset[str]] = frozenset()
    # whether an int8 artifact may keep layers in float (--keep-float); TFLite full int8 may not
    float_layers: ClassVar[bool] = True

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def require(self) -> None:
        if not self.available():
            missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
            how = f"pip install 'edgekd[{self.extra}]'" if self.extra else f"pip install {' '.join(self.packages)}"
            raise ToolchainMissingError(f"backend {self.name} needs {', '.join(missing)}, which is not installed", how)

    def toolchain_versions(self) -> dict[str, str]:
        out = {}
        for dist in self.packages:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = "not installed"
        return out

    def unsupported(self, model: "onnx.ModelProto", spec: "TargetSpec") -> list[Unsupported]:
        """Nodes this target cannot run. The default reads the spec's ``[ops] supported`` list, when it
        has one; backends add their own constraints (strides, kernel sizes, opset, ...)."""
        allowed = spec.raw.get("ops", {}).get("supported")
        if not allowed:
            return []
        return [
            Unsupported(n.name or n.op_type, n.op_type, f"{n.op_type} is not supported by {spec.name}")
            for n in model.graph.node
            if n.op_type not in allowed and n.op_type != "Constant"
        ]

    def float_only(self, model: "onnx.ModelProto", spec: "TargetSpec") -> list[Unsupported]:
        """Nodes this backend runs only in float. A target that runs int8 with no float layer between
        the edges (TFLite full int8) cannot take them in an int8 compile; the others ignore this."""
        return []

    def benchmark(
        self,
        artifact: Path,
        manifest: dict[str, Any],
        device,
        settings,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, Any], float] | None:
        """For a runtime timed by its own tool on the device (TensorRT's trtexec): (result, start time).
        None: edgekd's runner times the artifact, which is what most runtimes want."""
        return None

    def executed_layers(self, model_path: Path, model: "ir.Model") -> list[ExecutedLayer] | None:
        """The compute layers of the artifact as the runtime compiled it, in execution order (layout moves
        and quantize/dequantize steps left out); ``model`` is the emitted graph. None: the runtime cannot
        be asked here (an engine built on the board)."""
        return None

    def tap(self, model_path: Path, sites: list["Site"], model: "onnx.ModelProto") -> "TapFn | None":
        """The artifact run with the values at ``sites`` of ``model`` (the graph it was emitted from) read
        out, dequantized: where verify's disagreement starts (edgekd.runtime.divergence). None: the runtime
        cannot be read inside here."""
        return None

    @abc.abstractmethod
    def emit(self, inp: EmitInput) -> EmitResult:
        """Writes the model file(s) into ``inp.outdir``."""

    @abc.abstractmethod
    def main_file(self, files: list[str]) -> str:
        """Of the emitted files, the one a runtime loads."""

    @abc.abstractmethod
    def session(self, model_path: Path, threads: int = 1) -> RunFn:
        """Loads the artifact in the official runtime; returns batch → outputs."""

    @abc.abstractmethod
    def io(self, model_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """Inputs and outputs as the runtime sees them."""

"""What really runs in int8: the emitted artifact's layers as its runtime compiled them (ONNX Runtime's
optimized graph, OpenVINO's runtime model, LiteRT's ops), whether each kernel computes on integers,
the share of the multiply-accumulates that does, and the float islands between integer layers."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.backends import get_backend
from edgekd.backends.base import ExecutedLayer
from edgekd.config import CompileConfig
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, CompileState, PassOutput


@dataclass(frozen=True)
class Int8CoverageOutput(PassOutput):
    section = "int8_coverage"

    backend: str
    measured: bool  # False: the runtime cannot be asked on this machine (see note)
    layers: tuple[ExecutedLayer, ...] = ()
    note: str | None = None

    @property
    def int8_macs(self) -> int:
        return sum(layer.macs for layer in self.layers if layer.integer)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def coverage(self) -> float | None:
        """Share of the multiply-accumulates on integer kernels (of the layers, when none has MACs)."""
        if not self.layers:
            return None
        if self.macs:
            return self.int8_macs / self.macs
        return sum(1 for layer in self.layers if layer.integer) / len(self.layers)

    def float_islands(self) -> list[list[ExecutedLayer]]:
        """Runs of float layers in execution order: each is dequantized into, computed in float, and
        quantized out of."""
        islands: list[list[ExecutedLayer]] = []
        for prev, layer in zip((None, *self.layers), self.layers, strict=False):
            if layer.integer:
                continue
            if prev is None or prev.integer or not islands:
                islands.append([])
            islands[-1].append(layer)
        return islands

    def to_manifest(self) -> dict:
        if not self.measured:
            return {"measured": False, "backend": self.backend, "note": self.note}
        return {
            "measured": True,
            "backend": self.backend,
            "coverage_macs": self.coverage,
            "int8_layers": sum(1 for layer in self.layers if layer.integer),
            "layers": len(self.layers),
            "int8_macs": self.int8_macs,
            "macs": self.macs,
            "float_islands": [
                {
                    "layers": list(dict.fromkeys(x.name for x in run)),
                    "ops": [x.op for x in run],
                    "macs": sum(x.macs for x in run),
                }
                for run in self.float_islands()
            ],
            "per_layer": [layer.to_dict() for layer in self.layers],
        }

    def summary(self) -> dict:
        if not self.measured:
            return {"measured": False}
        return {
            "coverage_macs": round(self.coverage, 4) if self.coverage is not None else None,
            "int8_layers": sum(1 for layer in self.layers if layer.integer),
            "layers": len(self.layers),
            "float_islands": len(self.float_islands()),
        }


class Int8CoveragePass(Pass):
    name = "int8-coverage"
    requires = frozenset({EMITTED})

    def __init__(self, backend: str):
        self.backend = get_backend(backend)

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "Int8CoveragePass":
        return cls(spec.backend)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return (config.precision or spec.default_precision) == "int8"

    def run(self, state: CompileState) -> PassResult:
        path = state.workdir / self.backend.main_file(state.artifact_files)
        layers = self.backend.executed_layers(path, state.onnx_model)
        if layers is None:
            note = f"{self.backend.name} compiles the artifact on the device; its runtime graph is not read here"
            return PassResult(state, changed=False, output=Int8CoverageOutput(self.backend.name, False, note=note))
        return PassResult(state, changed=False, output=Int8CoverageOutput(self.backend.name, True, tuple(layers)))

"""Whether the int8 artifact pays off on this machine: it and the float graph, emitted by the same backend
and run by the same runtime, timed in turn over a few repeats. An int8 artifact slower than float is
recorded (``int8_slower``), shown in the report and by the CLI, never shipped silently.

Runs for targets whose benchmark device is this machine (``[bench] device = "local"``); a board's
speed is measured on the board (``edgekd compile --precision auto --device NAME``)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.backends import get_backend
from edgekd.backends.base import EmitInput
from edgekd.config import CompileConfig
from edgekd.passes.base import Pass, PassResult
from edgekd.runtime.timing import REPEATS, interleaved, ratio
from edgekd.specs import TargetSpec
from edgekd.state import EMITTED, CompileState, PassOutput


@dataclass(frozen=True)
class SpeedCheckOutput(PassOutput):
    section = "speed_check"

    runtime: str
    threads: int
    float_ms: tuple[float, ...]  # median latency per repeat, interleaved with the artifact's
    artifact_ms: tuple[float, ...]
    measured_on: str = "this machine"

    @property
    def speedup(self):
        return ratio(list(self.float_ms), list(self.artifact_ms))

    @property
    def int8_slower(self) -> bool:
        """Slower in every repeat: noise cannot make a faster artifact look slower in all of them."""
        return self.speedup.high < 1.0

    def to_manifest(self) -> dict:
        return {
            "runtime": self.runtime,
            "threads": self.threads,
            "measured_on": self.measured_on,
            "float_ms": list(self.float_ms),
            "artifact_ms": list(self.artifact_ms),
            "speedup": self.speedup.to_dict(),
            "int8_slower": self.int8_slower,
        }

    def summary(self) -> dict:
        s = self.speedup
        return {
            "speedup": round(s.median, 2),
            "spread": [round(s.low, 2), round(s.high, 2)],
            "int8_slower": self.int8_slower,
        }


def float_artifact(backend, state: CompileState, outdir: Path) -> Path:
    """The float graph before quantization, emitted by the same backend into ``outdir`` (with the same graph
    NMS as the int8 artifact, so that both time the same work)."""
    import onnx
    import onnx_ir as ir

    from edgekd.passes.graph_nms import GraphNmsOutput

    model = ir.from_proto(onnx.load_from_string(state.float_onnx))
    if (nms := state.output(GraphNmsOutput)) is not None:
        nms.apply_to(model)
    result = backend.emit(
        EmitInput(
            model=model,
            spec=state.spec,
            precision="fp32",
            quantized=False,
            qparams={},
            keep_float=frozenset(),
            input_shape=tuple(state.input.shape),
            float_onnx=None,
            outdir=outdir,
        )
    )
    return outdir / backend.main_file(result.files)


class SpeedCheckPass(Pass):
    name = "speed-check"
    requires = frozenset({EMITTED})

    def __init__(self, backend: str, threads: int = 2, repeats: int = REPEATS, iterations: int = 30):
        self.backend, self.threads = get_backend(backend), threads
        self.repeats, self.iterations = repeats, iterations

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "SpeedCheckPass":
        return cls(spec.backend, spec.bench.threads)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        int8 = (config.precision or spec.default_precision) == "int8"
        return int8 and spec.bench.device == "local" and not get_backend(spec.backend).local_stand_in

    def run(self, state: CompileState) -> PassResult:
        if state.float_onnx is None:  # nothing was quantized: there is no float graph to compare with
            return PassResult(state, changed=False)
        x = np.random.default_rng(0).standard_normal(tuple(state.input.shape)).astype(np.float32)
        with tempfile.TemporaryDirectory(prefix="edgekd-float-") as d:
            float_run = self.backend.session(float_artifact(self.backend, state, Path(d)), self.threads)
            art_run = self.backend.session(state.workdir / self.backend.main_file(state.artifact_files), self.threads)
            series = interleaved(
                {"float": lambda: float_run(x), "int8": lambda: art_run(x)}, self.repeats, self.iterations
            )
        return PassResult(
            state,
            changed=False,
            output=SpeedCheckOutput(self.backend.runtime, self.threads, tuple(series["float"]), tuple(series["int8"])),
        )

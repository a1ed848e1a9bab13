"""``--nms``: NonMaxSuppression appended to the graph the backend emits, after the float decode, on targets
whose runtime has the op (the spec's ``[detection] graph_nms``). Without ``--nms`` the runner does NMS."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.config import CompileConfig, DetectionOptions
from edgekd.detect.graph_nms import add_nms
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, CompileState, PassOutput


@dataclass(frozen=True)
class GraphNmsOutput(PassOutput):
    section = "nms"

    conf: float
    iou: float
    max_det: int

    def to_manifest(self) -> dict:
        return {"where": "graph", "op": "NonMaxSuppression", **self.summary()}

    def summary(self) -> dict:
        return {"conf": self.conf, "iou": self.iou, "max_per_class": self.max_det, "output": "selected"}

    def apply_to(self, model) -> None:
        """Appends this NMS to ``model`` (also to the float artifact the speed check times)."""
        add_nms(model, iou_threshold=self.iou, score_threshold=self.conf, max_per_class=self.max_det)


class GraphNmsPass(Pass):
    name = "nms"
    requires = frozenset({ONNX_MODEL})

    def __init__(self, options: DetectionOptions):
        self.options = options

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "GraphNmsPass":
        return cls(config.detection)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return config.detection.nms

    def run(self, state: CompileState) -> PassResult:
        output = GraphNmsOutput(self.options.conf, self.options.iou, self.options.max_det)
        output.apply_to(state.onnx_model)
        return PassResult(state, changed=True, output=output)

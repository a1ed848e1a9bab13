"""Fails early, with every offending node by name, when the target cannot run the graph —
instead of failing later inside a converter."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.errors import EdgekdError, UnsupportedOpsError
from edgekd.ir.canonical import canonicalize
from edgekd.passes.base import Pass, PassResult
from edgekd.passes.canonicalize import CANONICAL, ops_to_decompose
from edgekd.passes.support_groups import describe_groups, group_unsupported
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, CompileState, PassOutput


@dataclass(frozen=True)
class CheckSupportOutput(PassOutput):
    nodes_checked: int


def canonical_unsupported(backend, model: ir.Model, shape: tuple[int, ...], spec: TargetSpec) -> list | None:
    """What ``backend`` cannot run in the canonical form of ``model`` (a copy); None when it has none."""
    try:
        canonical, _ = canonicalize(
            ir.from_proto(ir.to_proto(model)), shape, spec.opset_range, spec.opset, ops_to_decompose(spec)
        )
    except EdgekdError:
        return None
    return backend.unsupported(ir.to_proto(canonical), spec)


class CheckSupportPass(Pass):
    name = "check-support"
    requires = frozenset({ONNX_MODEL})

    def __init__(self, spec: TargetSpec, int8: bool = False):
        self.spec = spec
        self.backend = get_backend(spec.backend)
        self.int8 = int8

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "CheckSupportPass":
        return cls(spec, (config.precision or spec.default_precision) == "int8")

    def run(self, state: CompileState) -> PassResult:
        proto = ir.to_proto(state.onnx_model)
        bad = self.backend.unsupported(proto, self.spec)
        if not bad and self.int8 and (forced := self.backend.float_only(proto, self.spec)):
            raise UnsupportedOpsError(
                describe_groups(group_unsupported(forced), self.spec.name).replace("cannot run on", "force float on", 1)
                + f"\n{self.spec.name} runs int8 with no float layer between input and output",
                f"compile with --precision fp32 for {self.spec.name}, replace these ops in the model, or compile int8 "
                "for a target that keeps float layers (onnx-cpu, openvino-cpu)",
            )
        if bad:
            after = None
            if CANONICAL not in state.facts:  # say what the canonicalize pass would have removed
                after = canonical_unsupported(self.backend, state.onnx_model, tuple(state.input.shape), self.spec)
            raise UnsupportedOpsError(describe_groups(group_unsupported(bad, after), self.spec.name))
        return PassResult(state, changed=False, output=CheckSupportOutput(len(state.onnx_model.graph)))

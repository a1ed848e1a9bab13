"""Fails early, with every offending node by name, when the target cannot run the graph —
instead of failing later inside a converter."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.errors import UnsupportedOpsError
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, CompileState, PassOutput


@dataclass(frozen=True)
class CheckSupportOutput(PassOutput):
    nodes_checked: int


class CheckSupportPass(Pass):
    name = "check-support"
    requires = frozenset({ONNX_MODEL})

    def __init__(self, spec: TargetSpec):
        self.spec = spec
        self.backend = get_backend(spec.backend)

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "CheckSupportPass":
        return cls(spec)

    def run(self, state: CompileState) -> PassResult:
        bad = self.backend.unsupported(ir.to_proto(state.onnx_model), self.spec)
        if bad:
            listing = "\n".join(f"  {u.node} ({u.op}): {u.reason}" for u in bad[:50])
            more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
            raise UnsupportedOpsError(f"{len(bad)} node(s) cannot run on {self.spec.name}:\n{listing}{more}")
        return PassResult(state, changed=False, output=CheckSupportOutput(len(state.onnx_model.graph)))

"""Brings a graph from any exporter to the canonical form the later passes and the backends expect:
input shape bound, opset inside the target's range, constants and shape subgraphs folded, no-ops
gone, BatchNorm/affine/Div/Sum patterns normalized (``edgekd.ir.canonical``). The manifest gets
every rewrite as counts per kind."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.config import CompileConfig
from edgekd.ir.canonical import CanonicalReport, canonicalize
from edgekd.passes.base import Pass, PassResult
from edgekd.quant.qdq import QDQ_MIN_OPSET
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, CompileState, PassOutput

CANONICAL = "canonical"  # fact: the graph went through import canonicalization


@dataclass(frozen=True)
class CanonicalizeOutput(PassOutput):
    report: CanonicalReport

    def to_manifest(self) -> dict:
        return self.report.to_dict()


class CanonicalizePass(Pass):
    name = "canonicalize"
    requires = frozenset({ONNX_MODEL})
    provides = frozenset({CANONICAL})

    def __init__(self, opset_range: tuple[int, int], opset: int):
        self.opset_range, self.opset = opset_range, opset

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "CanonicalizePass":
        lo, hi = spec.opset_range
        if (config.precision or spec.default_precision) == "int8" and hi >= QDQ_MIN_OPSET:
            lo = max(lo, QDQ_MIN_OPSET)  # per-channel DequantizeLinear needs it: convert up first
        return cls((lo, hi), min(max(spec.opset, lo), hi))

    def run(self, state: CompileState) -> PassResult:
        state.onnx_model, report = canonicalize(state.onnx_model, tuple(state.input.shape), self.opset_range,
                                                self.opset)
        return PassResult(state, changed=report.changed, output=CanonicalizeOutput(report))

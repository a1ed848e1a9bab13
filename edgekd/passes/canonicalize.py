"""Brings a graph from any exporter to the canonical form the later passes and the backends expect:
input shape bound, opset inside the target's range, constants and shape subgraphs folded, no-ops
gone, BatchNorm/affine/Div/Sum patterns normalized (``edgekd.ir.canonical``). The manifest gets
every rewrite as counts per kind."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd.backends import get_backend
from edgekd.config import CompileConfig
from edgekd.ir.canonical import CanonicalReport, canonicalize
from edgekd.passes.base import Pass, PassResult
from edgekd.quant.qdq import QDQ_MIN_OPSET
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, CompileState, PassOutput

CANONICAL = "canonical"  # fact: the graph went through import canonicalization
# Fused ops canonicalize writes out in primitives when a target cannot run them: (op, its opset).
DECOMPOSABLE = (("LayerNormalization", 17),)


def ops_to_decompose(spec: TargetSpec) -> frozenset[str]:
    """The decomposable ops ``spec``'s target lacks: its opset range ends below the op's opset, or its
    backend refuses a one-node model of it."""
    import onnx
    from onnx import TensorProto, helper

    backend = get_backend(spec.backend)
    out = set()
    for op, opset in DECOMPOSABLE:
        if spec.opset_range[1] < opset:
            out.add(op)
            continue
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
        probe = helper.make_model(
            helper.make_graph(
                [helper.make_node(op, ["x", "scale"], ["y"], name="probe")],
                "probe",
                io[:1],
                io[1:],
                [onnx.numpy_helper.from_array(np.ones(4, np.float32), "scale")],
            ),
            opset_imports=[helper.make_opsetid("", opset)],
        )
        if backend.unsupported(probe, spec):
            out.add(op)
    return frozenset(out)


@dataclass(frozen=True)
class CanonicalizeOutput(PassOutput):
    report: CanonicalReport

    def to_manifest(self) -> dict:
        return self.report.to_dict()


class CanonicalizePass(Pass):
    name = "canonicalize"
    requires = frozenset({ONNX_MODEL})
    provides = frozenset({CANONICAL})

    def __init__(
        self,
        opset_range: tuple[int, int],
        opset: int,
        decompose: frozenset[str] = frozenset(),
        skip: frozenset[str] = frozenset(),
    ):
        self.opset_range, self.opset, self.decompose, self.skip = opset_range, opset, decompose, skip

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "CanonicalizePass":
        lo, hi = spec.opset_range
        if (config.precision or spec.default_precision) == "int8" and hi >= QDQ_MIN_OPSET:
            lo = max(lo, QDQ_MIN_OPSET)  # per-channel DequantizeLinear needs it: convert up first
        skip = get_backend(spec.backend).wrong_after
        return cls((lo, hi), min(max(spec.opset, lo), hi), ops_to_decompose(spec), skip)

    def run(self, state: CompileState) -> PassResult:
        state.onnx_model, report = canonicalize(
            state.onnx_model, tuple(state.input.shape), self.opset_range, self.opset, self.decompose, self.skip
        )
        return PassResult(state, changed=report.changed, output=CanonicalizeOutput(report))

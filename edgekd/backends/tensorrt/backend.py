"""TensorRT on Jetson boards: the artifact is what ``trtexec`` needs to build the engine on the board.

TensorRT engines are tied to the TensorRT version and the GPU that builds them, and TensorRT does
not install where edgekd compiles, so the backend emits the build inputs and the exact build
command, checked statically against the target's TensorRT rules:

* ``model.onnx`` — the explicit-quantization (Q/DQ) ONNX graph: symmetric int8, zero point 0,
  per-channel weights; int32 bias DequantizeLinear nodes were folded to float constants by the
  target's legalization pass (``fold-bias-dequantize``), since TensorRT's DequantizeLinear reads
  int8 only (the values are bit-identical).
* ``model_noqdq.onnx`` + ``calibration.cache`` — the same graph without Q/DQ and TensorRT's text
  calibration cache of its activation scales, for implicit-int8 builds: DLA takes no explicit
  quantization, so DLA builds use these (as NVIDIA's qdq-translator does).
* ``build_engine.sh`` — runs ``trtexec`` with int8 + fp16 fallback, the workspace and timing cache,
  ``--sparsity=enable`` when the target has 2:4 sparse kernels and the weights have the pattern,
  and DLA on request (``DLA_CORE=N``).

The fidelity check runs ``model.onnx`` in ONNX Runtime and says so in the manifest.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from edgekd.backends.base import EmitInput, EmitResult, Unsupported
from edgekd.backends.onnxruntime.backend import OnnxRuntimeBackend
from edgekd.backends.templates import render
from edgekd.backends.tensorrt.cache import activation_scales, header, write_cache
from edgekd.backends.tensorrt.rules import (
    TensorRTFacts,
    Violation,
    check_opset,
    check_qdq,
    default_opset,
    dla_report,
    sparsity_report,
    unsupported_ops,
)
from edgekd.errors import UnsupportedOpsError

if TYPE_CHECKING:
    import onnx

    from edgekd.specs import TargetSpec

MODEL = "model.onnx"
FLOAT_MODEL = "model_noqdq.onnx"
CACHE = "calibration.cache"
SCRIPT = "build_engine.sh"
EXECUTED_WITH = "onnxruntime (TensorRT not available here; engine is built on the board)"
QDQ_HINT = (
    "the Q/DQ graph breaks TensorRT's explicit-quantization rules; compile with the target's own "
    "activation scheme (symmetric-int8) and without hand edits, or report the graph with EDGEKD_DUMP_IR=DIR"
)


def precision_flags(precision: str) -> list[str]:
    """trtexec precision flags: int8 with fp16 fallback (layers without int8 run in fp16, not fp32)."""
    return {"int8": ["--int8", "--fp16"], "fp16": ["--fp16"], "fp32": []}[precision]


def trtexec_args(
    facts: TensorRTFacts,
    precision: str,
    sparsity: bool,
    engine: str = "model.engine",
    artifact: str = "",
    int8_mode: str = "explicit",
    dla_core: int | None = None,
    workspace_mib: int | None = None,
    timing_cache: str = "timing.cache",
) -> list[str]:
    """The argument list build_engine.sh passes to trtexec; files of the artifact are taken from
    ``artifact`` (a directory; empty: the current one)."""

    def at(name: str) -> str:
        return f"{artifact.rstrip('/')}/{name}" if artifact else name

    implicit = precision == "int8" and (int8_mode == "implicit" or dla_core is not None)
    onnx_file = FLOAT_MODEL if implicit else MODEL
    args = [f"--onnx={at(onnx_file)}", f"--saveEngine={engine}", *precision_flags(precision)]
    if implicit:
        args.append(f"--calib={at(CACHE)}")
    if sparsity:
        args.append("--sparsity=enable")
    args += [f"--memPoolSize=workspace:{workspace_mib or facts.workspace_mib}", f"--timingCacheFile={timing_cache}"]
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    args.append(facts.build_only_flag)
    return args


def build_script(facts: TensorRTFacts, spec: "TargetSpec", precision: str, sparsity: bool) -> str:
    """The bash script that builds the engine on the board with trtexec (templates/build_engine.sh)."""
    from edgekd import __version__

    return render(
        __package__,
        SCRIPT,
        TARGET=spec.name,
        TARGET_QUOTED=shlex.quote(spec.name),
        TENSORRT=facts.version,
        EDGEKD_VERSION=__version__,
        PRECISION=precision,
        DLA_CORES=int(facts.dla_cores),
        SPARSITY=int(sparsity),
        WORKSPACE_MIB=int(facts.workspace_mib),
        BUILD_ONLY_FLAG=shlex.quote(facts.build_only_flag),
    )


class TensorRTBackend(OnnxRuntimeBackend):
    """Emits for the board; here the Q/DQ ONNX runs in ONNX Runtime (session and io inherited)."""

    name = "tensorrt"
    runtime = "tensorrt"
    # Emitting needs only ONNX tooling; TensorRT itself runs on the board (build_engine.sh).
    packages = ("onnxruntime", "onnx")
    modules = ("onnxruntime", "onnx")
    activation_schemes = ("symmetric-int8",)  # TensorRT: symmetric int8, zero point 0

    def toolchain_versions(self) -> dict[str, str]:
        return {**super().toolchain_versions(), "tensorrt": "not used here: the engine is built on the board"}

    def benchmark(self, artifact, manifest, device, settings, progress=None):
        from edgekd.backends.tensorrt.jetson import run_trt_benchmark

        when: list[float] = []
        result = run_trt_benchmark(artifact, manifest, device, settings, when.append, progress)
        return result, when[0]

    # --- checks --------------------------------------------------------------------------------

    def unsupported(self, model: "onnx.ModelProto", spec: "TargetSpec") -> list[Unsupported]:
        facts = TensorRTFacts.from_spec(spec)
        found = [Unsupported("(model)", "opset", v.message) for v in check_opset(model, facts)]
        return found + unsupported_ops(model, facts)

    def validate(self, model: "onnx.ModelProto", spec: "TargetSpec") -> dict[str, Any]:
        """The static checks; raises UnsupportedOpsError listing every violation, else returns what passed."""
        facts = TensorRTFacts.from_spec(spec)
        counts, violations = check_qdq(model)
        violations = check_opset(model, facts) + violations
        violations += [Violation("op-support", u.node, u.reason) for u in unsupported_ops(model, facts)]
        if violations:
            listing = "\n".join(f"  {v}" for v in violations[:50])
            more = f"\n  ... and {len(violations) - 50} more" if len(violations) > 50 else ""
            raise UnsupportedOpsError(
                f"{len(violations)} violation(s) of TensorRT {facts.version}'s rules for {spec.name}:\n{listing}{more}",
                QDQ_HINT,
            )
        return {
            "tensorrt": facts.version,
            "opset": default_opset(model),
            "opset_allowed": list(facts.opset_range),
            "ops_checked": len(model.graph.node),
            "op_table": facts.op_source,
            **counts,
            "violations": [],
        }

    # --- emit --------------------------------------------------------------------------------------

    def emit(self, inp: EmitInput) -> EmitResult:
        import onnx
        import onnx_ir as ir

        spec, precision, outdir = inp.spec, inp.precision, inp.outdir
        facts = TensorRTFacts.from_spec(spec)
        proto = ir.to_proto(inp.model)
        checks = self.validate(proto, spec)
        ir.save(inp.model, outdir / MODEL)
        files = [MODEL]

        quantized = precision == "int8" and inp.quantized
        float_proto = proto
        report: dict[str, Any] = {
            "executed_with": EXECUTED_WITH,
            "tensorrt": facts.version,
            "jetpack": spec.raw["tensorrt"].get("jetpack"),
            "static_checks": checks,
        }
        if quantized:
            float_proto = onnx.load_from_string(inp.float_onnx)
            onnx.save(float_proto, outdir / FLOAT_MODEL)
            weights = {i.name for i in float_proto.graph.initializer}
            scales = activation_scales(inp.qparams, exclude=weights)
            write_cache(outdir / CACHE, scales, facts.version)
            files += [FLOAT_MODEL, CACHE]
            report["calibration_cache"] = {
                "file": CACHE,
                "header": header(facts.version),
                "tensors": len(scales),
                "for": f"implicit-int8 builds of {FLOAT_MODEL} (DLA_CORE=N or INT8_MODE=implicit)",
            }

        sparse = sparsity_report(proto)
        use_sparsity = facts.sparse_2to4 and bool(sparse["sparse_layers"])
        report["sparsity"] = {"gpu_has_2to4_kernels": facts.sparse_2to4, **sparse, "enabled": use_sparsity}
        if facts.dla_cores:
            report["dla"] = dla_report(float_proto, facts)

        (outdir / SCRIPT).write_text(build_script(facts, spec, precision, use_sparsity))
        (outdir / SCRIPT).chmod(0o755)
        files.append(SCRIPT)
        command = ["trtexec", *trtexec_args(facts, precision, use_sparsity)]
        report["build"] = {
            "script": SCRIPT,
            "command": shlex.join(command),
            "run_in": "the artifact directory, on the board",
        }
        if facts.dla_cores and precision != "fp32":
            dla = ["trtexec", *trtexec_args(facts, precision, use_sparsity, dla_core=0)]
            report["build"]["dla_command"] = shlex.join(dla)
        return EmitResult(files, report)

    def main_file(self, files: list[str]) -> str:
        return MODEL if MODEL in files else super().main_file(files)

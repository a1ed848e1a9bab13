"""OpenVINO IR for x86 CPUs: ``model.xml`` + ``model.bin``, run by OpenVINO Runtime's CPU plugin.

The ONNX graph (for int8 the QDQ simulation itself) goes through OpenVINO's ONNX frontend
(``openvino.convert_model``) and is saved with ``compress_to_fp16=False``, so the IR keeps fp32
weights and scales: the Q/DQ pairs become FakeQuantize nodes and i8 weight constants, which the
CPU plugin's low-precision transformations turn into u8 × i8 kernels at compile time. Emit then
compiles the IR for this machine's CPU and reads the runtime graph back (``check.py``): the
runtime precision of every weighted layer goes into ``backend_report``, and an int8 compile in
which no weighted layer runs in int8 fails.

Int8 grouped 1×1 convolutions with more than 64 input channels per group are split per group before
conversion (``grouped_conv.py``: the plugin's kernel for them computes something else).

Known difference from the simulation: the CPU plugin fuses a residual Add into the convolution
that feeds it (a oneDNN sum post-op) and drops the Q/DQ pair on that convolution's output, so the
sum is taken before the convolution's own rounding (measured on a mobilenetv3: with that pair
removed, the simulation matches the plugin's first residual join exactly; with it, 6% of the
join's values differ by a step, 1-4 output steps at the logits).

``session`` pins ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AMX or AVX512-BF16 the plugin's
default is bf16, which would compute something other than the graph; the report records the
default of the CPU it was compiled on.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.backends.base import Backend, EmitInput, EmitResult, ExecutedLayer, TensorInfo, Unsupported
from edgekd.errors import FidelityError, UnsupportedOpsError
from edgekd.runtime import RunFn, in_model_batches

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
DEVICE = "CPU"


def runtime_config(threads: int) -> dict[str, object]:
    return {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"}


def convert(model_proto) -> "object":
    """``openvino.convert_model`` on the ONNX graph. On failure the ONNX file is kept, and the error
    names the command that reproduces the failure."""
    import onnx
    import openvino as ov

    d = Path(tempfile.mkdtemp(prefix="edgekd-openvino-"))
    path = d / "model.onnx"
    onnx.save(model_proto, str(path))
    try:
        model = ov.convert_model(str(path))
    except Exception as e:  # OpConversionFailure, GeneralFailure, RuntimeError alike
        first = next((line for line in str(e).splitlines() if "operations" in line or "rror" in line), str(e)[:400])
        raise UnsupportedOpsError(
            f"OpenVINO's ONNX frontend rejected the graph: {type(e).__name__}: {first.strip()[:400]}",
            f"reproduce with `python -c \"import openvino as ov; ov.convert_model('{path}')\"`",
        ) from e
    shutil.rmtree(d, ignore_errors=True)
    return model


def _dtype(port) -> str:
    return np.dtype(port.get_element_type().to_dtype()).name


def _shape(port) -> tuple[int | str, ...]:
    return tuple(d.get_length() if d.is_static else str(d) for d in port.get_partial_shape())


class OpenVINOBackend(Backend):
    name = "openvino"
    runtime = "openvino"
    packages = ("openvino",)
    modules = ("openvino",)
    extra = "openvino"
    # ShuffleNetV2's channel shuffle as one Gather of channels followed by the Slices of the next split:
    # the CPU plugin (2026.4, f32) computed it wrongly (relative error 0.84, top-1 differing on 7 of 8
    # images) where the exporter's Reshape → Transpose → Reshape runs right.
    wrong_after = frozenset({"channel_shuffle_to_gather"})

    def unsupported(self, model, spec) -> list[Unsupported]:
        """The spec's op list, plus every node OpenVINO's ONNX frontend has no conversion rule for."""
        out = super().unsupported(model, spec)
        if not self.available():
            return out  # emit's require() names the missing package
        import onnx
        from openvino.frontend import FrontEndManager

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model.onnx"
            onnx.save(model, str(path))
            fe = FrontEndManager().load_by_framework("onnx")
            partial = fe.convert_partially(fe.load(str(path)))
        left = {op.get_friendly_name() for op in partial.get_ops() if op.get_type_name().endswith("FrameworkNode")}
        for n in model.graph.node:
            if n.name in left or (n.output and n.output[0] in left):
                op = f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                out.append(
                    Unsupported(
                        n.name or n.op_type, n.op_type, f"OpenVINO's ONNX frontend has no conversion rule for {op}"
                    )
                )
        return out

    def emit(self, inp: EmitInput) -> EmitResult:
        import onnx_ir as ir
        import openvino as ov

        from edgekd.backends.openvino.check import (
            ONNX_WEIGHTED,
            bin_bytes,
            cpu_facts,
            ir_constants,
            require_int8,
            runtime_layers,
            summarize,
        )
        from edgekd.backends.openvino.grouped_conv import split_grouped_convs

        t0 = time.perf_counter()
        proto = ir.to_proto(inp.model)
        split = split_grouped_convs(proto) if inp.quantized else []
        model = convert(proto)
        t1 = time.perf_counter()
        outdir = inp.outdir
        xml = outdir / MODEL_FILE
        ov.save_model(model, str(xml), compress_to_fp16=False)
        files = [MODEL_FILE, WEIGHTS_FILE]
        core = ov.Core()
        try:
            compiled = core.compile_model(str(xml), DEVICE, runtime_config(1))
        except RuntimeError as e:
            repro = Path(tempfile.mkdtemp(prefix="edgekd-openvino-"))
            for f in files:
                shutil.copyfile(outdir / f, repro / f)
            raise UnsupportedOpsError(
                f"OpenVINO's {DEVICE} plugin cannot compile the IR: {str(e).strip().splitlines()[-1][:400]}",
                f"reproduce with `python -c \"import openvino as ov; ov.Core().compile_model('{repro / MODEL_FILE}', "
                f"'{DEVICE}')\"`",
            ) from e
        t2 = time.perf_counter()
        weighted = [n for n in inp.model.graph if n.op_type in ONNX_WEIGHTED]
        outputs = {v.name: n.name for n in weighted for v in n.outputs}
        layers = runtime_layers(compiled, {n.name for n in weighted}, outputs)
        saved = ov.Core().read_model(str(xml))
        cpu = cpu_facts(core)
        report = {
            "openvino": ov.get_version(),
            "checked_on": cpu,
            "convert": {
                "seconds": round(t1 - t0, 3),
                "compress_to_fp16": False,
                "grouped_convs_split": split,  # grouped_conv.py: the plugin's int8 kernel computes them wrongly
            },
            "ir": {
                "constants": ir_constants(saved),
                "bin_bytes": bin_bytes(xml),
                "fake_quantize": sum(1 for op in saved.get_ops() if op.get_type_name() == "FakeQuantize"),
            },
            "compile": {"seconds": round(t2 - t1, 3), "device": DEVICE, "config": runtime_config(1)},
            **summarize(layers, set(inp.keep_float)),
            "layers": layers,
        }
        failure = None
        if inp.precision == "int8":
            try:
                require_int8(report, cpu["device"] or DEVICE)
            except FidelityError as e:
                failure = e
        return EmitResult(files, report, failure)

    def executed_layers(self, model_path: Path, model) -> list[ExecutedLayer]:
        import onnx_ir as ir
        import openvino as ov

        from edgekd.backends.openvino.check import executed_layers
        from edgekd.ir.profile import node_macs

        compiled = ov.Core().compile_model(str(model_path), DEVICE, runtime_config(1))
        outputs = {v.name: n.name for n in model.graph for v in n.outputs}
        return executed_layers(
            compiled, {n.name: n.op_type for n in model.graph}, outputs, node_macs(ir.to_proto(model))
        )

    def main_file(self, files: list[str]) -> str:
        return next(f for f in files if f.endswith(".xml"))

    def session(self, model_path: Path, threads: int = 1) -> RunFn:
        import openvino as ov

        compiled = ov.Core().compile_model(str(model_path), DEVICE, runtime_config(threads))
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)  # the IR keeps the ONNX graph's output order
        first = compiled.inputs[0].get_partial_shape()[0]
        batch = first.get_length() if first.is_static else None

        def one(x: np.ndarray) -> list[np.ndarray]:
            results = request.infer({0: x})
            return [np.array(results[o], copy=True) for o in outputs]  # the request reuses its buffers

        return in_model_batches(one, batch)

    def tap(self, model_path: Path, sites, model):
        """The sites' dequantized tensors (FakeQuantize outputs in the IR) as extra results."""
        import openvino as ov

        core = ov.Core()
        artifact = core.read_model(str(model_path))
        named = {n for op in artifact.get_ops() for port in op.outputs() for n in port.get_names()}
        kept = [s for s in sites if s.dequantized in named]
        if kept:
            artifact.add_outputs([s.dequantized for s in kept])
        compiled = core.compile_model(artifact, DEVICE, runtime_config(1))

        def run(x):
            got = {n: v for port, v in compiled(x).items() for n in port.get_names()}
            return {s.tensor: got[s.dequantized] for s in kept if s.dequantized in got}

        return run

    def io(self, model_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
        import openvino as ov

        model = ov.Core().read_model(str(model_path))

        def info(port) -> TensorInfo:  # no layout: the IR keeps the source's, which the manifest takes
            return TensorInfo(port.get_any_name(), _shape(port), _dtype(port))

        return [info(p) for p in model.inputs], [info(p) for p in model.outputs]

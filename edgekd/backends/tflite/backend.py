"""TFLite (LiteRT): a full-int8 flatbuffer for ARM CPUs (Raspberry Pi, phones), run by XNNPACK.

The QDQ ONNX graph is lowered to a TF function whose fake-quant nodes carry edgekd's own ranges
(``lower.py``), converted with ``optimizations=[DEFAULT]`` and no representative dataset, so the
flatbuffer holds the simulation's scales and zero points rather than ranges the converter measured
itself; ``verify.py`` then reads the flatbuffer back and fails the compile when it is not fully
int8 or its ranges differ. A float graph (precision fp32) is lowered the same way and converted as is.

The artifact takes NHWC input (int8 by default: quantize with the input's scale and zero point);
4-D outputs are NHWC too. ``session`` hides both: it takes and returns what the ONNX model does.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.backends.base import Backend, EmitInput, EmitResult, TensorInfo, Unsupported
from edgekd.errors import ConfigError, UnsupportedOpsError
from edgekd.runtime import RunFn, in_model_batches

IO_TYPES = ("int8", "float32")
MODEL_FILE = "model.tflite"


def _io_type(opts: dict[str, Any], key: str) -> str:
    value = opts.get(key, "int8")
    if value not in IO_TYPES:
        raise ConfigError(
            f"[tflite] {key} = {value!r} is not one of {', '.join(IO_TYPES)}",
            "int8 feeds the model quantized input; float32 adds QUANTIZE/DEQUANTIZE at the edges",
        )
    return value


def _import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ INFO lines
    import tensorflow as tf

    return tf


def convert(lowered, quantized: bool, input_type: str = "int8", output_type: str = "int8") -> bytes:
    """The TFLite converter on the lowered function. On failure, saves the function as a SavedModel
    with a script that reproduces the conversion, and names both in the error."""
    import warnings

    tf = _import_tf()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([lowered.function], lowered.module)
    if quantized:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.int8 if input_type == "int8" else tf.float32
        converter.inference_output_type = tf.int8 if output_type == "int8" else tf.float32
    try:
        with warnings.catch_warnings():
            # "Statistics for quantized inputs were expected": the fake quants are the statistics
            warnings.simplefilter("ignore", UserWarning)
            return converter.convert()
    except Exception as e:  # the converter raises ConverterError and plain exceptions alike
        repro = _save_repro(tf, lowered, quantized, input_type, output_type)
        first = next(
            (line for line in str(e).splitlines() if "error" in line.lower()), str(e).splitlines()[0] if str(e) else ""
        )
        raise UnsupportedOpsError(
            f"the TFLite converter rejected the lowered graph: {type(e).__name__}: {first[:400]}",
            f"reproduce with `python {repro / 'convert.py'}` (the lowered graph is saved beside it)",
        ) from e


def _save_repro(tf, lowered, quantized: bool, input_type: str, output_type: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix="edgekd-tflite-repro-"))
    tf.saved_model.save(lowered.module, str(d / "saved_model"), signatures=lowered.function)
    opts = (
        [
            "c.optimizations = [tf.lite.Optimize.DEFAULT]",
            f"c.inference_input_type = tf.{input_type}",
            f"c.inference_output_type = tf.{output_type}",
        ]
        if quantized
        else []
    )
    (d / "convert.py").write_text(
        "\n".join(
            [
                "import pathlib, tensorflow as tf",
                "here = pathlib.Path(__file__).parent",
                "c = tf.lite.TFLiteConverter.from_saved_model(str(here / 'saved_model'))",
                *opts,
                "(here / 'model.tflite').write_bytes(c.convert())",
                "",
            ]
        )
    )
    return d


def _feed(interp, x: np.ndarray) -> None:
    """An NCHW float batch into the interpreter's NHWC input, quantized where the input is int8 (as the
    benchmark runner does on a board)."""
    from edgekd.data.frames import quantize_input

    inp = interp.get_input_details()[0]
    x = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    if inp["dtype"] == np.int8:
        x = quantize_input(x, *inp["quantization"], np.int8)
    interp.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))


class TFLiteBackend(Backend):
    name = "tflite"
    runtime = "litert"
    packages = ("tensorflow-cpu", "ai-edge-litert")
    modules = ("tensorflow", "ai_edge_litert")
    extra = "tflite"
    activation_schemes = ("asymmetric-int8", "symmetric-int8")  # TFLite's int8 spec: activations are int8
    float_layers = False

    def toolchain_versions(self) -> dict[str, str]:
        out = super().toolchain_versions()
        if out.get("tensorflow-cpu") == "not installed":  # the full tensorflow wheel works as well
            try:
                out["tensorflow"] = importlib.metadata.version("tensorflow")
                del out["tensorflow-cpu"]
            except importlib.metadata.PackageNotFoundError:
                pass
        return out

    def unsupported(self, model, spec) -> list[Unsupported]:
        from edgekd.backends.tflite.rules import unsupported_nodes

        return super().unsupported(model, spec) + unsupported_nodes(model)

    def float_only(self, model, spec) -> list[Unsupported]:
        from edgekd.backends.tflite.rules import float_only_nodes

        return float_only_nodes(model)

    def emit(self, inp: EmitInput) -> EmitResult:
        import onnx_ir as ir

        from edgekd.backends.tflite.lower import lower
        from edgekd.backends.tflite.verify import check_flatbuffer, delegation, name_io

        opts = inp.spec.raw.get("tflite", {})
        quantized = inp.quantized
        kept = sorted(inp.keep_float)
        if quantized and kept and not self.float_layers:
            raise UnsupportedOpsError(
                f"{inp.spec.name} runs full int8, with no float layers; kept in float: {', '.join(kept)}",
                "drop --keep-float / --keep-float-count (or loosen --max-drop), calibrate better, or compile "
                "for a target that mixes precisions (onnx-cpu)",
            )
        in_type, out_type = (
            (_io_type(opts, "input_type"), _io_type(opts, "output_type")) if quantized else ("float32", "float32")
        )
        decode_nodes = inp.float_region if quantized else frozenset()
        decode = frozenset(v.name for n in inp.model.graph if n.name in decode_nodes for v in n.outputs)
        if decode:
            out_type = "float32"  # a detector's boxes and scores leave its float decode as they are
        _import_tf()
        t0 = time.perf_counter()
        lowered = lower(ir.to_proto(inp.model), decode_nodes)
        t1 = time.perf_counter()
        content = name_io(convert(lowered, quantized, in_type, out_type), lowered)
        t2 = time.perf_counter()
        report = check_flatbuffer(content, lowered, inp.qparams, quantized, decode)
        report["float_decode_nodes"] = len(decode)
        report["xnnpack"] = delegation(content, int(opts.get("threads", 1)))
        (inp.outdir / MODEL_FILE).write_bytes(content)
        _, outputs = self.io(inp.outdir / MODEL_FILE)
        report.update(
            {
                "lowering": {"seconds": round(t1 - t0, 3), "fake_quants": lowered.fake_quants, "layout": "NHWC"},
                "converter": {
                    "seconds": round(t2 - t1, 3),
                    "optimizations": ["DEFAULT"] if quantized else [],
                    "representative_dataset": None,
                    "inference_input_type": in_type,
                    "inference_output_type": out_type,
                },
                "layouts": {
                    "input": "NHWC" if len(lowered.input_shape) == 4 else None,
                    "outputs": {info.name: info.layout for info in outputs},
                },
            }
        )
        return EmitResult([MODEL_FILE], report)

    def executed_layers(self, model_path: Path, model) -> list:
        from edgekd.backends.tflite.coverage import executed_layers

        return executed_layers(model_path)

    def main_file(self, files: list[str]) -> str:
        return next(f for f in files if f.endswith(".tflite"))

    def session(self, model_path: Path, threads: int = 1) -> RunFn:
        from edgekd.backends.tflite.verify import interpreter

        interp = interpreter(Path(model_path), threads)
        outs = interp.get_output_details()

        def one(x: np.ndarray) -> list[np.ndarray]:
            _feed(interp, x)
            interp.invoke()
            results = []
            for o in outs:
                y = interp.get_tensor(o["index"])
                if o["dtype"] == np.int8:
                    s, zp = o["quantization"]
                    y = (y.astype(np.int32) - zp).astype(np.float32) * np.float32(s)
                results.append(y.transpose(0, 3, 1, 2) if y.ndim == 4 else y)
            return results

        return in_model_batches(one, int(interp.get_input_details()[0]["shape"][0]))

    def tap(self, model_path: Path, sites, model):
        from edgekd.backends.tflite.tap import tap

        return tap(model_path, sites, model, _feed)

    def io(self, model_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
        from edgekd.backends.tflite.verify import interpreter

        interp = interpreter(Path(model_path), delegates=False)

        def info(d) -> TensorInfo:
            shape = tuple(int(s) for s in d["shape"])
            scale, zp = d["quantization"]
            quant = d["dtype"] == np.int8
            return TensorInfo(
                d["name"],
                shape,
                d["dtype"].__name__,
                "NHWC" if len(shape) == 4 else None,
                float(scale) if quant else None,
                int(zp) if quant else None,
            )

        return [info(d) for d in interp.get_input_details()], [info(d) for d in interp.get_output_details()]

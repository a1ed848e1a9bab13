"""Backends by name. Each module is imported when its backend is first used, and each backend
imports its SDK only at call time, so a user without OpenVINO can still compile for TFLite."""

from __future__ import annotations

import importlib

from edgekd.backends.base import Backend
from edgekd.errors import UnknownNameError

BACKENDS: dict[str, str] = {
    "onnxruntime": "edgekd.backends.onnxruntime.backend:OnnxRuntimeBackend",
    "tflite": "edgekd.backends.tflite.backend:TFLiteBackend",
    "openvino": "edgekd.backends.openvino.backend:OpenVINOBackend",
    "tensorrt": "edgekd.backends.tensorrt.backend:TensorRTBackend",
    "ascend": "edgekd.backends.ascend.backend:AscendBackend",
}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, list(BACKENDS))
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str) -> Backend:
    return backend_class(name)()

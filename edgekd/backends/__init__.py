"""Backends by name. SDKs are imported inside each backend, at call time."""

from __future__ import annotations

from edgekd.backends.base import Backend
from edgekd.backends.onnxrt import OnnxRuntimeBackend
from edgekd.errors import UnknownNameError

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (OnnxRuntimeBackend,)}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, list(BACKENDS))
    return BACKENDS[name]()

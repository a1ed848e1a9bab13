"""TensorRT's text calibration cache, the input of implicit-quantization (``trtexec --calib``) builds.

The format, as TensorRT writes it and reads it back::

    TRT-8502-EntropyCalibration2
    input: 3c010a14
    /features/features.0/Clip_output_0: 3d1a7b3e

The header names the TensorRT version (``NV_TENSORRT_VERSION``: major*1000 + minor*100 + patch up to
8.x, major*10000 + minor*100 + patch from 10.0) and the calibrator. Each further line is a tensor name,
``": "``, and the tensor's scale (amax / 127) as the 8 hex digits of its big-endian IEEE-754 float32 bits.
TensorRT multiplies the scale by 127 to get the tensor's dynamic range. Names may themselves contain
``": "`` (ONNX names are free text), so a line is split at its last ``": "``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekd.errors import ConfigError, DataError

CALIBRATORS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def version_code(version: str) -> int:
    """``"8.5.2"`` → 8502, ``"10.3.0"`` → 100300: the integer TensorRT writes in the cache header."""
    parts = version.split(".")
    try:
        major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    except ValueError:
        raise ConfigError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR[.PATCH]") from None
    if minor > 99 or patch > 99:
        raise ConfigError(f"TensorRT version {version!r}: minor and patch must be below 100")
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def header(version: str, calibrator: str = "EntropyCalibration2") -> str:
    if calibrator not in CALIBRATORS:
        raise ConfigError(f"unknown TensorRT calibrator {calibrator!r}", f"use one of {', '.join(CALIBRATORS)}")
    return f"TRT-{version_code(version)}-{calibrator}"


def scale_to_hex(scale: float) -> str:
    """The float32 bits of ``scale``, big-endian, as 8 lower-case hex digits."""
    value = np.float32(scale)
    if not (np.isfinite(value) and value > 0):
        raise DataError(f"a calibration scale must be finite and positive, got {scale!r}")
    return struct.pack(">f", value).hex()


def hex_to_scale(digits: str) -> float:
    """Inverse of :func:`scale_to_hex`; also takes TensorRT's unpadded form (``0`` for a zero scale)."""
    digits = digits.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{1,8}", digits):
        raise DataError(f"{digits!r} is not a hexadecimal float32")
    return float(struct.unpack(">f", bytes.fromhex(digits.zfill(8)))[0])


def activation_scales(qparams: Mapping[str, Mapping[str, Any]], exclude: set[str] = frozenset()) -> dict[str, float]:
    """The per-tensor symmetric scales among ``qparams`` (the manifest's quantization tensors): the
    activations. Per-channel entries (weights), asymmetric ones, and names in ``exclude`` are left out."""
    out = {}
    for name, qp in qparams.items():
        if name in exclude or qp.get("axis") is not None or not qp.get("scheme", {}).get("symmetric"):
            continue
        if np.ndim(qp["scale"]) != 0 or np.any(np.asarray(qp["zero_point"]) != 0):
            continue
        out[name] = float(np.float32(qp["scale"]))
    return out


def format_cache(scales: Mapping[str, float], version: str, calibrator: str = "EntropyCalibration2") -> str:
    lines = [header(version, calibrator)]
    for name, scale in scales.items():
        if not name or "\n" in name:
            raise DataError(f"tensor name {name!r} cannot be written to a calibration cache")
        lines.append(f"{name}: {scale_to_hex(scale)}")
    return "\n".join(lines) + "\n"


def write_cache(path: Path, scales: Mapping[str, float], version: str, calibrator: str = "EntropyCalibration2") -> Path:
    Path(path).write_text(format_cache(scales, version, calibrator))
    return Path(path)


@dataclass(frozen=True)
class CalibrationCache:
    version_code: int
    calibrator: str
    scales: dict[str, float]  # tensor name → scale (amax = 127 × scale)


def parse_cache(text: str) -> CalibrationCache:
    lines = text.splitlines()
    m = _HEADER.match(lines[0].strip()) if lines else None
    if m is None:
        raise DataError(
            f"not a TensorRT calibration cache: first line is {lines[0][:80]!r}"
            if lines
            else "not a TensorRT calibration cache: the file is empty"
        )
    scales = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, digits = line.rpartition(": ")
        if not sep or not name:
            raise DataError(f"calibration cache line {i} is not 'tensor: hexscale': {line[:80]!r}")
        scales[name] = hex_to_scale(digits)
    return CalibrationCache(int(m.group(1)), m.group(2), scales)


def read_cache(path: Path) -> CalibrationCache:
    return parse_cache(Path(path).read_text())

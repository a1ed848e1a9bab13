"""Target specs: facts about a deployment target, read from ``targets/*.toml``. No code lives there."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError, InputNotFoundError, UnknownTargetError
from edgekd.resources import data_dir

ACTIVATION_SCHEMES = ("asymmetric-int8", "asymmetric-uint8", "symmetric-int8")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BenchDefaults:
    device: str = "local"
    threads: int = 2
    warmup: int = 10
    iterations: int = 100


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    backend: str
    device_class: str
    precisions: tuple[str, ...]
    default_precision: str
    activation_scheme: str
    opset: int
    opset_range: tuple[int, int]
    passes: tuple[str, ...] | None  # None: the default pipeline (edgekd.passes.DEFAULT_PIPELINE)
    legalize_passes: tuple[str, ...]  # target-specific passes inserted before emit
    fuse_activations: bool
    pipeline_why: str
    bench: BenchDefaults
    path: Path
    sha256: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "spec_sha256": self.sha256, "spec_path": str(self.path)}


def _get(table: dict, dotted: str, path: Path, default=...):
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise ConfigError(f"target spec {path} lacks required key {dotted!r}", "compare with targets/onnx-cpu.toml")
            return default
        node = node[part]
    return node


def parse_spec(path: Path) -> TargetSpec:
    data = path.read_bytes()
    try:
        t = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"target spec {path} is not valid TOML: {e}") from e
    precisions = tuple(_get(t, "precision.supported", path))
    default_precision = _get(t, "precision.default", path)
    scheme = _get(t, "quantization.activations", path, "asymmetric-int8")
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"target spec {path}: unknown precision {p!r}", f"use one of {', '.join(PRECISIONS)}")
    if default_precision not in precisions:
        raise ConfigError(f"target spec {path}: default precision {default_precision!r} is not in {precisions}")
    if scheme not in ACTIVATION_SCHEMES:
        raise ConfigError(f"target spec {path}: unknown activation scheme {scheme!r}", f"use one of {', '.join(ACTIVATION_SCHEMES)}")
    lo, hi = _get(t, "onnx.opset_range", path)
    opset = _get(t, "onnx.opset", path)
    if not lo <= opset <= hi:
        raise ConfigError(f"target spec {path}: opset {opset} is outside its own range [{lo}, {hi}]")
    b = t.get("bench", {})
    return TargetSpec(
        name=_get(t, "name", path),
        description=_get(t, "description", path, ""),
        backend=_get(t, "backend", path),
        device_class=_get(t, "device_class", path),
        precisions=precisions,
        default_precision=default_precision,
        activation_scheme=scheme,
        opset=opset,
        opset_range=(lo, hi),
        passes=tuple(p) if (p := _get(t, "pipeline.passes", path, None)) is not None else None,
        legalize_passes=tuple(_get(t, "pipeline.legalize", path, [])),
        fuse_activations=bool(_get(t, "pipeline.fuse_activations", path, True)),
        pipeline_why=_get(t, "pipeline.why", path, ""),
        bench=BenchDefaults(**b),
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        raw=t,
    )


def builtin_targets() -> dict[str, Path]:
    """Target specs by name. targets/ also holds backend data (op tables: ``kind = "backend-data"``)."""
    d = data_dir("targets")
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.toml")) if not _is_backend_data(p)}


def _is_backend_data(path: Path) -> bool:
    try:
        return tomllib.loads(path.read_text()).get("kind") == "backend-data"
    except tomllib.TOMLDecodeError:
        return False  # a broken spec still shows up, and fails with its parse error


def load_target(name_or_path: str | Path) -> TargetSpec:
    """A built-in target by name, or a user's spec file by path."""
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s:
        path = Path(s)
        if not path.exists():
            raise InputNotFoundError(f"target spec file {path} does not exist")
        return parse_spec(path)
    known = builtin_targets()
    if s not in known:
        raise UnknownTargetError(s, list(known))
    return parse_spec(known[s])

"""Target specs: facts about a deployment target, read from ``targets/*.toml``. No code lives there."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from edgekd.errors import ConfigError, InputNotFoundError, UnknownTargetError
from edgekd.quant.qparams import SCHEMES
from edgekd.resources import data_dir
from edgekd.schema import Key, at_least, check_table, length, non_empty

ACTIVATION_SCHEMES = tuple(SCHEMES)
PRECISIONS = ("fp32", "fp16", "int8")
# Where Q/DQ pairs go (edgekd.quant.placement): chosen per runtime from what it runs on integer kernels.
PLACEMENTS = ("outputs", "qlinear", "inputs", "quantizable-inputs", "weighted-inputs")
# A spec without ``placement``, or a compile that overrides the target's activation scheme, gets the scheme's.
DEFAULT_PLACEMENT = {
    "symmetric-int8": "inputs",
    "asymmetric-int8": "outputs",
    "asymmetric-uint8": "outputs",
    "symmetric-by-sign": "quantizable-inputs",
    "by-sign-skewed-asymmetric": "quantizable-inputs",
}


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
    placement: str  # where Q/DQ pairs go for this runtime (PLACEMENTS)
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
    graph_nms: bool = False  # [detection] graph_nms
    # [quantization] facts of the target's integer kernels (edgekd.quant.placement.plan_quantization)
    constant_operands: bool = False
    concat_grid: bool = False

    def placement_for(self, scheme: str) -> str:
        """The Q/DQ placement for ``scheme``: this runtime's for its own scheme, the scheme's default for another."""
        return self.placement if scheme == self.activation_scheme else DEFAULT_PLACEMENT[scheme]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "spec_sha256": self.sha256, "spec_path": str(self.path)}


def _get(table: dict, dotted: str, path: Path, default=...):
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise ConfigError(
                    f"target spec {path} lacks required key {dotted!r}", "compare with targets/onnx-cpu.toml"
                )
            return default
        node = node[part]
    return node


_FREE = {"why": Key("str"), "sources": Key("any")}  # prose and references, in any core table
SPEC_TABLES: dict[str, dict[str, Key]] = {
    "precision": {
        "supported": Key("str-list", required=True, check=non_empty),
        "default": Key("str", required=True),
        **_FREE,
    },
    "quantization": {
        "activations": Key("str"),
        "placement": Key("str"),
        "constant_operands": Key("bool"),
        "concat_grid": Key("bool"),
        **_FREE,
    },
    "onnx": {
        "opset": Key("int", required=True, check=at_least(7)),
        "opset_range": Key("int-list", required=True, check=length(2)),
        **_FREE,
    },
    "pipeline": {
        "passes": Key("str-list", check=non_empty),
        "legalize": Key("str-list"),
        "fuse_activations": Key("bool"),
        "fuse_conv_add": Key("bool"),
        **_FREE,
    },
    "detection": {
        "graph_nms": Key("bool"),  # the runtime runs ONNX NonMaxSuppression: --nms may put NMS in the artifact
        **_FREE,
    },
    "bench": {
        "device": Key("str"),
        "threads": Key("int", check=at_least(1)),
        "warmup": Key("int", check=at_least(0)),
        "iterations": Key("int", check=at_least(1)),
    },
}
SPEC_KEYS: dict[str, Key] = {
    "name": Key("str", required=True, check=non_empty),
    "description": Key("str"),
    "backend": Key("str", required=True),
    "device_class": Key("str", required=True),
    "kind": Key("str"),
    **{table: Key("table", required=table in ("precision", "onnx")) for table in SPEC_TABLES},
    "ops": Key("table"),  # [ops] supported = [...]: the op list a backend checks against
}


def check_spec(path: Path, t: dict) -> None:
    from edgekd.backends import BACKENDS

    hint = "compare with the built-in specs (`edgekd targets --explain onnx-cpu` shows where they live)"
    # Facts each backend reads live in a table named after it ([tensorrt], [tflite], [ascend], ...).
    check_table(f"target spec {path}", t, {**SPEC_KEYS, **{b: Key("table") for b in BACKENDS}}, hint)
    for table, keys in SPEC_TABLES.items():
        if table in t:
            check_table(f"target spec {path} [{table}]", t[table], keys, hint)


def parse_spec(path: Path) -> TargetSpec:
    if path.is_dir():
        raise ConfigError(f"target spec {path} is a folder", "pass the spec's .toml file, or a built-in target name")
    data = path.read_bytes()
    try:
        t = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"target spec {path} is not valid TOML: {e}") from e
    check_spec(path, t)
    precisions = tuple(_get(t, "precision.supported", path))
    default_precision = _get(t, "precision.default", path)
    scheme = _get(t, "quantization.activations", path, "asymmetric-int8")
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"target spec {path}: unknown precision {p!r}", f"use one of {', '.join(PRECISIONS)}")
    if default_precision not in precisions:
        raise ConfigError(f"target spec {path}: default precision {default_precision!r} is not in {precisions}")
    if scheme not in ACTIVATION_SCHEMES:
        raise ConfigError(
            f"target spec {path}: unknown activation scheme {scheme!r}", f"use one of {', '.join(ACTIVATION_SCHEMES)}"
        )
    placement = _get(t, "quantization.placement", path, DEFAULT_PLACEMENT[scheme])
    if placement not in PLACEMENTS:
        raise ConfigError(f"target spec {path}: unknown placement {placement!r}", f"use one of {', '.join(PLACEMENTS)}")
    lo, hi = _get(t, "onnx.opset_range", path)
    opset = _get(t, "onnx.opset", path)
    if lo > hi:
        raise ConfigError(f"target spec {path}: opset_range [{lo}, {hi}] is empty", "write it as [lowest, highest]")
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
        placement=placement,
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
        graph_nms=bool(_get(t, "detection.graph_nms", path, False)),
        constant_operands=bool(_get(t, "quantization.constant_operands", path, False)),
        concat_grid=bool(_get(t, "quantization.concat_grid", path, False)),
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

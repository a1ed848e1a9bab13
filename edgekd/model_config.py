"""A model card in TOML: where the model is, its input, preprocessing and labels.

[model]
source = "edgekd.models.resnet_cifar:resnet20"  # a file (relative to this card), package.module:factory or zoo name
weights = "teacher.pth"               # state_dict for a factory, loaded with weights_only=True
[input]
name = "input"
shape = [1, 3, 32, 32]
mean = [0.4914, 0.4822, 0.4465]
std = [0.2470, 0.2435, 0.2616]
scale = 0.00392156862745098           # pixel 0..255 → 0..1 before mean/std
channel_order = "RGB"
layout = "NCHW"
resize = "stretch"                    # or "letterbox" (detectors: keep the aspect ratio, pad with grey)
[labels]
names = ["airplane", ...]             # or file = "labels.txt"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from edgekd.errors import ConfigError, InputNotFoundError

_INPUT_KEYS = {"name", "shape", "mean", "std", "scale", "channel_order", "layout", "size", "resize"}


@dataclass(frozen=True)
class ModelCard:
    source: str
    weights: Path | None
    input: dict[str, Any]
    labels: tuple[str, ...] | None


def _relative(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else (base / p))


def _is_file_source(base: Path, value: str) -> bool:
    """A file next to the card (or absolute), or a name with a file suffix; not package.module:factory,
    zoo name or zoo name:width (whose ``Path.suffix`` is non-empty: ".module:factory", ".5")."""
    if (base / value).exists():
        return True
    return ":" not in value and bool(Path(value).suffix)


def read_model_card(path: str | Path) -> ModelCard:
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"model card {path} does not exist")
    try:
        t = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"model card {path} is not valid TOML: {e}") from e
    model = t.get("model", {})
    if "source" not in model:
        raise ConfigError(
            f"model card {path} has no [model] source", 'add source = "file.onnx" or "package.module:factory"'
        )
    base = path.parent
    src = model["source"]
    source = _relative(base, src) if _is_file_source(base, src) else src
    weights = Path(_relative(base, model["weights"])) if model.get("weights") else None
    inp = t.get("input", {})
    unknown = set(inp) - _INPUT_KEYS
    if unknown:
        raise ConfigError(
            f"model card {path}: unknown [input] keys {sorted(unknown)}",
            f"valid keys: {', '.join(sorted(_INPUT_KEYS))}",
        )
    labels_t = t.get("labels", {})
    labels = None
    if "names" in labels_t:
        labels = tuple(labels_t["names"])
    elif "file" in labels_t:
        lf = base / labels_t["file"]
        if not lf.exists():
            raise InputNotFoundError(f"labels file {lf} named by {path} does not exist")
        labels = tuple(line.strip() for line in lf.read_text().splitlines() if line.strip())
    return ModelCard(source, weights, dict(inp), labels)

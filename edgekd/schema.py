"""Checking a TOML table (a target spec, a device inventory entry) against the keys and types it may
hold: an unknown key, a wrong type or a value out of range is a ConfigError that names the file, the
key and what is expected, instead of a traceback somewhere later."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edgekd.errors import ConfigError


@dataclass(frozen=True)
class Key:
    kind: str  # str | int | number | bool | str-list | int-list | str-map | table | any
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # a reason the value is wrong, or None


def _kind_ok(kind: str, v: Any) -> bool:
    if kind == "any":
        return True
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "str-list":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind == "int-list":
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    if kind == "str-map":
        return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
    if kind == "table":
        return isinstance(v, dict)
    raise ValueError(kind)


def check_table(where: str, table: Any, keys: Mapping[str, Key], hint: str) -> None:
    """``where``: e.g. ``"target spec my.toml [onnx]"``; every problem is raised with ``hint``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}", hint)
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(keys))}", hint)
    for name, key in keys.items():
        if name not in table:
            if key.required:
                raise ConfigError(f"{where} lacks required key {name!r}", hint)
            continue
        value = table[name]
        if not _kind_ok(key.kind, value):
            raise ConfigError(f"{where}: {name} must be {key.kind}, got {value!r}", hint)
        reason = key.check(value) if key.check else None
        if reason:
            raise ConfigError(f"{where}: {name} {reason}, got {value!r}", hint)


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be at least {low}"


def between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must lie in [{low}, {high}]"


def length(n: int) -> Callable[[Any], str | None]:
    return lambda v: None if len(v) == n else f"must hold {n} values"


def non_empty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"

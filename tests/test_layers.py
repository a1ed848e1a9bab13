"""The layering of edgekd/, walked with ast over every import (module level and inside functions).

Arrows point down: cli → api → pipeline → passes → (distill, quant, runtime, backends via the registry)
→ state/errors. Deleting a backend is deleting one folder and one registry line, so nothing outside
a backend's folder names it, except the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
BACKENDS = sorted(p.name for p in (PACKAGE / "backends").iterdir() if (p / "__init__.py").exists())

# module prefix of the importer → module prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "edgekd.quant": (
        "edgekd.backends",
        "edgekd.passes",
        "edgekd.pipeline",
        "edgekd.api",
        "edgekd.cli",
        "edgekd.distill",
        "edgekd.bench",
    ),
    "edgekd.distill": (
        "edgekd.backends",
        "edgekd.passes",
        "edgekd.pipeline",
        "edgekd.api",
        "edgekd.cli",
        "edgekd.quant",
        "edgekd.bench",
    ),
    # quantization-aware training joins the two layers below it: quant's fake quantization, distill's trainer
    "edgekd.qat": ("edgekd.backends", "edgekd.passes", "edgekd.pipeline", "edgekd.api", "edgekd.cli", "edgekd.bench"),
    "edgekd.passes": tuple(f"edgekd.backends.{b}" for b in BACKENDS)
    + ("edgekd.api", "edgekd.cli", "edgekd.pipeline", "edgekd.bench"),
    "edgekd.runtime": (
        "edgekd.backends",
        "edgekd.passes",
        "edgekd.pipeline",
        "edgekd.api",
        "edgekd.cli",
        "edgekd.quant",
        "edgekd.distill",
        "edgekd.bench",
        "edgekd.state",
    ),
    "edgekd.backends": (
        "edgekd.passes",
        "edgekd.pipeline",
        "edgekd.api",
        "edgekd.cli",
        "edgekd.state",
        "edgekd.frontend",
        "edgekd.finalize",
        "edgekd.manifest",
    ),
    "edgekd.bench": ("edgekd.passes", "edgekd.pipeline", "edgekd.api", "edgekd.cli", "edgekd.quant", "edgekd.distill"),
    "edgekd.state": ("edgekd.passes", "edgekd.pipeline", "edgekd.api", "edgekd.cli", "edgekd.backends"),
    "edgekd.pipeline": ("edgekd.api", "edgekd.cli"),
    "edgekd.api": ("edgekd.cli",),
}
# Below the CLI nobody imports it.
EVERYONE_BUT_CLI = ("edgekd.cli",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, resolved to absolute names (``from x import y`` counts x and x.y)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("edgekd")}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_imports_inside_functions():
    assert "edgekd.backends.tflite.verify" in imports(PACKAGE / "backends" / "tflite" / "backend.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layer_table(path):
    name = module_name(path)
    bad = []
    for imported in imports(path):
        for layer, forbidden in FORBIDDEN.items():
            if under(name, layer):
                bad += [
                    f"{name} imports {imported} (a {layer} module must not import {f})"
                    for f in forbidden
                    if under(imported, f)
                ]
        if not under(name, "edgekd.cli") and name != "edgekd.__main__":
            bad += [f"{name} imports the CLI" for f in EVERYONE_BUT_CLI if under(imported, f)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_is_named_only_inside_its_folder_and_the_registry(backend):
    package = f"edgekd.backends.{backend}"
    registry = PACKAGE / "backends" / "__init__.py"
    outside = [
        module_name(p)
        for p in MODULES
        if not p.is_relative_to(PACKAGE / "backends" / backend)
        and p != registry
        and any(under(i, package) for i in imports(p))
    ]
    # A backend may build on another one's runner (TensorRT and Ascend run their ONNX here in ONNX Runtime).
    outside = [m for m in outside if not (under(m, "edgekd.backends") and backend == "onnxruntime")]
    assert not outside, f"{package} is imported by {outside}"
    assert package in registry.read_text()

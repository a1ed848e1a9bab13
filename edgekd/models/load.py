"""Loading the user's model: TorchScript .pt, torch.export .pt2, ONNX, or factory + state_dict.

Nothing here unpickles code unless the caller opts in with ``allow_pickle``.
"""

from __future__ import annotations

import hashlib
import importlib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from edgekd.errors import (
    ConfigError,
    CorruptModelError,
    FactoryError,
    InputNotFoundError,
    PickleRefusedError,
    UnknownNameError,
)
from edgekd.models.zoo import ZOO, build_model, parse_zoo_name


@dataclass
class LoadedModel:
    kind: str  # "torch" or "onnx"
    source: str
    torch_module: nn.Module | None = None
    onnx_proto: onnx.ModelProto | None = None
    sha256: str | None = None  # of the model file (and weights), when there is one


def _sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except zipfile.BadZipFile:
        return []


def _is_torchscript(names: list[str]) -> bool:
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_torch_save_zip(names: list[str]) -> bool:
    return any(n == "data.pkl" or n.endswith("/data.pkl") for n in names)


class ExportedProgramModule(nn.Module):
    """``ExportedProgram.module()`` as an ordinary module: that one raises on ``.train()``/``.eval()``.

    The graph's train/eval behaviour (BatchNorm, Dropout) was fixed when it was exported, so
    switching modes is a no-op here rather than an error.
    """

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program_module = program_module

    def train(self, mode: bool = True) -> "ExportedProgramModule":
        self.training = mode
        return self

    def forward(self, *args, **kwargs):
        return self.program_module(*args, **kwargs)


def _load_onnx(path: Path) -> LoadedModel:
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError...
        raise CorruptModelError(f"{path} is not a valid ONNX model: {type(e).__name__}: {str(e)[:300]}") from e
    return LoadedModel("onnx", str(path), onnx_proto=proto, sha256=_sha256(path))


def _load_torch_file(path: Path, allow_pickle: bool) -> LoadedModel:
    names = _zip_names(path)
    if _is_torchscript(names):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as e:
            raise CorruptModelError(f"{path} looks like TorchScript but does not load: {str(e)[:300]}") from e
        return LoadedModel("torch", str(path), torch_module=module.eval(), sha256=_sha256(path))
    if path.suffix == ".pt2" or any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in names):
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise CorruptModelError(f"{path} is not a loadable torch.export program: {str(e)[:300]}") from e
        return LoadedModel(
            "torch", str(path), torch_module=ExportedProgramModule(program.module()), sha256=_sha256(path)
        )
    # A plain torch.save file: a state_dict (needs a factory) or a pickled whole module.
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if not _is_torch_save_zip(names) and not _looks_like_legacy_pickle(path):
            raise CorruptModelError(f"{path} is neither TorchScript, torch.export, ONNX nor a torch.save file") from e
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path} is a pickled Python object (likely a whole nn.Module); refusing to unpickle it"
            ) from e
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise CorruptModelError(
                f"{path} does not unpickle: {type(e2).__name__}: {str(e2)[:300]}",
                "the module's class must be importable under the name it was saved with; "
                "a TorchScript or torch.export file, or a factory plus state_dict, avoids that",
            ) from e2
        if not isinstance(obj, nn.Module):
            raise CorruptModelError(f"{path} unpickles to {type(obj).__name__}, not an nn.Module") from e
        return LoadedModel("torch", str(path), torch_module=obj.eval(), sha256=_sha256(path))
    raise FactoryError(
        f"{path} holds a state_dict ({type(obj).__name__} of {len(obj) if hasattr(obj, '__len__') else '?'} entries), "
        "not a model",
        "pass the architecture as MODEL (package.module:factory or a zoo name) and this file as --weights",
    )


def _looks_like_legacy_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def resolve_factory(spec: str):
    """``package.module:function`` (or ``module:function``) → the callable; a zoo name (``resnet20``,
    ``mobilenetv2:0.5``) → a zero-argument builder."""
    module_name, sep, attr = spec.partition(":")
    if sep and module_name not in ZOO:
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # ImportError, or whatever the module's own top-level code raises
            raise FactoryError(
                f"cannot import {module_name!r} for factory {spec!r}: {type(e).__name__}: {e}",
                None
                if "." in module_name
                else f"zoo models: {', '.join(sorted(ZOO))}; or write package.module:function",
            ) from e
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise FactoryError(f"{module_name!r} has no callable {attr!r}")
        return fn
    try:
        parse_zoo_name(spec)
    except UnknownNameError as e:
        if module_name in ZOO:  # a zoo model with a bad width, e.g. resnet20:wide
            raise FactoryError(f"{spec!r}: {e.message}", e.hint) from None
        raise FactoryError(
            f"{spec!r} is neither a file, a zoo model nor package.module:factory",
            f"zoo models: {', '.join(e.valid)}; or write package.module:function",
        ) from None
    return lambda: build_model(spec)


def _load_factory(spec: str, weights: Path | None) -> LoadedModel:
    factory = resolve_factory(spec)
    try:
        module = factory()
    except Exception as e:
        raise FactoryError(
            f"calling factory {spec!r} failed: {type(e).__name__}: {str(e)[:300]}",
            "the factory is called with no arguments and must return an nn.Module; "
            "wrap it in a function that passes its arguments",
        ) from e
    if not isinstance(module, nn.Module):
        raise FactoryError(f"factory {spec!r} returned {type(module).__name__}, not an nn.Module")
    digest = None
    if weights is not None:
        if not weights.exists():
            raise InputNotFoundError(f"weights file {weights} does not exist")
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CorruptModelError(
                f"{weights} is not a state_dict that loads with weights_only=True: {str(e)[:300]}",
                "save it with torch.save(model.state_dict(), path)",
            ) from e
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise CorruptModelError(
                f"{weights} holds a {type(state).__name__}, not a state_dict",
                "save it with torch.save(model.state_dict(), path)",
            )
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise CorruptModelError(
                f"{weights} does not fit {spec!r}: {str(e)[:400]}",
                "check the factory and its arguments (e.g. width, num_classes)",
            ) from e
        digest = _sha256(weights)
    return LoadedModel("torch", spec, torch_module=module.eval(), sha256=digest)


def load_model(source: str, weights: str | Path | None = None, allow_pickle: bool = False) -> LoadedModel:
    path = Path(source)
    weights = Path(weights) if weights is not None else None
    if path.suffix in (".onnx", ".pt", ".pth", ".pt2", ".ts", ".jit") or path.exists():
        if not path.exists():
            raise InputNotFoundError(f"model file {path} does not exist")
        if path.is_dir():
            raise InputNotFoundError(f"{path} is a folder, not a model file")
        if weights is not None:
            raise ConfigError(
                f"--weights {weights} was given, but {path} is a model file, not a factory",
                "--weights is only for a factory or zoo MODEL (package.module:function, resnet20, ...); "
                "drop it, or pass the architecture as MODEL",
            )
        if path.suffix == ".onnx":
            return _load_onnx(path)
        return _load_torch_file(path, allow_pickle)
    return _load_factory(source, weights)

"""The model going in: a file, factory, zoo name or model card plus the user's flags → the loaded model,
its input spec (shape checked or read from the graph), and the reference its artifact must reproduce."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx_ir as ir

from edgekd.config import InputSpec
from edgekd.data.preprocess import Preprocess
from edgekd.errors import ConfigError, InputShapeError
from edgekd.ir.bind import bind_shape, proto_dims
from edgekd.ir.normalize import INTEGER_PIXELS
from edgekd.model_config import read_model_card
from edgekd.models.load import LoadedModel, load_model
from edgekd.runtime import RunFn, onnx_run_fn, ort_session, torch_reference
from edgekd.state import ONNX_MODEL, TORCH_MODEL, SourceInfo


@dataclass(frozen=True)
class ModelInput:
    """What the user named: the model source, its weights, the input spec and the labels."""

    source: str
    weights: Path | None
    input: InputSpec
    labels: tuple[str, ...] | None


@dataclass(frozen=True)
class ResolvedModel:
    """A loaded model ready to compile."""

    loaded: LoadedModel
    input: InputSpec
    source: SourceInfo
    reference: RunFn
    reference_name: str
    facts: frozenset[str]


def model_input(
    model: str,
    *,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float | None = None,
    channel_order: str | None = None,
    layout: str | None = None,
    input_name: str | None = None,
    labels: Sequence[str] | None = None,
    weights: str | Path | None = None,
) -> ModelInput:
    """The model (file, factory, zoo name, or model card .toml) with its overrides; explicit arguments win
    over the model card's values."""
    card_input: dict[str, Any] = {}
    card_labels = None
    if str(model).endswith(".toml"):
        card = read_model_card(model)
        model, card_input, card_labels = card.source, card.input, card.labels
        weights = weights if weights is not None else card.weights
    shape = (
        tuple(input_shape)
        if input_shape is not None
        else (tuple(card_input["shape"]) if "shape" in card_input else None)
    )
    layout = layout or card_input.get("layout", "NCHW")
    pre_kwargs = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in card_input.items()
        if k in ("mean", "std", "scale", "channel_order", "resize")
    }
    pre_kwargs.update(
        {
            k: v
            for k, v in (
                ("mean", tuple(mean) if mean else None),
                ("std", tuple(std) if std else None),
                ("scale", scale),
                ("channel_order", channel_order),
            )
            if v is not None
        }
    )
    if shape is not None:
        if len(shape) != 4:
            raise InputShapeError(
                f"input shape {shape} is not 4-D", "image models take N,C,H,W (or N,H,W,C with --layout NHWC)"
            )
        pre_kwargs["size"] = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    pre = Preprocess(layout=layout, **pre_kwargs)
    inp = InputSpec(name=input_name or card_input.get("name", "input"), shape=shape, preprocess=pre)
    return ModelInput(
        str(model), Path(weights) if weights is not None else None, inp, tuple(labels) if labels else card_labels
    )


def load_input_model(
    source: str, weights: Path | None, allow_pickle: bool, inp: InputSpec
) -> tuple[LoadedModel, InputSpec]:
    """(loaded model, its input spec with the shape checked or read from the ONNX graph)."""
    loaded = load_model(source, weights, allow_pickle)
    if loaded.kind == "onnx":
        return loaded, onnx_input(loaded, inp)
    probe_torch_input(loaded.torch_module, inp)
    return loaded, inp


def resolve(source: str, weights: Path | None, allow_pickle: bool, inp: InputSpec) -> ResolvedModel:
    """Loads the model and picks its reference: the PyTorch module, or the ONNX graph in ONNX Runtime."""
    loaded, inp = load_input_model(source, weights, allow_pickle, inp)
    info = SourceInfo(loaded.source, loaded.kind, loaded.sha256, str(weights) if weights else None)
    if loaded.kind == "onnx":
        reference = onnx_run_fn(ort_session(loaded.onnx_proto.SerializeToString()))
        return ResolvedModel(loaded, inp, info, reference, "source ONNX model in ONNX Runtime", frozenset({ONNX_MODEL}))
    return ResolvedModel(
        loaded, inp, info, torch_reference(loaded.torch_module), "PyTorch model", frozenset({TORCH_MODEL})
    )


def check_labels(model: ResolvedModel, labels: Sequence[str] | None) -> None:
    """A labels file names every class of a classifier's [N, classes] output, no more, no fewer."""
    import numpy as np

    if not labels or model.input.shape is None:
        return
    outputs = model.reference(np.zeros(model.input.shape, np.float32))
    if len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] != len(labels):
        raise ConfigError(
            f"the labels file has {len(labels)} names, the model's output has {outputs[0].shape[1]} classes",
            "one class name per line, in the model's output order, for every class",
        )


def onnx_input(loaded: LoadedModel, inp: InputSpec) -> InputSpec:
    graph_inputs = [
        i for i in loaded.onnx_proto.graph.input if i.name not in {t.name for t in loaded.onnx_proto.graph.initializer}
    ]
    if len(graph_inputs) != 1:
        raise InputShapeError(f"the model has {len(graph_inputs)} inputs; edgekd compiles single-input image models")
    gi = graph_inputs[0]
    shape = bind_shape(gi.name, proto_dims(gi), inp.shape)
    pre = inp.preprocess
    size = (shape[2], shape[3]) if pre.layout == "NCHW" else (shape[1], shape[2])
    dtype = ir.DataType(gi.type.tensor_type.elem_type)
    if dtype in INTEGER_PIXELS:
        pre.check_raw_pixels(gi.name, dtype.name.lower())
    return dataclasses.replace(inp, name=gi.name, shape=shape, preprocess=dataclasses.replace(pre, size=size))


def probe_torch_input(module, inp: InputSpec) -> None:
    import torch

    if inp.shape is None:
        raise InputShapeError(
            "a PyTorch model needs its input shape", "pass --input-shape 1,3,H,W or set [input] shape in a model card"
        )
    with torch.no_grad():
        try:
            module.eval()(torch.zeros(inp.shape))
        except Exception as e:  # RuntimeError from torch ops; AssertionError from a torch.export program's shape guards
            first = (str(e).splitlines() or [""])[0][:300]
            raise InputShapeError(
                f"the model does not accept input shape {tuple(inp.shape)}: {type(e).__name__}: {first}"
            ) from e

"""Intermediate features for hint and attention losses: forward hooks, and student/teacher layer pairing
by name or automatically by spatial size."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from edgekd.distill.losses import FeatureHint, attention_transfer
from edgekd.distill.onnx_teacher import OnnxTeacher
from edgekd.errors import ConfigError, UnknownNameError


def feature_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Name → output shape of every named module with a 4-D (N,C,H,W) output, in the order outputs complete
    (for an ONNX teacher: every 4-D tensor, in topological order)."""
    if isinstance(model, OnnxTeacher):
        return model.intermediate_shapes()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(
                module.register_forward_hook(
                    lambda _m, _i, out, name=name: (
                        shapes.__setitem__(name, tuple(out.shape))
                        if isinstance(out, torch.Tensor) and out.dim() == 4
                        else None
                    )
                )
            )
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def stage_ends(shapes: dict[str, tuple[int, ...]]) -> dict[tuple[int, int], str]:
    """Spatial size → the last module (in completion order) producing it: the end of each resolution stage.
    1×1 maps (after global pooling) carry no spatial information and are left out."""
    ends: dict[tuple[int, int], str] = {}
    for name, shape in shapes.items():
        if shape[2:] != (1, 1):
            ends[tuple(shape[2:])] = name
    return ends


def pair_layers(
    student: nn.Module, teacher: nn.Module, example: torch.Tensor, pairs: tuple[tuple[str, str], ...] | None
) -> list[tuple[str, str, tuple, tuple]]:
    """[(student layer, teacher layer, student shape, teacher shape)]; ``pairs`` None → automatic pairing of
    the stage ends both models share a spatial size for."""
    s_shapes, t_shapes = feature_shapes(student, example), feature_shapes(teacher, example)
    if pairs is None:
        s_ends, t_ends = stage_ends(s_shapes), stage_ends(t_shapes)
        common = [size for size in t_ends if size in s_ends]
        if not common:
            raise ConfigError(
                "feature distillation found no spatial size shared by student and teacher feature maps",
                "name the layer pairs (--feature-pairs student_layer=teacher_layer,...)",
            )
        pairs = tuple((s_ends[size], t_ends[size]) for size in common)
    out = []
    for s_name, t_name in pairs:
        for which, name, shapes in (("student", s_name, s_shapes), ("teacher", t_name, t_shapes)):
            if name not in shapes:
                raise UnknownNameError(
                    f"{which} feature layer",
                    name,
                    list(shapes),
                    hint=f"layers with 4-D outputs: {', '.join(shapes) or '(none)'}",
                )
        if s_shapes[s_name][2:] != t_shapes[t_name][2:]:
            raise ConfigError(
                f"feature pair {s_name}={t_name} differs in spatial size: student "
                f"{s_shapes[s_name][2:]} vs teacher {t_shapes[t_name][2:]}",
                "pair layers of the same resolution",
            )
        out.append((s_name, t_name, s_shapes[s_name], t_shapes[t_name]))
    return out


@contextmanager
def capture(model: nn.Module, names: list[str]):
    """Collects the outputs of the named modules (tensors, for an ONNX teacher) during forward passes inside
    the block, in a dict."""
    if isinstance(model, OnnxTeacher):
        model.capture_names = list(names)
        try:
            yield model.captured
        finally:
            model.capture_names = []
        return
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: store.__setitem__(n, out)) for n in names]
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()


class FeatureLosses(nn.Module):
    """Hint (FitNets, with 1×1 adapters where channels differ) and attention-transfer terms over paired layers.
    The adapters train with the student and are not part of the exported model."""

    def __init__(self, pairs: list[tuple[str, str, tuple, tuple]], kind: str = "mse"):
        super().__init__()
        self.pairs = [(s, t) for s, t, _, _ in pairs]
        self.hints = nn.ModuleList(FeatureHint(ss[1], ts[1], kind) for _, _, ss, ts in pairs)

    def forward(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hint = sum(h(student[s], teacher[t].detach()) for h, (s, t) in zip(self.hints, self.pairs))
        at = sum(attention_transfer(student[s], teacher[t].detach()) for s, t in self.pairs)
        n = len(self.pairs)
        return hint / n, at / n

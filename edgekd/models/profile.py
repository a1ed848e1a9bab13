"""Parameter and multiply-accumulate counts.

MACs count convolutions (any kind: grouped, depthwise, transposed) and linear layers only, as most
papers do: normalization, activations, pooling, residual adds and squeeze-excite multiplies are left
out, and so are bias additions. They are measured with forward hooks, so only work done through
``nn.Conv*d``/``nn.Linear`` modules is seen (a bare ``F.conv2d`` call is not), and are per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not), shared ones once; buffers such as BN running stats excluded."""
    return sum(p.numel() for p in model.parameters())


def _layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        if module.transposed:  # every input element is scattered into k × cout/groups outputs
            return inputs[0].numel() * (module.out_channels // module.groups) * k
        return output.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of one sample; ``input_shape`` is ``(C, H, W)`` or ``(N, C, H, W)`` (N is ignored)."""
    shape = tuple(input_shape)
    if len(shape) == 4:
        shape = (1, *shape[1:])
    elif len(shape) == 3:
        shape = (1, *shape)
    else:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape}")
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, inputs, output)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    param = next(model.parameters(), None)
    x = torch.zeros(
        shape,
        device=param.device if param is not None else "cpu",
        dtype=param.dtype if param is not None else torch.float32,
    )
    modes = [(m, m.training) for m in model.modules()]  # per module: some may be frozen in eval on purpose
    try:
        model.eval()  # don't touch BN running stats
        with torch.no_grad():
            model(x)
    finally:
        for m, training in modes:
            m.training = training
        for h in handles:
            h.remove()
    return total


@dataclass(frozen=True)
class ModelProfile:
    params: int
    macs: int
    input_shape: tuple[int, ...]


def profile(model: nn.Module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Hooks do not fire inside a TorchScript module, so one is counted on its ONNX export instead."""
    if isinstance(model, torch.jit.ScriptModule):
        from edgekd.ir.profile import profile_onnx
        from edgekd.models.export import export_onnx

        shape = (1, *tuple(input_shape)[1:]) if len(input_shape) == 4 else (1, *input_shape)
        onnx_profile = profile_onnx(export_onnx(model, shape, opset=17))
        return ModelProfile(count_params(model), onnx_profile.macs, tuple(input_shape))
    return ModelProfile(count_params(model), count_macs(model, input_shape), tuple(input_shape))

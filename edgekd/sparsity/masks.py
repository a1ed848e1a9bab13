"""Top-k magnitude masks (per layer or global), N:M structured masks, and the cubic ramp."""

from __future__ import annotations

import torch
from torch import nn


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and Linear layers by name: the weights sparsity applies to."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keeps the largest-|w| (1 − sparsity) fraction; exactly round(sparsity · n) zeros."""
    k = int(round(sparsity * weight.numel()))
    if k <= 0:
        return torch.ones_like(weight, dtype=torch.bool)
    order = weight.abs().flatten().argsort()
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    mask[order[:k]] = False
    return mask.view_as(weight)


def global_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One magnitude threshold across all layers: layers with small weights lose more of them."""
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    k = int(round(sparsity * flat.numel()))
    if k <= 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[flat.argsort()[:k]] = False
    out, at = {}, 0
    for n, w in weights.items():
        out[n] = keep[at : at + w.numel()].view_as(w)
        at += w.numel()
    return out


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M along input channels: in every group of m consecutive input channels (same output channel
    and kernel position) the n largest |w| stay — the 2:4 pattern TensorRT's sparse kernels take."""
    if weight.dim() < 2:
        raise ValueError("N:M sparsity needs a weight with an input-channel axis")
    cin = weight.shape[1]
    if cin % m:
        raise ValueError(f"input channels ({cin}) must be a multiple of {m} for {n}:{m} sparsity")
    w = weight.movedim(1, -1)  # [..., cin]
    groups = w.abs().reshape(*w.shape[:-1], cin // m, m)
    top = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(w.shape).movedim(-1, 1)


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    if weight.dim() < 2 or weight.shape[1] % m:
        return False
    w = weight.movedim(1, -1)
    groups = (w.reshape(*w.shape[:-1], w.shape[-1] // m, m) != 0).sum(-1)
    return bool((groups <= n).all())


def cubic_sparsity(step: int, total_steps: int, final: float, start_step: int = 0) -> float:
    """Zhu & Gupta (2017): s_t = s_f · (1 − (1 − t/T)³), from 0 at ``start_step`` to ``final`` at the end."""
    if total_steps <= start_step:
        return final
    t = min(1.0, max(0.0, (step - start_step) / (total_steps - start_step)))
    return final * (1 - (1 - t) ** 3)


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros per prunable layer."""
    return {n: float((m.weight == 0).float().mean()) for n, m in prunable(model).items()}

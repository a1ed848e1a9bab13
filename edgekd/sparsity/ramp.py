"""Gradual pruning during a fine-tune: the cubic ramp of Zhu & Gupta (2017) from 0 to the target sparsity
over the first two thirds of the steps, then masks fixed so the last third recovers accuracy."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.sparsity.masks import apply_masks, cubic_sparsity, global_masks, magnitude_mask, nm_mask, prunable


class GradualPruner:
    def __init__(
        self, model: nn.Module, sparsity: float, pattern: str, scope: str, total_steps: int, mask_every: int = 10
    ):
        self.sparsity, self.pattern, self.scope, self.mask_every = sparsity, pattern, scope, mask_every
        self.layers = prunable(model)
        if pattern == "2:4":  # layers whose input channels do not group by 4 stay dense
            self.layers = {n: m for n, m in self.layers.items() if m.weight.shape[1] % 4 == 0}
        self.ramp_end = max(1, int(total_steps * 2 / 3))
        self.masks: dict[str, torch.Tensor] = {}

    def step(self, step: int) -> None:
        if step <= self.ramp_end and (step % self.mask_every == 0 or step == self.ramp_end or not self.masks):
            s = cubic_sparsity(step, self.ramp_end, self.sparsity)
            weights = {n: m.weight.detach() for n, m in self.layers.items()}
            if self.pattern == "2:4":  # N:M has no intermediate level: switch on halfway through the ramp
                self.masks = {n: nm_mask(w) for n, w in weights.items()} if step >= self.ramp_end // 2 else {}
            elif self.scope == "global":
                self.masks = global_masks(weights, s)
            else:
                self.masks = {n: magnitude_mask(w, s) for n, w in weights.items()}
        apply_masks(self.layers, self.masks)

    def finish(self) -> None:
        """Masks at the final sparsity: exact zeros whatever the step count was."""
        self.step(self.ramp_end)

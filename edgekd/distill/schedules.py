"""Temperature and α schedules over training progress p ∈ [0, 1]."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Schedule:
    """``kind``: constant (start), linear (start → end), cosine (start → end along a half cosine)."""

    kind: str = "constant"
    start: float = 4.0
    end: float | None = None

    def __post_init__(self):
        if self.kind not in ("constant", "linear", "cosine"):
            raise ValueError(f"schedule must be constant, linear or cosine, got {self.kind!r}")

    def at(self, progress: float) -> float:
        p = min(1.0, max(0.0, progress))
        end = self.start if self.end is None else self.end
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (end - self.start) * p
        return end + (self.start - end) * 0.5 * (1 + math.cos(math.pi * p))


class LearnableTemperature(nn.Module):
    """A temperature trained with the student, kept in [low, high] (parametrised through a sigmoid)."""

    def __init__(self, initial: float = 4.0, low: float = 1.0, high: float = 10.0):
        super().__init__()
        if not low < initial < high:
            raise ValueError(f"initial temperature {initial} must lie inside ({low}, {high})")
        self.low, self.high = low, high
        frac = (initial - low) / (high - low)
        self.raw = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))

    def forward(self) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(self.raw)

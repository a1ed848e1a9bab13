"""Top-1 on a labelled set, and the greedy return of sensitive layers to float under a budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from edgekd.runtime import RunFn


def top1(run: RunFn, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    correct = total = 0
    for x, y in batches:
        correct += int((run(x)[0].reshape(len(y), -1).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def within_budget(drop_pt: float, max_drop_pt: float) -> bool:
    return drop_pt <= max_drop_pt + 1e-9  # top-1 differences are multiples of 1/N; ignore float noise


@dataclass
class BudgetStep:
    kept_float: tuple[str, ...]
    top1: float
    drop_pt: float


def greedy_keep_float(
    layers_by_sensitivity: Sequence[str],
    evaluate: Callable[[tuple[str, ...]], float],
    float_top1: float,
    max_drop_pt: float,
    max_layers: int | None = None,
) -> list[BudgetStep]:
    """Returns the layers to float, most sensitive first, until the drop is within budget.

    The last step is the answer when its drop is within budget; otherwise none met it.
    """
    steps: list[BudgetStep] = []
    kept: tuple[str, ...] = ()
    limit = len(layers_by_sensitivity) if max_layers is None else min(max_layers, len(layers_by_sensitivity))
    while True:
        acc = evaluate(kept)
        steps.append(BudgetStep(kept, acc, 100.0 * (float_top1 - acc)))
        if within_budget(steps[-1].drop_pt, max_drop_pt) or len(kept) >= limit:
            return steps
        kept = tuple(layers_by_sensitivity[: len(kept) + 1])

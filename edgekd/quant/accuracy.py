"""Top-1 on an eval set (its classes, or the float model's own top-1 where it has none), and the greedy return
of sensitive layers to float under a budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgekd.data.preprocess import Preprocess
from edgekd.data.samples import has_labels, iter_batches, iter_labelled
from edgekd.errors import ConfigError
from edgekd.runtime import RunFn

Batches = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EvalSet:
    """Images with the class each should get. ``metric`` says whose classes: "top-1" the images' own (class
    subfolders), "agreement" the float model's top-1 (a flat folder or an array: no labels), so a top-1 of
    an int8 model on it is its top-1 agreement with float, and float scores 100 %."""

    metric: str
    batches: list[tuple[np.ndarray, np.ndarray]]

    @property
    def samples(self) -> int:
        return sum(len(y) for _, y in self.batches)


def load_eval_set(
    source: str | Path,
    pre: Preprocess,
    input_shape: tuple[int, ...],
    class_names: tuple[str, ...] | None,
    limit: int | None,
    float_model: RunFn,
) -> EvalSet:
    if has_labels(source):
        return EvalSet("top-1", list(iter_labelled(source, pre, input_shape, class_names, limit)))
    return EvalSet(
        "agreement",
        [(x, _class_of(float_model(x)[0], len(x))) for x in iter_batches(source, pre, input_shape, limit=limit)],
    )


def _class_of(scores: np.ndarray, n: int) -> np.ndarray:
    if scores.ndim < 2 or scores.shape[0] != n or scores.shape[1] < 2 or any(d != 1 for d in scores.shape[2:]):
        raise ConfigError(
            f"the eval images have no class subfolders, so edgekd scores top-1 agreement with the float model, "
            f"and that needs class scores [batch, classes]; the model's first output is shaped {list(scores.shape)}",
            "give --eval a labelled folder DIR/<class>/*.jpg, or a detector's data.yaml / COCO .json",
        )
    return scores.reshape(n, -1).argmax(1)


def predictions(run: RunFn, batches: Batches) -> np.ndarray:
    """The top-1 class of every image, in order."""
    return np.concatenate([run(x)[0].reshape(len(y), -1).argmax(1) for x, y in batches] or [np.zeros(0, int)])


def top1(run: RunFn, batches: Batches) -> float:
    labels = np.concatenate([y for _, y in batches] or [np.zeros(0, int)])
    return float(np.mean(predictions(run, batches) == labels)) if len(labels) else 0.0


@dataclass(frozen=True)
class PairedDrop:
    """Float against int8 on the same images: which images each gets right decides whether a drop is real.
    Only the images the two disagree on carry information (McNemar), so a 0.2 pt drop over 5,000 images is
    noise when 30 go one way and 20 the other."""

    samples: int
    lost: int  # float right, int8 wrong
    gained: int  # float wrong, int8 right

    @property
    def drop_pt(self) -> float:
        return 100.0 * (self.lost - self.gained) / max(self.samples, 1)

    def ci95_pt(self) -> tuple[float, float]:
        """95 % interval of the drop, exact given the disagreements (McNemar's conditional view): of the
        ``d = lost + gained`` images the two disagree on, ``lost`` is binomial in ``d`` with some share ``p``;
        Clopper-Pearson bounds ``p``, and the drop is ``(2p - 1) d / n``. Unlike the normal approximation it
        stays inside what ``d`` disagreements can move and is not too narrow for a handful of them."""
        n, d = max(self.samples, 1), self.lost + self.gained
        if d == 0:
            return 0.0, 0.0
        low = 0.0 if self.lost == 0 else _binomial_bound(self.lost, d, upper=False)
        high = 1.0 if self.lost == d else _binomial_bound(self.lost, d, upper=True)
        return 100.0 * (2 * low - 1) * d / n, 100.0 * (2 * high - 1) * d / n


def _binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X ≤ k) (``upper``: P(X ≥ k)) for X ~ Binomial(n, p), summed in log space."""
    terms = range(k, n + 1) if upper else range(0, k + 1)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in terms
    ]
    top = max(logs)
    return math.exp(top) * sum(math.exp(v - top) for v in logs)


def _binomial_bound(k: int, n: int, upper: bool, alpha: float = 0.05) -> float:
    """Clopper-Pearson bound on p given k of n: the p whose tail beyond k holds alpha / 2 (bisection)."""
    lo, hi = 1e-12, 1 - 1e-12
    for _ in range(100):
        mid = (lo + hi) / 2
        # the lower bound solves P(X ≥ k | mid) = α/2 (that tail grows with p); the upper P(X ≤ k | mid) = α/2
        tail = _binomial_tail(k, n, mid, upper=not upper)
        if (tail < alpha / 2) != upper:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired_drop(labels: np.ndarray, float_pred: np.ndarray, int8_pred: np.ndarray) -> PairedDrop:
    f, q = float_pred == labels, int8_pred == labels
    return PairedDrop(len(labels), int((f & ~q).sum()), int((~f & q).sum()))


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
    start: int = 0,
) -> list[BudgetStep]:
    """Returns the layers to float, most sensitive first, until the drop is within budget; the first
    ``start`` of them are in float from the first step on.

    The last step is the answer when its drop is within budget; otherwise none met it.
    """
    steps: list[BudgetStep] = []
    kept: tuple[str, ...] = tuple(layers_by_sensitivity[:start])
    limit = len(layers_by_sensitivity) if max_layers is None else min(max_layers, len(layers_by_sensitivity))
    while True:
        acc = evaluate(kept)
        steps.append(BudgetStep(kept, acc, 100.0 * (float_top1 - acc)))
        if within_budget(steps[-1].drop_pt, max_drop_pt) or len(kept) >= limit:
            return steps
        kept = tuple(layers_by_sensitivity[: len(kept) + 1])


def requantize_unneeded(
    steps: list[BudgetStep], evaluate: Callable[[tuple[str, ...]], float], float_top1: float, max_drop_pt: float
) -> list[BudgetStep]:
    """After a greedy search met the budget: each layer it returned to float goes back to int8, the last
    added (least sensitive) first, where the budget still holds without it. The greedy order adds layers
    whose own gain is noise on the way to the ones that matter; this keeps only those. Returns ``steps``
    with each layer given back appended (its last step stays the answer)."""
    if not steps or not within_budget(steps[-1].drop_pt, max_drop_pt):
        return steps
    kept = steps[-1].kept_float
    out = list(steps)
    for layer in reversed(kept):
        trial = tuple(k for k in out[-1].kept_float if k != layer)
        acc = evaluate(trial)
        if within_budget(100.0 * (float_top1 - acc), max_drop_pt):
            out.append(BudgetStep(trial, acc, 100.0 * (float_top1 - acc)))
    return out

"""Run functions (batch in, list of outputs out) and batching for runtimes whose model has a fixed batch."""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgekd.errors import ConfigError

RunFn = Callable[[np.ndarray], list[np.ndarray]]


def in_model_batches(one: RunFn, batch: int | None) -> RunFn:
    """A RunFn over any number of samples for a runtime whose model takes a fixed ``batch``."""

    def run(x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if batch is None or x.shape[0] == batch:
            return one(x)
        if x.shape[0] % batch:
            raise ConfigError(f"batch of {x.shape[0]} does not divide into the model's batch of {batch}")
        parts = [one(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
        return [np.concatenate(p) for p in zip(*parts)]

    return run

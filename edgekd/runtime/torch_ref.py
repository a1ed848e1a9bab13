"""A torch module as a RunFn: the reference an artifact compiled from it must reproduce."""

from __future__ import annotations

from typing import Callable

import numpy as np


def torch_reference(module) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The module as a numpy-in, list-of-numpy-out function (the reference the artifact must reproduce)."""
    import torch

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module.eval()(torch.from_numpy(x))
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.numpy() for o in outs]

    return run

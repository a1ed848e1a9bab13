"""Comparing a model's outputs with a reference's."""

from __future__ import annotations

import numpy as np

from edgekd.errors import ConfigError


def compare_outputs(got: list[list[np.ndarray]], want: list[list[np.ndarray]], tie_margin: float = 0.0) -> dict:
    """Per-run output lists → error figures.

    ``max_abs_error`` (all outputs) and ``max_abs_per_output``; ``relative_error``: max error over the
    reference's largest magnitude; for a first output shaped [N, classes]: ``top1_agreement``, and
    ``decisive_disagreements``: samples whose top-1 differs although the reference's top-1 leads its
    runner-up by more than ``tie_margin`` (a near-tie flipped by one rounding step is not a defect).
    """
    n_out = len(want[0]) if want else 0
    per_output = [0.0] * n_out
    mean_abs = ref_range = 0.0
    agree = total = decisive = 0
    for g_outs, w_outs in zip(got, want):
        for k, (g, w) in enumerate(zip(g_outs, w_outs)):
            g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
            diff = np.abs(g - w)
            per_output[k] = max(per_output[k], float(diff.max()))
            mean_abs += float(diff.mean())
            ref_range = max(ref_range, float(np.abs(w).max()))
            if k == 0 and w.ndim == 2 and w.shape[1] > 1:
                same = g.argmax(1) == w.argmax(1)
                top2 = np.sort(w, axis=1)[:, -2:]
                agree += int(same.sum())
                decisive += int((~same & (top2[:, 1] - top2[:, 0] > tie_margin)).sum())
                total += w.shape[0]
    max_abs = max(per_output) if per_output else 0.0
    out = {
        "max_abs_error": max_abs,
        "max_abs_per_output": per_output,
        "mean_abs_error": mean_abs / max(1, len(want) * n_out),
        "relative_error": max_abs / ref_range if ref_range else max_abs,
        "reference_range": ref_range,
    }
    if total:
        out["top1_agreement"] = agree / total
        out["decisive_disagreements"] = decisive
    return out


def sqnr_db(reference, test) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref − test)²); +inf when equal."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    if ref.shape != out.shape:
        raise ConfigError(f"cannot compare shapes {ref.shape} and {out.shape}")
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))

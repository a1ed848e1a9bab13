"""Timing candidates on a device: each repeat times every candidate once, in turn (interleaved), so a
load spike on a shared machine or a board warming up hits all of them alike."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from edgekd.bench.session import BenchSettings, run_benchmark
from edgekd.runtime.timing import REPEATS

# artifact folder, repeat index → median latency in ms. Tests inject one; the default runs the benchmark
# runner on the device.
TimingFn = Callable[[Path, int], float]


def device_timing(
    device: str,
    inventory: str | Path | None = None,
    settings: BenchSettings | None = None,
    accept_new_host_key: bool = False,
) -> TimingFn:
    """p50 latency of an artifact on ``device`` (local or an SSH board of the inventory), model-only: candidates
    share their preprocessing and decode, so only the model tells them apart."""
    from dataclasses import replace

    from edgekd.api import resolve_device

    settings = replace(settings or BenchSettings(iterations=50), end_to_end=None)

    def timing(artifact: Path, repeat: int) -> float:
        dev = resolve_device(device, inventory, accept_new_host_key)
        return float(run_benchmark(Path(artifact), dev, settings)["latency"]["p50_ms"])

    return timing


def time_interleaved(paths: Sequence[Path], timing: TimingFn, repeats: int = REPEATS) -> list[list[float]]:
    """Per path, its latency in each repeat."""
    series: list[list[float]] = [[] for _ in paths]
    for r in range(repeats):
        for k, path in enumerate(paths):
            series[k].append(timing(path, r))
    return series

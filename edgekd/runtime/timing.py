"""Latency comparisons that noise cannot pass off as a win: every candidate is timed in turn, repeat
after repeat (interleaved), so a load spike hits all of them; a ratio is reported per repeat, with its
median and spread."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

REPEATS = 3  # the fewest repeats a ratio is quoted from


@dataclass(frozen=True)
class Ratio:
    median: float
    low: float
    high: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "repeats": self.repeats}

    def __str__(self) -> str:
        return f"{self.median:.2f}× [{self.low:.2f}, {self.high:.2f}] over {self.repeats} repeats"


def ratio(numerator: list[float], denominator: list[float]) -> Ratio:
    """Per-repeat ratios of two interleaved series, summarized."""
    per = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return Ratio(statistics.median(per), min(per), max(per), len(per))


def median_ms(run: Callable[[], object], iterations: int, clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(iterations):
        start = clock()
        run()
        times.append((clock() - start) * 1000)
    return statistics.median(times)


def interleaved(
    runs: Mapping[str, Callable[[], object]], repeats: int = REPEATS, iterations: int = 50, warmup: int = 5
) -> dict[str, list[float]]:
    """Median latency (ms) of each run per repeat, the runs taking turns within every repeat."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    series: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            series[name].append(median_ms(run, iterations))
    return series

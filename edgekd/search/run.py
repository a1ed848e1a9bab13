"""The entry of the search recipes: where candidates are timed, and which search runs."""

from __future__ import annotations

from typing import Any, Callable

from edgekd.bench.inventory import get_device_spec
from edgekd.bench.session import BenchSettings
from edgekd.config import CompileConfig
from edgekd.search.timing import TimingFn, device_timing
from edgekd.specs import load_target


def search_device(config: CompileConfig) -> str:
    """--device, else --bench's device, else the target's benchmark device."""
    return config.search.device or config.bench or load_target(config.target).bench.device


def run_search(
    config: CompileConfig,
    compile_fn: Callable[[CompileConfig], Any],
    progress: Callable[[str], None] | None = None,
    timing: TimingFn | None = None,
) -> dict[str, Any]:
    """Runs ``--latency-budget`` or ``--precision auto``; returns the shipped artifact's manifest."""
    device = search_device(config)
    if timing is None:
        get_device_spec(device, config.search.inventory)  # an unknown device fails before any compile
        b = load_target(config.target).bench
        timing = device_timing(
            device, config.search.inventory, BenchSettings(threads=b.threads, warmup=b.warmup, iterations=b.iterations)
        )
    if config.search.latency_budget_ms is not None:
        from edgekd.search.budget import search_students

        return search_students(config, timing, device, compile_fn, progress)
    from edgekd.search.precision import search_precision

    return search_precision(config, timing, device, compile_fn, config.search.repeats, progress)


def is_search(config: CompileConfig) -> bool:
    return config.precision == "auto" or config.search.latency_budget_ms is not None

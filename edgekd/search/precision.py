"""``--precision auto``: compile every precision the target computes in (fp32, fp16 where the runtime runs
fp16, int8), time them on the chosen device, interleaved, and ship the fastest that stays within
``--max-drop`` of float top-1 on ``--eval``. A lower precision is preferred only when it is faster than
float in every repeat, so noise never buys an accuracy loss; an int8 slower than float is never shipped."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekd.config import CompileConfig
from edgekd.errors import ConfigError, EdgekdError, SearchError
from edgekd.outputs import check_artifact_output
from edgekd.passes.evaluate import SPEEDUP_PER_POINT
from edgekd.runtime.timing import REPEATS, Ratio, ratio
from edgekd.search.finish import ship
from edgekd.search.timing import TimingFn, time_interleaved
from edgekd.specs import load_target

ORDER = ("fp32", "fp16", "int8")


@dataclass
class Candidate:
    precision: str
    path: Path | None = None
    top1: float | None = None  # artifact top-1 on --eval (agreement with float when it has no labels)
    float_top1: float | None = None
    metric: str | None = None
    error: str | None = None  # why it did not compile
    ms: list[float] = field(default_factory=list)  # latency per repeat on the device
    speedup: Ratio | None = None  # float's latency over this one's, per repeat

    @property
    def drop_pt(self) -> float | None:
        return None if self.top1 is None or self.float_top1 is None else 100 * (self.float_top1 - self.top1)

    def to_dict(self, max_drop: float) -> dict[str, Any]:
        drop = self.drop_pt
        out = {
            "precision": self.precision,
            "top1": self.top1,
            "drop_pt": drop,
            "ms": self.ms,
            "p50_ms": statistics.median(self.ms) if self.ms else None,
            "error": self.error,
            "speedup_vs_float": self.speedup.to_dict() if self.speedup else None,
            "meets_max_drop": drop is not None and drop <= max_drop + 1e-9,
        }
        if self.speedup and drop is not None and drop > 0:
            out["speedup_per_point_met"] = self.speedup.median >= SPEEDUP_PER_POINT * drop
        return out


def candidate_config(config: CompileConfig, precision: str, out: Path) -> CompileConfig:
    """The user's compile at one precision into ``out``; --max-drop applies to int8 only (it returns layers
    to float there), --eval scores every candidate. No speed-check pass: the search times every candidate
    itself, interleaved, and one measurement in the report is enough."""
    int8 = precision == "int8"
    evaluation = config.evaluation if int8 else dataclasses.replace(config.evaluation, max_drop=None)
    quantization = (
        config.quantization if int8 else dataclasses.replace(config.quantization, keep_float=(), keep_float_count=0)
    )
    return dataclasses.replace(
        config,
        precision=precision,
        output=out,
        force=True,
        bench=None,
        evaluation=evaluation,
        quantization=quantization,
        search=config.search.for_candidate(),
        skip=tuple(dict.fromkeys(config.skip + ("speed-check",))),
    )


def choose(candidates: list[Candidate], max_drop: float, metric: str = "top-1") -> tuple[Candidate, str]:
    """The fastest candidate within the budget whose speed-up over float holds in every repeat; float
    otherwise."""
    base = next(c for c in candidates if c.precision == "fp32")
    fits = [
        c
        for c in candidates
        if c is not base
        and c.speedup is not None
        and c.drop_pt is not None
        and c.drop_pt <= max_drop + 1e-9
        and c.speedup.low > 1.0
    ]
    if not fits:
        slower = [c.precision for c in candidates if c.speedup is not None and c.speedup.high < 1.0]
        why = "no lower precision was faster than float in every repeat within the accuracy budget"
        return base, why + (f" ({', '.join(slower)} slower than float)" if slower else "")
    best = min(fits, key=lambda c: statistics.median(c.ms))
    return best, f"{best.precision} is {best.speedup} faster than float for {best.drop_pt:.2f} pt of {metric}"


def compile_candidates(
    config: CompileConfig,
    precisions: list[str],
    workdir: Path,
    compile_fn: Callable[[CompileConfig], Any],
    progress=None,
) -> list[Candidate]:
    out = []
    for p in precisions:
        c = Candidate(p)
        if progress:
            progress(f"precision search: compiling {p}")
        try:
            result = compile_fn(candidate_config(config, p, workdir / p))
        except EdgekdError as e:
            c.error = e.message.splitlines()[0]
        else:
            acc = result.manifest.get("accuracy") or {}
            c.path, c.top1, c.float_top1 = result.output, acc.get("artifact_top1"), acc.get("float_top1")
            c.metric = acc.get("metric")
        out.append(c)
    return out


def search_precision(
    config: CompileConfig,
    timing: TimingFn,
    device: str,
    compile_fn,
    repeats: int = REPEATS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compiles the candidates, times them, ships the winner as ``config.output``; returns its manifest."""
    spec = load_target(config.target)
    e = config.evaluation
    if e.data is None or e.max_drop is None:
        raise ConfigError(
            "--precision auto weighs speed against accuracy and needs --eval DIR and --max-drop PT",
            "e.g. --eval examples/cifar10/val --max-drop 1.0",
        )
    check_artifact_output(config.output, config.force, config.input_paths())  # before minutes of work
    precisions = [p for p in ORDER if p in spec.precisions and (p != "int8" or config.calibration.data is not None)]
    with tempfile.TemporaryDirectory(prefix="edgekd-precision-") as tmp:
        candidates = compile_candidates(config, precisions, Path(tmp), compile_fn, progress)
        ok = [c for c in candidates if c.path is not None]
        if not any(c.precision == "fp32" for c in ok):
            raise SearchError(
                "the fp32 candidate did not compile: "
                + next(
                    (c.error for c in candidates if c.precision == "fp32"), "fp32 is not among the target's precisions"
                )
            )
        if progress:
            progress(f"precision search: timing {', '.join(c.precision for c in ok)} on {device}, {repeats} repeats")
        for c, ms in zip(ok, time_interleaved([c.path for c in ok], timing, repeats), strict=True):
            c.ms = ms
        base = next(c for c in ok if c.precision == "fp32")
        for c in ok:
            c.speedup = ratio(base.ms, c.ms)
        metric = next((c.metric for c in ok if c.metric), "top-1")
        chosen, why = choose(ok, e.max_drop, metric)
        record = {
            "device": device,
            "repeats": repeats,
            "metric": metric,
            "max_drop_pt": e.max_drop,
            "chosen": chosen.precision,
            "why": why,
            "candidates": [c.to_dict(e.max_drop) for c in candidates],
        }
        return ship(chosen.path, config, "precision_search", record)

"""``--latency-budget MS --device NAME --student NAME:W1,W2,...``: the most accurate student that runs
within the budget on the device.

1. Every candidate is compiled untrained (random weights: latency does not depend on them) at the
   compile's precision and timed on the device, interleaved over the repeats.
2. Those whose median latency exceeds the budget are dropped.
3. The rest are ranked by a short proxy distillation (``--proxy-epochs``, holdout top-1).
4. The winner is distilled for ``--epochs`` and compiled; its manifest and report carry the table."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekd.config import CompileConfig
from edgekd.errors import ConfigError, EdgekdError, SearchError
from edgekd.models.zoo import parse_zoo_name
from edgekd.outputs import check_artifact_output
from edgekd.report import BUDGET_HEADERS, budget_rows
from edgekd.search.finish import ship
from edgekd.search.timing import TimingFn, time_interleaved
from edgekd.ui import text_table

DEFAULT_WIDTHS = (0.25, 0.35, 0.5, 0.75, 1.0)  # a zoo name without widths: these


@dataclass
class Student:
    name: str
    macs: int | None = None
    ms: list[float] = field(default_factory=list)
    proxy_top1: float | None = None  # holdout top-1 (%) after the proxy distillation
    error: str | None = None

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.ms) if self.ms else None

    def to_dict(self, budget: float) -> dict[str, Any]:
        return {
            "student": self.name,
            "macs": self.macs,
            "ms": self.ms,
            "p50_ms": self.p50_ms,
            "fits": self.p50_ms is not None and self.p50_ms <= budget,
            "proxy_top1": self.proxy_top1,
            "error": self.error,
        }


def candidate_students(spec: str) -> list[str]:
    """``mobilenetv2-cifar:0.35,0.5`` → two zoo names; ``a:0.5,b`` → each as given; no width → DEFAULT_WIDTHS."""
    names: list[str] = []
    base = None
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if ":" in part or not _is_width(part):
            base = part.partition(":")[0]
            names.append(part)
        elif base is None:
            raise ConfigError(
                f"--student {spec!r}: width {part} comes before a model name",
                "write the model first, e.g. mobilenetv2-cifar:0.35,0.5",
            )
        else:
            names.append(f"{base}:{part}")
    if len(names) == 1 and ":" not in names[0]:
        names = [f"{names[0]}:{w}" for w in DEFAULT_WIDTHS]
    for n in names:
        parse_zoo_name(n)  # unknown names and bad widths fail before any work
    return list(dict.fromkeys(names))


def _is_width(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def latency_config(config: CompileConfig, student: str, out: Path) -> CompileConfig:
    """The untrained student alone, at the compile's precision, no accuracy passes: only its speed counts."""
    return dataclasses.replace(
        config,
        model=student,
        weights=None,
        labels=None,
        output=out,
        force=True,
        bench=None,
        training=dataclasses.replace(config.training, student=None, sparsity=None),
        evaluation=dataclasses.replace(config.evaluation, data=None, max_drop=None),
        quantization=dataclasses.replace(config.quantization, keep_float=(), keep_float_count=0),
        search=config.search.for_candidate(),
    )


def proxy_top1(config: CompileConfig, student: str, out: Path) -> float | None:
    """Holdout top-1 (%) of ``student`` after ``proxy_epochs`` of distillation from the compile's model."""
    from edgekd.distill.command import distill_to_file
    from edgekd.distill.options import train_config
    from edgekd.frontend import resolve

    resolved = resolve(config.model, config.weights, config.allow_pickle, config.input)
    cfg = train_config(config.training.options, epochs=config.search.proxy_epochs, seed=config.seed)
    return distill_to_file(resolved, student, config.training.data, out, cfg)["student_val_top1"]


def time_students(config, students: list[Student], workdir: Path, timing: TimingFn, compile_fn, progress) -> None:
    compiled = []
    for s in students:
        try:
            result = compile_fn(latency_config(config, s.name, workdir / "latency" / s.name.replace(":", "_")))
        except EdgekdError as e:
            s.error = e.message.splitlines()[0]
            continue
        s.macs = (result.manifest.get("profile") or {}).get("macs")
        compiled.append((s, result.output))
    if progress:
        progress(f"latency budget: timing {len(compiled)} students, {config.search.repeats} interleaved repeats")
    series = time_interleaved([p for _, p in compiled], timing, config.search.repeats)
    for (s, _), ms in zip(compiled, series, strict=True):
        s.ms = ms


def search_students(
    config: CompileConfig,
    timing: TimingFn,
    device: str,
    compile_fn: Callable[[CompileConfig], Any],
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    t, budget = config.training, config.search.latency_budget_ms
    if t.student is None or t.data is None:
        raise ConfigError(
            "--latency-budget chooses among students and needs --student NAME[:W1,W2,...] and --data DIR",
            "e.g. --student mobilenetv2-cifar:0.35,0.5,0.75 --data train/",
        )
    if config.precision == "auto":
        raise ConfigError(
            "--latency-budget times the students at one precision; --precision auto is not that",
            "pass --precision int8 (or fp32) with --latency-budget",
        )
    students = [Student(n) for n in candidate_students(t.student)]
    check_artifact_output(config.output, config.force, config.input_paths())
    with tempfile.TemporaryDirectory(prefix="edgekd-budget-") as tmp:
        work = Path(tmp)
        time_students(config, students, work, timing, compile_fn, progress)
        fits = [s for s in students if s.p50_ms is not None and s.p50_ms <= budget]
        record = {
            "device": device,
            "budget_ms": budget,
            "repeats": config.search.repeats,
            "precision": config.precision,
            "proxy_epochs": config.search.proxy_epochs,
            "epochs": t.epochs,
            "chosen": None,
            "candidates": [],
        }
        if not fits:
            record["candidates"] = [s.to_dict(budget) for s in students]
            raise SearchError(
                f"no student runs within {budget:g} ms on {device}:\n"
                + text_table(BUDGET_HEADERS, budget_rows(record)),
                "raise --latency-budget, add narrower widths, or use --precision int8",
            )
        for s in fits:
            if progress:
                progress(f"latency budget: proxy distillation of {s.name} ({config.search.proxy_epochs} epoch(s))")
            s.proxy_top1 = proxy_top1(config, s.name, work / "proxy" / f"{s.name.replace(':', '_')}.pt")
        winner = max(fits, key=lambda s: (s.proxy_top1 if s.proxy_top1 is not None else -1.0, -s.p50_ms))
        record.update(chosen=winner.name, candidates=[s.to_dict(budget) for s in students])
        if progress:
            progress(text_table(BUDGET_HEADERS, budget_rows(record)))
            progress(f"latency budget: distilling {winner.name} for {t.epochs} epoch(s)")
        final = dataclasses.replace(
            config,
            output=work / "final",
            force=True,
            bench=None,
            training=dataclasses.replace(t, student=winner.name),
            search=config.search.for_candidate(),
        )
        result = compile_fn(final)
        return ship(result.output, config, "latency_budget", record)

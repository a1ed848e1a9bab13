"""Builds the pass list from the target spec and the user's options, checks it, and runs it."""

from __future__ import annotations

from typing import Sequence

from edgekd.config import CompileConfig
from edgekd.errors import ConfigError, PassFailedError, PreconditionError, UnknownNameError
from edgekd.instruments import Instrument
from edgekd.passes import DEFAULT_PIPELINE, PASSES
from edgekd.passes.base import Pass
from edgekd.specs import TargetSpec
from edgekd.state import QUANTIZED, CompileState, PassOutput, PassRecord


def default_passes(spec: TargetSpec) -> list[str]:
    """The target's full pipeline: the default one (or the spec's own list), with the spec's legalization
    passes just before ``emit``."""
    names = list(spec.passes if spec.passes is not None else DEFAULT_PIPELINE)
    at = names.index("emit") if "emit" in names else len(names)
    names[at:at] = spec.legalize_passes
    return names


def pass_names(spec: TargetSpec, config: CompileConfig, initial_facts: set[str]) -> list[str]:
    """The names to run: ``--passes`` if given, else the target's default pipeline keeping only the passes
    this compile asks for; minus ``--skip``."""
    for name in (*(config.passes or ()), *config.skip):
        if name not in PASSES:
            raise UnknownNameError("pass", name, list(PASSES))
    if config.passes is not None:
        names = list(config.passes)
    else:
        default = default_passes(spec)
        for name in default:
            if name not in PASSES:
                raise ConfigError(
                    f"target {spec.name} lists pass {name!r}, which this edgekd does not have",
                    f"edit {spec.path} or pass --passes explicitly; known passes: {', '.join(sorted(PASSES))}",
                )
        names, facts = [], set(initial_facts)
        for n in default:  # a pass is wanted given what the passes kept before it provide (a distilled student)
            if PASSES[n].wanted(config, spec, facts):
                names.append(n)
                facts = (facts | PASSES[n].provides) - PASSES[n].removes
    return [n for n in names if n not in config.skip]


def build_pipeline(spec: TargetSpec, config: CompileConfig, initial_facts: set[str]) -> list[Pass]:
    names = pass_names(spec, config, initial_facts)
    passes = [PASSES[n].from_config(config, spec) for n in names]
    check_pipeline(passes, initial_facts)
    precision = config.precision or spec.default_precision
    if precision not in spec.precisions:
        raise ConfigError(
            f"target {spec.name} does not support precision {precision}", f"choose one of {', '.join(spec.precisions)}"
        )
    if precision == "int8" and not any(QUANTIZED in p.provides for p in passes):
        raise ConfigError(
            "int8 was asked for but the pipeline has no quantization pass",
            "drop --passes/--skip that remove 'quantize', or use --precision fp32",
        )
    return passes


def check_pipeline(passes: Sequence[Pass], initial_facts: set[str]) -> None:
    """Fails before any work when a pass's requirements cannot be met by the passes before it."""
    facts = set(initial_facts)
    for i, p in enumerate(passes):
        missing = sorted(p.requires - facts)
        if missing:
            before = ", ".join(q.name for q in passes[:i]) or "none"
            providers = sorted(n for n, cls in PASSES.items() if cls.provides & set(missing))
            raise PreconditionError(
                f"pass {p.name!r} requires {', '.join(missing)}, which the passes before it ({before}) do not provide",
                f"add {' or '.join(providers)} before it" if providers else None,
            )
        facts = (facts | p.provides) - p.removes


def run_pipeline(state: CompileState, passes: Sequence[Pass], instruments: Sequence[Instrument] = ()) -> CompileState:
    ran: list[str] = []
    for index, p in enumerate(passes):
        for ins in instruments:
            ins.before_pass(index, p, state)
        try:
            p.check_requires(state)
            result = p.run(state)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            if isinstance(getattr(e, "output", None), PassOutput):  # what the pass found before it failed
                state.records.append(PassRecord(p.name, False, e.output))
            raise PassFailedError(p.name, ran, e) from e
        state = result.state
        state.facts = (state.facts | p.provides) - p.removes
        record = PassRecord(p.name, result.changed, result.output)
        state.records.append(record)
        for ins in instruments:
            ins.after_pass(index, p, state, record)
        ran.append(p.name)
    return state

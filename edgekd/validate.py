"""Every user input of a compile, checked up front, before the first pass runs: numbers, shapes, the
layout, paths and sample data. A bad value is a named error that says what to pass instead; no hour of
training runs before a missing calibration folder is noticed."""

from __future__ import annotations

import math
from pathlib import Path

from edgekd.config import CompileConfig, DetectionOptions, InputSpec
from edgekd.errors import ConfigError, DataError, InputNotFoundError, InputShapeError
from edgekd.specs import TargetSpec

CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what an image model's channel axis holds


def check_number(
    what: str, value, *, minimum=None, maximum=None, above=None, integer: bool = False, hint: str | None = None
) -> None:
    """``value`` is a finite number within the bounds (``above``: strictly greater)."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    ok = ok and (above is None or value > above)
    if not ok:
        bounds = [
            f">= {minimum}" if minimum is not None else "",
            f"> {above}" if above is not None else "",
            f"<= {maximum}" if maximum is not None else "",
        ]
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{what} must be {kind} {' and '.join(b for b in bounds if b)}, got {value!r}", hint)


def check_shape(inp: InputSpec) -> None:
    """A 4-D shape of positive sizes whose channel axis (by layout) holds 1, 3 or 4 channels."""
    if inp.shape is None:
        return
    shape = tuple(inp.shape)
    if len(shape) != 4 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise InputShapeError(
            f"input shape {shape} is not four positive sizes",
            "image models take N,C,H,W (or N,H,W,C with --layout NHWC)",
        )
    layout = inp.preprocess.layout
    channels, other = (shape[1], shape[3]) if layout == "NCHW" else (shape[3], shape[1])
    if channels not in CHANNELS:
        flip = "NHWC" if layout == "NCHW" else "NCHW"
        likely = f"; it looks like {flip}: pass --layout {flip}" if other in CHANNELS else ""
        raise InputShapeError(
            f"input shape {shape} with layout {layout} has {channels} channels{likely}",
            f"write the shape in the layout's order ({layout}), channels being 1, 3 or 4",
        )


def check_paths(config: CompileConfig) -> None:
    """Inputs exist, sample data hold samples, and data flags come with what uses them."""
    from edgekd.data.samples import count_samples
    from edgekd.detect.compile_eval import is_detection_data

    if config.weights is not None and not config.weights.exists():
        raise InputNotFoundError(f"weights file {config.weights} does not exist")
    for flag, path in (
        ("--calib", config.calibration.data),
        ("--eval", config.evaluation.data),
        ("--data", config.training.data),
    ):
        if path is None:
            continue
        if not Path(path).exists():
            raise InputNotFoundError(f"{flag} {path} does not exist")
        if flag == "--eval" and is_detection_data(path):
            continue  # a data.yaml or COCO JSON: its reader names what is wrong with it
        if count_samples(path) == 0:
            raise DataError(f"{flag} {path} holds no samples", "point it at images (or a non-empty .npy/.npz)")
    t = config.training
    if t.student is not None and t.data is None:
        raise ConfigError("--student trains a student and needs training images", "pass --data DIR")
    if config.qat.epochs and t.data is None:
        raise ConfigError("--qat-epochs trains and needs training images", "pass --data DIR")
    if t.student is not None and t.epochs < 1:
        raise ConfigError(
            f"--student with --epochs {t.epochs} would ship an untrained student", "pass --epochs 1 or more"
        )


def check_detection(d: DetectionOptions, spec: TargetSpec) -> None:
    check_number("--nms-conf", d.conf, minimum=0, maximum=1, hint="a score, e.g. 0.25")
    check_number("--nms-iou", d.iou, minimum=0, maximum=1, hint="e.g. 0.7")
    check_number("--nms-max-det", d.max_det, minimum=1, integer=True, hint="e.g. 300")
    if d.nms and not spec.graph_nms:
        raise ConfigError(
            f"--nms puts NonMaxSuppression in the artifact, and {spec.name}'s runtime has no such op in edgekd's "
            f"{spec.backend} backend",
            "drop --nms: the runner does NMS for this target (edgekd.detect.nms, numpy; `edgekd bench` times it)",
        )


def check_activation_scheme(scheme: str | None, spec: TargetSpec, precision: str) -> None:
    """An --activation-scheme the target's runtime cannot compute is refused before any work (it failed
    in emit, after calibration, as nodes the backend cannot lower)."""
    from edgekd.backends import get_backend

    accepted = get_backend(spec.backend).activation_schemes
    if scheme is None or precision not in ("int8", "auto") or accepted is None or scheme in accepted:
        return
    raise ConfigError(
        f"--activation-scheme {scheme}: {spec.name}'s runtime ({spec.backend}) computes "
        f"{' or '.join(accepted)} activations only",
        f"drop --activation-scheme (the target's own is {spec.activation_scheme}) or pass {', '.join(accepted)}",
    )


def validate_compile(config: CompileConfig, spec: TargetSpec) -> None:
    c, q, e, t, v, a = (
        config.calibration,
        config.quantization,
        config.evaluation,
        config.training,
        config.verification,
        config.qat,
    )
    check_number("--calib-samples", c.samples, minimum=1, integer=True)
    check_number("the calibration batch", c.batch, minimum=1, integer=True)
    check_number("--ema-constant", c.ema_constant, above=0, maximum=1, hint="e.g. 0.01 (torch's default)")
    check_number("--percentile", c.percentile, above=50, maximum=100, hint="e.g. 99.99")
    check_number("the sensitivity samples", q.sensitivity_samples, minimum=1, integer=True)
    check_number("--keep-float N", q.keep_float_count, minimum=0, integer=True)
    check_number("--eval-samples", e.samples, minimum=1, integer=True)
    check_number("--max-drop", e.max_drop, minimum=0, hint="points of top-1 (or of agreement with float), e.g. 1.0")
    check_number("--epochs", t.epochs, minimum=0, integer=True)
    check_number("--sparsity", t.sparsity, minimum=0, maximum=0.99, hint="a fraction, e.g. 0.5")
    check_number("--verify-samples", v.samples, minimum=1, integer=True)
    check_number("--qat-epochs", a.epochs, minimum=0, integer=True)
    check_number("--qat-fallback-epochs", a.fallback_epochs, minimum=0, integer=True)
    check_number("--qat-lr", a.lr, above=0, hint="e.g. 0.0005")
    check_number("--qat-alpha", a.alpha, minimum=0, maximum=1, hint="1: KD alone; below 1 mixes in the labels")
    check_number("--seed", config.seed, minimum=0, integer=True)
    s = config.search
    if (s.device or s.inventory) and not (config.precision == "auto" or s.latency_budget_ms is not None):
        raise ConfigError(
            "--device and --inventory say where --precision auto / --latency-budget time their "
            "candidates; this compile has neither",
            "to benchmark the artifact afterwards use --bench DEVICE",
        )
    check_number("--latency-budget", s.latency_budget_ms, above=0, hint="milliseconds on the device, e.g. 5")
    check_number("--proxy-epochs", s.proxy_epochs, minimum=1, integer=True)
    check_number(
        "the timing repeats",
        s.repeats,
        minimum=3,
        integer=True,
        hint="a latency ratio is quoted from at least 3 interleaved repeats",
    )
    if len(set(q.keep_float)) != len(q.keep_float) or any(not n for n in q.keep_float):
        raise ConfigError(f"--keep-float names {list(q.keep_float)} repeat or are empty")
    if config.labels is not None and (not config.labels or any(not n.strip() for n in config.labels)):
        raise ConfigError("the labels file has empty names", "one class name per line, in the model's output order")
    precision = config.precision or spec.default_precision
    if precision not in ("int8", "auto") and (q.keep_float or q.keep_float_count):
        raise ConfigError(
            f"--keep-float applies to int8 compiles; this one is {precision}",
            "drop --keep-float, or pass --precision int8 --calib DIR",
        )
    if e.max_drop is not None and precision not in ("int8", "auto"):
        raise ConfigError(
            f"--max-drop returns int8 layers to float until the drop is met; this compile is {precision}",
            "pass --precision int8 --calib DIR (or --precision auto), or drop --max-drop: --eval alone reports "
            "the artifact against float",
        )
    if a.epochs and precision != "int8":
        raise ConfigError(
            f"--qat-epochs trains int8 ranges; this compile is {precision}",
            "pass --precision int8 --calib DIR, or drop --qat-epochs",
        )
    check_activation_scheme(c.activation_scheme, spec, precision)
    if a.ranges not in ("learn", "ema"):
        raise ConfigError(f"--qat-ranges must be learn or ema, got {a.ranges!r}")
    check_detection(config.detection, spec)
    check_shape(config.input)
    check_paths(config)
    if t.options:
        from edgekd.distill.options import train_config

        train_config(t.options)  # unknown names and malformed schedules fail now, not after export

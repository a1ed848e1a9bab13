"""User-facing training options (CLI flags, CompileConfig.train_options) → TrainConfig.

Schedules are written ``START:END`` (e.g. ``--temperature 6:2``), or one number for a constant; the
shape (linear or cosine) comes from ``temperature_schedule``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from edgekd.distill.schedules import Schedule
from edgekd.errors import ConfigError

# option name → TrainConfig field, for the options that pass through unchanged
DIRECT = {
    "lr": "lr",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr_schedule": "schedule",
    "learn_temperature": "learn_temperature",
    "hint_weight": "hint_weight",
    "attention_weight": "attention_weight",
    "feature_loss": "feature_loss",
    "compensate": "compensate",
    "loss_clip": "loss_clip",
    "select_fraction": "select_fraction",
    "early_stop": "early_stop_patience",
    "sparsity_scope": "scope",
    "max_samples": "max_samples",
    "augment": "augment",
    "kd_loss": "kd_loss",
    "dkd_beta": "dkd_beta",
    "live_teacher": "live_teacher",
    "amp": "amp",
}
KNOWN = set(DIRECT) | {"temperature", "temperature_schedule", "alpha", "feature_pairs"}


def parse_schedule(text: str | float, kind: str = "linear", what: str = "schedule") -> Schedule:
    parts = str(text).split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is not a number or START:END", f"e.g. 4, or 6:2 for {kind} from 6 to 2"
        ) from None
    if len(values) == 1:
        return Schedule("constant", values[0])
    if len(values) != 2:
        raise ConfigError(f"{what} {text!r} has {len(values)} parts", "write START:END, e.g. 6:2")
    return Schedule(kind, values[0], values[1])


def parse_pairs(text: str | None) -> tuple[tuple[str, str], ...] | None:
    """``"s1=t1,s2=t2"`` → ((s1, t1), (s2, t2)); empty or "auto" → None (pair by spatial size)."""
    if not text or text == "auto":
        return None
    pairs = []
    for item in str(text).split(","):
        s, sep, t = item.strip().partition("=")
        if not sep or not s or not t:
            raise ConfigError(
                f"feature pair {item!r} is not STUDENT_LAYER=TEACHER_LAYER",
                "e.g. --feature-pairs layers.0=layers.2,layers.1=layers.5, or auto",
            )
        pairs.append((s.strip(), t.strip()))
    return tuple(pairs)


def train_config(options: Mapping[str, Any], **fixed):
    """A TrainConfig from user options; ``fixed`` (epochs, seed, checkpoint_dir, …) are the caller's and
    options override only the keys they set."""
    from edgekd.distill.trainer import TrainConfig

    unknown = set(options) - KNOWN
    if unknown:
        raise ConfigError(f"unknown training options {sorted(unknown)}", f"known: {', '.join(sorted(KNOWN))}")
    kw: dict[str, Any] = dict(fixed)
    for key, field_name in DIRECT.items():
        if options.get(key) is not None:
            kw[field_name] = options[key]
    kind = options.get("temperature_schedule") or "linear"
    if options.get("temperature") is not None:
        kw["temperature"] = parse_schedule(options["temperature"], kind, "temperature")
    if options.get("alpha") is not None:
        kw["alpha"] = parse_schedule(options["alpha"], "linear", "alpha")
    if options.get("feature_pairs") is not None:
        kw["feature_pairs"] = parse_pairs(options["feature_pairs"])
    return TrainConfig(**kw)


def checkpoint_root(output: Path) -> Path:
    """Training checkpoints of a compile live beside its output, so an interrupted compile can resume;
    a successful compile removes them."""
    output = Path(output).absolute()
    return output.with_name(output.name + ".checkpoints")


CHECKPOINT_FILES = ("last.pt", "last.pt.tmp")


def remove_checkpoints(root: Path) -> None:
    """Removes the checkpoint files the trainer wrote under ``root/<pass>/`` and the folders they leave
    empty; anything else found there is the user's and stays."""
    if not root.is_dir():
        return
    for sub in [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())]:
        for name in CHECKPOINT_FILES:
            (sub / name).unlink(missing_ok=True)
        if sub != root:
            _rmdir_if_empty(sub)
    _rmdir_if_empty(root)


def checkpoint_note(output: Path) -> str | None:
    """After a failed or interrupted compile: where its resumable training is, and how to continue;
    an empty checkpoint folder (nothing resumable) is removed."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return None
    kept = sorted(p for p in root.glob("*/last.pt"))
    if not kept:
        for sub in [p for p in root.iterdir() if p.is_dir()]:
            _rmdir_if_empty(sub)
        _rmdir_if_empty(root)
        return None
    return (
        f"training checkpoints ({', '.join(p.parent.name for p in kept)}) are kept in {root}: "
        "run the same command with --resume to continue"
    )


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass

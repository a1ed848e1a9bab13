"""Checks before training starts: the data fit the teacher, and the teacher sees the data as it was
trained to (a teacher at chance on labelled data means the preprocessing is wrong, not that it is weak)."""

from __future__ import annotations

import math

from edgekd.errors import ConfigError, DataError

MIN_HOLDOUT = 50  # fewer held-out images cannot tell chance from a weak teacher


def check_classes(classes: tuple[str, ...] | None, teacher_outputs: int, data_dir) -> None:
    """Labelled data cannot have more class folders than the teacher has outputs (an update may bring
    data for only some of them)."""
    if classes and len(classes) > teacher_outputs:
        raise DataError(
            f"{data_dir} has {len(classes)} class folders, the teacher predicts {teacher_outputs} classes",
            "give the data one subfolder per teacher class (in the teacher's label order), or use a "
            "flat folder for label-free KD",
        )


def check_teacher_accuracy(teacher_top1_pct: float | None, classes: int, holdout: int) -> None:
    """Refuses a teacher whose holdout top-1 is not clearly above chance."""
    if teacher_top1_pct is None or holdout < MIN_HOLDOUT or classes < 2:
        return
    chance = 1.0 / classes
    margin = 3 * math.sqrt(chance * (1 - chance) / holdout)  # three binomial standard deviations
    if teacher_top1_pct / 100.0 <= chance + margin:
        raise ConfigError(
            f"the teacher scores {teacher_top1_pct:.1f} % on {holdout} labelled holdout images, chance is "
            f"{100 * chance:.1f} %: it does not see these images the way it was trained",
            "pass the teacher's preprocessing (--mean/--std, --scale, --channel-order, or a model card), and check "
            "that the class folders follow the teacher's label order",
        )

"""Teacher → a zoo student trained by KD: the shared body of DistillPass and ``edgekd distill``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgekd.data.preprocess import Preprocess
from edgekd.errors import ConfigError


@dataclass(frozen=True)
class DistillRecord:
    """What a distillation produced: sizes, holdout accuracy, the run."""

    student: str
    teacher_params: int
    student_params: int
    teacher_macs: int
    student_macs: int
    teacher_val_top1: float | None
    student_val_top1: float | None
    best_val_top1: float | None
    epochs: int
    seconds: float
    kept_samples: int
    total_samples: int
    final_train_loss: float | None
    feature_pairs: list | None
    skipped_images: int
    replay_size: int
    training: dict


def check_teacher_student(teacher: nn.Module, student: nn.Module, student_name: str, shape: tuple[int, ...]) -> int:
    """Both give [N, classes] logits of the same shape; returns the class count."""
    with torch.no_grad():
        t_out = teacher.eval()(torch.zeros(shape))
        if not isinstance(t_out, torch.Tensor) or t_out.dim() != 2:
            raise ConfigError(
                "distillation needs a teacher with one logits output of shape [N, classes]",
                "distil a classifier, or drop --student",
            )
        s_out = student.eval()(torch.zeros(shape))
    if tuple(s_out.shape) != tuple(t_out.shape):
        raise ConfigError(
            f"student {student_name!r} gives outputs of shape {tuple(s_out.shape)}, the teacher {tuple(t_out.shape)}",
            "pick a student for the same input size and classes",
        )
    return t_out.shape[1]


def training_summary(cfg) -> dict:
    """The TrainConfig as plain values for a manifest or record (schedules as {kind, start, end})."""
    return {
        k: str(v) if isinstance(v, Path) else [list(p) for p in v] if k == "feature_pairs" and v else v
        for k, v in asdict(cfg).items()
    }


def build_student(name: str, classes: int) -> nn.Module:
    """A zoo name (``resnet8:0.625``) or a user factory (``package.module:function``, called with
    ``num_classes`` when it takes it)."""
    import inspect

    from edgekd.models.load import resolve_factory
    from edgekd.models.zoo import ZOO, build_model

    if name.partition(":")[0] in ZOO:
        return build_model(name, num_classes=classes)
    factory = resolve_factory(name)
    takes_classes = "num_classes" in inspect.signature(factory).parameters
    model = factory(num_classes=classes) if takes_classes else factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"student factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def epoch_reporter(emit, label: str):
    """A trainer progress callback that emits one line per finished epoch (None when nobody listens)."""
    if emit is None:
        return None

    def progress(epoch, step, steps, loss, acc):
        if step == steps:
            emit(
                f"  {label} epoch {epoch}: loss {loss:.4f}"
                + (f", holdout top-1 {acc:.2f} %" if acc is not None else "")
            )

    return progress


def distill_student(
    teacher: nn.Module,
    teacher_profile,
    student_name: str,
    data,
    pre: Preprocess,
    shape: tuple[int, ...],
    cfg,
    out_dir: Path | None,
    progress=None,
    init: Path | None = None,
    replay=None,
) -> tuple[nn.Module, DistillRecord]:
    """``init``: the student's current weights (an incremental update); ``replay``: a ReplayBuffer."""
    from edgekd.distill.trainer import train_kd
    from edgekd.models.profile import profile

    with torch.no_grad():
        classes = teacher.eval()(torch.zeros(shape)).shape[-1]
    student = build_student(student_name, classes)
    if init is not None:
        student.load_state_dict(torch.load(init, weights_only=True))
    check_teacher_student(teacher, student, student_name, shape)
    result = train_kd(teacher, student, data, pre, cfg, out_dir=out_dir, progress=progress, replay=replay)
    student.eval()
    sp = profile(student, shape)
    last = result.history[-1] if result.history else {}
    record = DistillRecord(
        student=student_name,
        teacher_params=teacher_profile.params,
        student_params=sp.params,
        teacher_macs=teacher_profile.macs,
        student_macs=sp.macs,
        teacher_val_top1=result.teacher_acc,
        student_val_top1=last.get("val_top1"),
        best_val_top1=result.best_acc,
        epochs=result.epochs_run,
        seconds=round(result.seconds, 3),
        kept_samples=result.kept,
        total_samples=result.total,
        final_train_loss=last.get("train_loss"),
        feature_pairs=result.feature_pairs,
        skipped_images=result.skipped_images,
        replay_size=result.replay_size,
        training=training_summary(cfg),
    )
    return student, record

"""A KD training loop a user can leave running: composable loss terms, holdout top-1, CSV + PNG curves, a
checkpoint per epoch with resume, divergence detection, optional sparsity ramp, replay for incremental
updates, and data parallelism under torchrun."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.curves import write_curves
from edgekd.distill.data import Dataset, augment, load_folder, to_tensor
from edgekd.distill.distributed import join
from edgekd.distill.features import FeatureLosses, capture, pair_layers
from edgekd.distill.losses import clip_term, compensation_weights, hinton_kd
from edgekd.distill.replay import ReplayBuffer
from edgekd.distill.sanity import check_classes, check_teacher_accuracy
from edgekd.distill.schedules import LearnableTemperature, Schedule
from edgekd.data.preprocess import Preprocess
from edgekd.errors import ConfigError, DataError, TrainingDivergedError
from edgekd.sparsity.masks import sparsity_report
from edgekd.sparsity.ramp import GradualPruner

# (epoch, step, steps, loss, holdout top-1); step == steps once per epoch, after validation, with the mean loss
Progress = Callable[[int, int, int, float, "float | None"], None]

__all__ = ["TrainConfig", "TrainResult", "Dataset", "load_folder", "train_kd", "entropy_select", "predict", "top1"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adamw
    schedule: str = "cosine"  # cosine | onecycle
    temperature: Schedule = field(default_factory=lambda: Schedule("linear", 6.0, 2.0))
    learn_temperature: bool = False  # T trained with the student, starting at the schedule's first value
    alpha: Schedule | None = None  # KD share; None: 0.7 → 0.3 with labels, 1 (KD alone) without
    hint_weight: float = 0.0  # FitNets hint loss on paired feature maps
    attention_weight: float = 0.0  # attention transfer on the same pairs
    feature_loss: str = "mse"  # mse | cosine
    feature_pairs: tuple[tuple[str, str], ...] | None = None  # (student layer, teacher layer); None: by spatial size
    compensate: bool = False  # rescale term weights by gradient-norm sensitivity, clamped to [0.5, 2]
    compensate_every: int = 50
    loss_clip: float | None = None  # per term; 0.3 is a good start when KD spikes
    augment: bool = True  # random horizontal flip + 4-pixel padded crop
    seed: int = 0
    early_stop_patience: int | None = None  # epochs without a better holdout top-1
    checkpoint_dir: Path | None = None
    resume: bool = False
    select_fraction: float | None = None  # label-free: keep this fraction with the highest teacher entropy [0.3]
    max_samples: int | None = None
    sparsity: float | None = None
    pattern: str = "unstructured"  # unstructured | 2:4
    scope: str = "layer"  # layer | global
    mask_every: int = 10  # steps between mask updates during the ramp

    def __post_init__(self):
        for name, value, valid in (("optimizer", self.optimizer, ("sgd", "adamw")),
                                   ("schedule", self.schedule, ("cosine", "onecycle")),
                                   ("pattern", self.pattern, ("unstructured", "2:4")),
                                   ("scope", self.scope, ("layer", "global")),
                                   ("feature_loss", self.feature_loss, ("mse", "cosine"))):
            if value not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must lie in [0, 1), got {self.sparsity}")
        if self.select_fraction is not None and not 0 < self.select_fraction <= 1:
            raise ConfigError(f"select fraction must lie in (0, 1], got {self.select_fraction}")
        if self.loss_clip is not None and self.loss_clip <= 0:
            raise ConfigError(f"loss clip must be positive, got {self.loss_clip}")

    @property
    def uses_features(self) -> bool:
        return self.hint_weight > 0 or self.attention_weight > 0


@dataclass
class TrainResult:
    history: list[dict]
    best_acc: float | None
    teacher_acc: float | None
    kept: int
    total: int
    epochs_run: int
    seconds: float
    csv_path: Path | None = None
    png_path: Path | None = None
    sparsity: dict[str, float] | None = None
    feature_pairs: list[tuple[str, str]] | None = None
    skipped_images: int = 0
    replay_size: int = 0


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)


def top1(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == labels).mean() * 100)


def entropy_select(teacher_logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``fraction`` of samples the teacher is least sure about (highest entropy)."""
    p = teacher_logits.softmax(1)
    ent = -(p * p.clamp_min(1e-12).log()).sum(1)
    k = max(1, int(round(fraction * len(ent))))
    return ent.argsort(descending=True)[:k].sort().values


class Objective(nn.Module):
    """The student plus everything trained beside it (hint adapters, a learnable temperature): the module
    DistributedDataParallel wraps, so one forward yields every term and every trained parameter is synced."""

    def __init__(self, student: nn.Module, features: FeatureLosses | None, temperature: LearnableTemperature | None):
        super().__init__()
        self.student, self.features, self.temperature = student, features, temperature
        self._names = [s for s, _ in features.pairs] if features is not None else []

    def forward(self, x: torch.Tensor, teacher_features: dict[str, torch.Tensor] | None):
        with capture(self.student, self._names) as feats:
            logits = self.student(x)
        hint = at = None
        if self.features is not None:
            hint, at = self.features(feats, teacher_features)
        t = self.temperature() if self.temperature is not None else None
        return logits, hint, at, t


def _optimizer(cfg: TrainConfig, params, total_steps: int):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    if cfg.schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total_steps)


DEFAULT_ALPHA = Schedule("linear", 0.7, 0.3)
DEFAULT_SELECT = 0.3  # label-free: the most informative 30 % by teacher entropy


def _check_labels(cfg: TrainConfig, train: Dataset, data_dir) -> None:
    if train.labels is None and cfg.alpha is not None and min(cfg.alpha.start, cfg.alpha.end or cfg.alpha.start) < 1:
        raise ConfigError(f"alpha below 1 mixes in hard labels, but {data_dir} has no class subfolders",
                          "put the images in one subfolder per class, or use alpha 1 (label-free KD)")
    if train.labels is not None and cfg.select_fraction is not None:
        raise ConfigError("entropy-based selection applies to label-free distillation",
                          "pass a flat (unlabelled) image folder, or drop the select fraction")


def train_kd(teacher: nn.Module, student: nn.Module, data_dir, pre: Preprocess, cfg: TrainConfig,
             out_dir: Path | None = None, progress: Progress | None = None,
             replay: ReplayBuffer | None = None) -> TrainResult:
    """Distils ``teacher`` into ``student`` (in place) on the images under ``data_dir``.

    With ``replay``, every step also learns from an equal number of earlier samples drawn from the buffer
    (against the teacher logits stored with them), the KD weight grows with the buffer's fill, and the new
    images are added to the buffer at the end: an incremental update that keeps old behaviour.
    """
    t0 = time.perf_counter()
    world = join()
    torch.manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)  # the same on every worker: they split one permutation
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1000 * world.rank)
    replay_rng = np.random.default_rng(cfg.seed + world.rank)
    train, held = load_folder(data_dir, pre.size, cfg.max_samples, cfg.seed)
    if not len(train):
        raise DataError(f"no training images left in {data_dir} after the holdout split", "add images")
    _check_labels(cfg, train, data_dir)
    x = to_tensor(train.images, pre)
    y = None if train.labels is None else torch.from_numpy(train.labels)
    teacher.eval()
    t_logits = predict(teacher, x)  # un-augmented; used directly when no feature loss needs a live teacher
    total = len(x)
    images = train.images
    if y is None and (cfg.select_fraction or DEFAULT_SELECT) < 1:
        keep = entropy_select(t_logits, cfg.select_fraction or DEFAULT_SELECT)
        x, t_logits, images = x[keep], t_logits[keep], images[keep.numpy()]
    xv = None if held is None else to_tensor(held.images, pre)
    teacher_acc = None if held is None else top1(predict(teacher, xv), held.labels)
    check_classes(train.classes, t_logits.shape[1], data_dir)
    check_teacher_accuracy(teacher_acc, t_logits.shape[1], 0 if held is None else len(held.labels))

    pairs = None
    features = None
    if cfg.uses_features:
        pairs = pair_layers(student, teacher, x[:2], cfg.feature_pairs)
        features = FeatureLosses(pairs, cfg.feature_loss)
    temperature = LearnableTemperature(cfg.temperature.start) if cfg.learn_temperature else None
    objective = Objective(student, features, temperature)
    model = world.wrap(objective)

    batch = cfg.batch_size
    steps_per_epoch = max(1, len(x) // batch if world.size > 1 else math.ceil(len(x) / batch))
    total_steps = steps_per_epoch * max(1, cfg.epochs)
    params = [p for p in objective.parameters() if p.requires_grad]
    student_params = [p for p in student.parameters() if p.requires_grad]
    opt, sched = _optimizer(cfg, params, total_steps)
    pruner = (GradualPruner(student, cfg.sparsity, cfg.pattern, cfg.scope, total_steps, cfg.mask_every)
              if cfg.sparsity else None)

    history: list[dict] = []
    start_epoch, best, stale = 0, None, 0
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    last = ckpt_dir / "last.pt" if ckpt_dir else None
    if cfg.resume and last is not None and last.exists():
        ck = torch.load(last, weights_only=True)
        objective.load_state_dict(ck["objective"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, start_epoch, best, stale = ck["history"], ck["epoch"], ck["best"], ck["stale"]
        order_gen.set_state(ck["order_gen"])
        if pruner is not None:
            pruner.masks = ck.get("masks", {})

    weights = None
    epochs_run = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        teacher.eval()
        epoch_start = time.perf_counter()
        order = torch.randperm(len(x), generator=order_gen)
        sums: dict[str, float] = {}
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            frac = step / max(1, total_steps - 1)
            idx = world.shard(order[i * batch:(i + 1) * batch])
            xb, tb = x[idx], t_logits[idx]
            if replay is not None and len(replay):
                r_img, r_logits = replay.sample(len(idx), replay_rng)
                xb, tb = torch.cat([xb, to_tensor(r_img, pre)]), torch.cat([tb, torch.from_numpy(r_logits)])
            if cfg.augment:
                xb = augment(xb, aug_gen)
            t_feats = None
            if cfg.uses_features:
                with torch.no_grad(), capture(teacher, [t for _, t in features.pairs]) as t_feats:
                    live = teacher(xb)
                if replay is None or not len(replay):
                    tb = live
            logits, hint, at, learned_t = model(xb, t_feats)
            temp = learned_t if learned_t is not None else cfg.temperature.at(frac)
            alpha = 1.0 if y is None else (cfg.alpha or DEFAULT_ALPHA).at(frac)
            if replay is not None:
                alpha += (1 - alpha) * replay.fill
            terms = {"kd": hinton_kd(logits, tb, temp)}
            base = {"kd": alpha}
            if y is not None and alpha < 1:
                terms["ce"] = F.cross_entropy(logits[:len(idx)], y[idx])
                base["ce"] = 1 - alpha
            if hint is not None and cfg.hint_weight > 0:
                terms["hint"], base["hint"] = hint, cfg.hint_weight
            if at is not None and cfg.attention_weight > 0:
                terms["attention"], base["attention"] = at, cfg.attention_weight
            terms = {k: clip_term(v, cfg.loss_clip) for k, v in terms.items()}
            if cfg.compensate and len(terms) > 1 and (weights is None or step % cfg.compensate_every == 0):
                weights = compensation_weights(terms, student_params, base)
            w = weights if cfg.compensate and weights is not None and weights.keys() == base.keys() else base
            loss = sum(w[k] * v for k, v in terms.items())
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}"
                    + (f"; the last good checkpoint is {last}" if last is not None and last.exists() else ""))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if pruner is not None:
                pruner.step(step + 1)
            sums["train_loss"] = sums.get("train_loss", 0.0) + loss.item()
            for k, v in terms.items():
                sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + v.item()
            if progress and world.is_main and i + 1 < steps_per_epoch:  # the last step reports after validation
                progress(epoch + 1, i + 1, steps_per_epoch, loss.item(), None)
        world.sync_buffers(student)
        acc = None if xv is None else top1(predict(student, xv), held.labels)
        row = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}, "val_top1": acc,
               "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - epoch_start, 2)}
        if temperature is not None:
            row["temperature"] = float(temperature().detach())
        history.append(row)
        if progress and world.is_main:
            progress(epoch + 1, steps_per_epoch, steps_per_epoch, row["train_loss"], acc)
        epochs_run = epoch + 1
        if acc is not None and (best is None or acc > best):
            best, stale = acc, 0
        else:
            stale += 1
        if ckpt_dir is not None and world.is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_dir / "last.pt.tmp"
            torch.save({"epoch": epoch + 1, "objective": objective.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "history": history, "best": best, "stale": stale,
                        "order_gen": order_gen.get_state(), "masks": pruner.masks if pruner else {}}, tmp)
            tmp.replace(last)  # atomic: a crash mid-save leaves the previous good checkpoint
        if out_dir is not None and world.is_main:
            write_curves(history, Path(out_dir))
        world.barrier()
        if cfg.early_stop_patience is not None and stale >= cfg.early_stop_patience:
            break
    if pruner is not None:
        pruner.finish()
    world.check_in_sync(student)
    if replay is not None:
        replay.add(images, t_logits.numpy())
    csv_path = png_path = None
    if out_dir is not None and history and world.is_main:
        csv_path, png_path = write_curves(history, Path(out_dir))
    return TrainResult(history, best, teacher_acc, len(x), total, epochs_run, time.perf_counter() - t0, csv_path,
                       png_path, sparsity_report(student) if pruner else None,
                       [(s, t) for s, t, _, _ in pairs] if pairs else None,
                       train.skipped + (held.skipped if held is not None else 0),
                       len(replay) if replay is not None else 0)

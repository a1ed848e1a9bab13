"""A KD training loop a user can leave running: composable loss terms, holdout top-1, CSV + PNG curves, a
checkpoint per epoch with resume, divergence detection, optional sparsity ramp, replay for incremental
updates, and data parallelism under torchrun."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.data.preprocess import Preprocess
from edgekd.distill.curves import write_curves
from edgekd.distill.data import Dataset, augment, load_folder, to_tensor
from edgekd.distill.distributed import World, join
from edgekd.distill.features import FeatureLosses, capture, pair_layers
from edgekd.distill.losses import clip_term, compensation_weights, decoupled_kd, hinton_kd
from edgekd.distill.replay import ReplayBuffer
from edgekd.distill.sanity import check_classes, check_teacher_accuracy
from edgekd.distill.schedules import LearnableTemperature, Schedule
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
    kd_loss: str = "hinton"  # hinton | dkd (decoupled KD: TCKD + dkd_beta · NCKD)
    dkd_beta: float = 8.0  # NCKD weight (Zhao et al. use 8 on CIFAR-100 ResNets)
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
    validate_first: bool = False  # also score the student on the holdout before training (TrainResult.initial_acc)
    live_teacher: bool = False  # teacher logits of each augmented batch, not the stored un-augmented ones
    # "bf16": the student's and teacher's forward passes in bfloat16 autocast, weights, gradients and losses in
    # float32 (2-2.7x faster on a CPU with AMX: a ResNet-8 step 54 → 26 s an epoch, a ResNet-20 teacher 57 → 21 s)
    amp: str | None = None

    def __post_init__(self):
        for name, value, valid in (
            ("optimizer", self.optimizer, ("sgd", "adamw")),
            ("schedule", self.schedule, ("cosine", "onecycle")),
            ("pattern", self.pattern, ("unstructured", "2:4")),
            ("scope", self.scope, ("layer", "global")),
            ("feature_loss", self.feature_loss, ("mse", "cosine")),
            ("kd_loss", self.kd_loss, ("hinton", "dkd")),
        ):
            if value not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        if self.amp not in (None, "bf16"):
            raise ConfigError(f"amp must be 'bf16' or unset, got {self.amp!r}", "leave it unset to train in float32")
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
    initial_acc: float | None = None  # holdout top-1 before training, with validate_first


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)


def native_bf16() -> bool:
    """The CPU computes bfloat16 itself (AVX512-BF16 or AMX); elsewhere torch emulates it, slower than float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(cfg: TrainConfig):
    """The forward passes' precision: bfloat16 autocast under ``amp="bf16"``, else float32 as the model is."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if cfg.amp == "bf16" else contextlib.nullcontext()


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


def _param_groups(objective: nn.Module):
    """The trained parameters; those a module lists in ``no_weight_decay()`` (quantization ranges: decay would
    pull them toward zero) in a second group without weight decay."""
    trained = [p for p in objective.parameters() if p.requires_grad]
    exempt = {id(p) for m in objective.modules() if hasattr(m, "no_weight_decay") for p in m.no_weight_decay()}
    if not exempt:
        return trained
    return [
        {"params": [p for p in trained if id(p) not in exempt]},
        {"params": [p for p in trained if id(p) in exempt], "weight_decay": 0.0},
    ]


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
        raise ConfigError(
            f"alpha below 1 mixes in hard labels, but {data_dir} has no class subfolders",
            "put the images in one subfolder per class, or use alpha 1 (label-free KD)",
        )
    if train.labels is not None and cfg.select_fraction is not None:
        raise ConfigError(
            "entropy-based selection applies to label-free distillation",
            "pass a flat (unlabelled) image folder, or drop the select fraction",
        )


@dataclass
class _TrainSet:
    """The training images as tensors with their teacher logits (after label-free selection), and the holdout."""

    x: torch.Tensor
    labels: torch.Tensor | None
    teacher_logits: torch.Tensor  # un-augmented; used directly when no feature loss needs a live teacher
    images: np.ndarray  # the kept images as loaded, for the replay buffer
    total: int  # images before selection
    held: Dataset | None
    held_x: torch.Tensor | None
    teacher_acc: float | None
    skipped: int  # unreadable images, training and holdout


def _prepare_data(teacher: nn.Module, data_dir, pre: Preprocess, cfg: TrainConfig) -> _TrainSet:
    train, held = load_folder(data_dir, pre.size, cfg.max_samples, cfg.seed)
    if not len(train):
        raise DataError(f"no training images left in {data_dir} after the holdout split", "add images")
    _check_labels(cfg, train, data_dir)
    x = to_tensor(train.images, pre)
    y = None if train.labels is None else torch.from_numpy(train.labels)
    teacher.eval()
    t_logits = predict(teacher, x)
    total, images = len(x), train.images
    if y is None and (cfg.select_fraction or DEFAULT_SELECT) < 1:
        keep = entropy_select(t_logits, cfg.select_fraction or DEFAULT_SELECT)
        x, t_logits, images = x[keep], t_logits[keep], images[keep.numpy()]
    xv = None if held is None else to_tensor(held.images, pre)
    teacher_acc = None if held is None else top1(predict(teacher, xv), held.labels)
    check_classes(train.classes, t_logits.shape[1], data_dir)
    check_teacher_accuracy(teacher_acc, t_logits.shape[1], 0 if held is None else len(held.labels))
    skipped = train.skipped + (held.skipped if held is not None else 0)
    return _TrainSet(x, y, t_logits, images, total, held, xv, teacher_acc, skipped)


@dataclass
class _Run:
    """One training run: what the loop reads, and what it updates (a checkpoint saves and restores the latter)."""

    cfg: TrainConfig
    world: World  # this worker's place in the data-parallel group
    teacher: nn.Module
    pre: Preprocess
    replay: ReplayBuffer | None
    data: _TrainSet
    objective: Objective
    model: nn.Module  # the objective as the workers train it (wrapped for data parallelism)
    student_params: list[nn.Parameter]  # what loss compensation measures gradients on
    feature_pairs: list[tuple[str, str]] | None
    steps_per_epoch: int
    total_steps: int
    opt: torch.optim.Optimizer
    sched: Any
    pruner: GradualPruner | None
    order_gen: torch.Generator  # the same on every worker: they split one permutation
    aug_gen: torch.Generator
    replay_rng: np.random.Generator
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best: float | None = None
    stale: int = 0  # epochs since the best holdout top-1
    weights: dict[str, float] | None = None  # the loss-compensation weights in force
    initial_acc: float | None = None  # holdout top-1 before the first epoch (validate_first)

    @property
    def student(self) -> nn.Module:
        return self.objective.student


def _start_run(
    teacher: nn.Module,
    student: nn.Module,
    data: _TrainSet,
    pre: Preprocess,
    cfg: TrainConfig,
    world: World,
    replay: ReplayBuffer | None,
) -> _Run:
    if cfg.amp == "bf16" and not native_bf16():
        warnings.warn(
            "--amp bf16 on a CPU without native bfloat16 (AVX512-BF16 or AMX): torch emulates it, slower than "
            "float32; train without --amp here",
            UserWarning,
            stacklevel=3,
        )
    pairs = features = None
    if cfg.uses_features:
        pairs = pair_layers(student, teacher, data.x[:2], cfg.feature_pairs)
        features = FeatureLosses(pairs, cfg.feature_loss)
    temperature = LearnableTemperature(cfg.temperature.start) if cfg.learn_temperature else None
    objective = Objective(student, features, temperature)
    model = world.wrap(objective)
    n = len(data.x)
    steps_per_epoch = max(1, n // cfg.batch_size if world.size > 1 else math.ceil(n / cfg.batch_size))
    total_steps = steps_per_epoch * max(1, cfg.epochs)
    opt, sched = _optimizer(cfg, _param_groups(objective), total_steps)
    pruner = (
        GradualPruner(student, cfg.sparsity, cfg.pattern, cfg.scope, total_steps, cfg.mask_every)
        if cfg.sparsity
        else None
    )
    return _Run(
        cfg=cfg,
        world=world,
        teacher=teacher,
        pre=pre,
        replay=replay,
        data=data,
        objective=objective,
        model=model,
        student_params=[p for p in student.parameters() if p.requires_grad],
        feature_pairs=[(s, t) for s, t, _, _ in pairs] if pairs else None,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        opt=opt,
        sched=sched,
        pruner=pruner,
        order_gen=torch.Generator().manual_seed(cfg.seed),
        aug_gen=torch.Generator().manual_seed(cfg.seed + 1000 * world.rank),
        replay_rng=np.random.default_rng(cfg.seed + world.rank),
    )


def _load_checkpoint(run: _Run, path: Path) -> None:
    ck = torch.load(path, weights_only=True)
    run.objective.load_state_dict(ck["objective"])
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    run.history, run.start_epoch, run.best, run.stale = ck["history"], ck["epoch"], ck["best"], ck["stale"]
    run.order_gen.set_state(ck["order_gen"])
    run.initial_acc = ck.get("initial_acc")
    if run.pruner is not None:
        run.pruner.masks = ck.get("masks", {})


def _save_checkpoint(run: _Run, epochs_done: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "epoch": epochs_done,
            "objective": run.objective.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "history": run.history,
            "best": run.best,
            "stale": run.stale,
            "order_gen": run.order_gen.get_state(),
            "masks": run.pruner.masks if run.pruner else {},
            "initial_acc": run.initial_acc,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a crash mid-save leaves the previous good checkpoint


def _batch(run: _Run, idx: torch.Tensor):
    """The step's inputs, teacher logits and (for feature losses) teacher features: the samples ``idx``, plus as
    many replayed ones, augmented."""
    xb, tb = run.data.x[idx], run.data.teacher_logits[idx]
    replaying = run.replay is not None and len(run.replay)
    if replaying:
        r_img, r_logits = run.replay.sample(len(idx), run.replay_rng)
        xb, tb = torch.cat([xb, to_tensor(r_img, run.pre)]), torch.cat([tb, torch.from_numpy(r_logits)])
    if run.cfg.augment:
        xb = augment(xb, run.aug_gen)
    t_feats = None
    if run.cfg.uses_features or run.cfg.live_teacher:
        names = [t for _, t in run.objective.features.pairs] if run.cfg.uses_features else []
        with torch.no_grad(), capture(run.teacher, names) as feats, autocast(run.cfg):
            live = run.teacher(xb).float()
        t_feats = feats if run.cfg.uses_features else None
        if not replaying:  # replayed samples keep the logits stored with them
            tb = live
    return xb, tb, t_feats


def _kd_term(run: _Run, logits: torch.Tensor, teacher_logits: torch.Tensor, idx: torch.Tensor, temp) -> torch.Tensor:
    if run.cfg.kd_loss == "hinton":
        return hinton_kd(logits, teacher_logits, temp)
    target = teacher_logits.argmax(-1)  # label-free and replayed samples: the teacher's class
    if run.data.labels is not None:
        target = torch.cat([run.data.labels[idx], target[len(idx) :]])
    return decoupled_kd(logits, teacher_logits, target, temp, 1.0, run.cfg.dkd_beta)


def _loss(run: _Run, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's weighted loss and its terms (KD, labels, hint, attention), each clipped."""
    cfg, labels = run.cfg, run.data.labels
    frac = step / max(1, run.total_steps - 1)
    xb, tb, t_feats = _batch(run, idx)
    with autocast(cfg):
        logits, hint, at, learned_t = run.model(xb, t_feats)
    logits, hint, at = (None if t is None else t.float() for t in (logits, hint, at))
    temp = learned_t if learned_t is not None else cfg.temperature.at(frac)
    alpha = 1.0 if labels is None else (cfg.alpha or DEFAULT_ALPHA).at(frac)
    if run.replay is not None:
        alpha += (1 - alpha) * run.replay.fill
    terms = {"kd": _kd_term(run, logits, tb, idx, temp)}
    base = {"kd": alpha}
    if labels is not None and alpha < 1:
        terms["ce"] = F.cross_entropy(logits[: len(idx)], labels[idx])
        base["ce"] = 1 - alpha
    if hint is not None and cfg.hint_weight > 0:
        terms["hint"], base["hint"] = hint, cfg.hint_weight
    if at is not None and cfg.attention_weight > 0:
        terms["attention"], base["attention"] = at, cfg.attention_weight
    terms = {k: clip_term(v, cfg.loss_clip) for k, v in terms.items()}
    if cfg.compensate and len(terms) > 1 and (run.weights is None or step % cfg.compensate_every == 0):
        run.weights = compensation_weights(terms, run.student_params, base)
    w = run.weights if cfg.compensate and run.weights is not None and run.weights.keys() == base.keys() else base
    return sum(w[k] * v for k, v in terms.items()), terms


def _train_epoch(run: _Run, epoch: int, checkpoint: Path | None, progress: Progress | None) -> dict[str, float]:
    """One pass over the (sharded) training set; returns the summed loss and loss terms."""
    run.model.train()
    run.teacher.eval()
    batch = run.cfg.batch_size
    order = torch.randperm(len(run.data.x), generator=run.order_gen)
    sums: dict[str, float] = {}
    for i in range(run.steps_per_epoch):
        step = epoch * run.steps_per_epoch + i
        idx = run.world.shard(order[i * batch : (i + 1) * batch])
        loss, terms = _loss(run, idx, step)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the training loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}"
                + (
                    f"; the last good checkpoint is {checkpoint}"
                    if checkpoint is not None and checkpoint.exists()
                    else ""
                )
            )
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.sched.step()
        if run.pruner is not None:
            run.pruner.step(step + 1)
        sums["train_loss"] = sums.get("train_loss", 0.0) + loss.item()
        for k, v in terms.items():
            sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + v.item()
        if progress and run.world.is_main and i + 1 < run.steps_per_epoch:  # the last step reports after validation
            progress(epoch + 1, i + 1, run.steps_per_epoch, loss.item(), None)
    run.world.sync_buffers(run.student)
    return sums


def _validate(run: _Run, epoch: int, sums: dict[str, float], started: float) -> dict:
    """The epoch's history row: mean losses, holdout top-1, learning rate, seconds (and a learned temperature)."""
    data = run.data
    acc = None if data.held_x is None else top1(predict(run.student, data.held_x), data.held.labels)
    row = {
        "epoch": epoch + 1,
        **{k: v / run.steps_per_epoch for k, v in sums.items()},
        "val_top1": acc,
        "lr": run.sched.get_last_lr()[0],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if run.objective.temperature is not None:
        row["temperature"] = float(run.objective.temperature().detach())
    return row


def train_kd(
    teacher: nn.Module,
    student: nn.Module,
    data_dir,
    pre: Preprocess,
    cfg: TrainConfig,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    replay: ReplayBuffer | None = None,
) -> TrainResult:
    """Distils ``teacher`` into ``student`` (in place) on the images under ``data_dir``.

    With ``replay``, every step also learns from an equal number of earlier samples drawn from the buffer
    (against the teacher logits stored with them), the KD weight grows with the buffer's fill, and the new
    images are added to the buffer at the end: an incremental update that keeps old behaviour.
    """
    t0 = time.perf_counter()
    world = join()
    torch.manual_seed(cfg.seed)
    data = _prepare_data(teacher, data_dir, pre, cfg)
    run = _start_run(teacher, student, data, pre, cfg, world, replay)
    last = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir else None
    if cfg.resume and last is not None and last.exists():
        _load_checkpoint(run, last)
    if cfg.validate_first and run.start_epoch == 0 and data.held_x is not None:
        run.initial_acc = top1(predict(student, data.held_x), data.held.labels)
    epochs_run = run.start_epoch
    for epoch in range(run.start_epoch, cfg.epochs):
        started = time.perf_counter()
        row = _validate(run, epoch, _train_epoch(run, epoch, last, progress), started)
        run.history.append(row)
        if progress and world.is_main:
            progress(epoch + 1, run.steps_per_epoch, run.steps_per_epoch, row["train_loss"], row["val_top1"])
        epochs_run = epoch + 1
        if row["val_top1"] is not None and (run.best is None or row["val_top1"] > run.best):
            run.best, run.stale = row["val_top1"], 0
        else:
            run.stale += 1
        if last is not None and world.is_main:
            _save_checkpoint(run, epoch + 1, last)
        if out_dir is not None and world.is_main:
            write_curves(run.history, Path(out_dir))
        world.barrier()
        if cfg.early_stop_patience is not None and run.stale >= cfg.early_stop_patience:
            break
    if run.pruner is not None:
        run.pruner.finish()
    world.check_in_sync(student)
    if replay is not None:
        replay.add(data.images, data.teacher_logits.numpy())
    csv_path = png_path = None
    if out_dir is not None and run.history and world.is_main:
        csv_path, png_path = write_curves(run.history, Path(out_dir))
    return TrainResult(
        run.history,
        run.best,
        data.teacher_acc,
        len(data.x),
        data.total,
        epochs_run,
        time.perf_counter() - t0,
        csv_path,
        png_path,
        sparsity_report(student) if run.pruner else None,
        run.feature_pairs,
        data.skipped,
        len(replay) if replay is not None else 0,
        run.initial_acc,
    )

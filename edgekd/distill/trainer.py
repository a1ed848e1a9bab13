"""A KD training loop a user can leave running: cached teacher outputs, holdout top-1, CSV + PNG
curves, a checkpoint per epoch with resume, divergence detection, optional sparsity ramp."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.data.folder import scan_image_folder, split_holdout
from edgekd.data.preprocess import Preprocess, read_rgb
from edgekd.distill.losses import clip_term, kd_with_labels
from edgekd.distill.schedules import Schedule
from edgekd.errors import ConfigError, TrainingDivergedError
from edgekd.sparsity.masks import (apply_masks, cubic_sparsity, global_masks, magnitude_mask, nm_mask, prunable,
                                   sparsity_report)

Progress = Callable[[int, int, int, float, "float | None"], None]  # (epoch, step, steps, loss, acc)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adamw
    schedule: str = "cosine"  # cosine | onecycle
    temperature: Schedule = field(default_factory=lambda: Schedule("linear", 6.0, 2.0))
    alpha: Schedule = field(default_factory=lambda: Schedule("linear", 0.7, 0.3))
    loss_clip: float | None = None  # 0.3 is a good start when KD spikes
    augment: bool = True  # random horizontal flip + 4-pixel padded crop
    seed: int = 0
    early_stop_patience: int | None = None  # epochs without a better holdout top-1
    checkpoint_dir: Path | None = None
    resume: bool = False
    select_fraction: float | None = None  # label-free only: keep this fraction with the highest teacher entropy
    max_samples: int | None = None
    sparsity: float | None = None
    pattern: str = "unstructured"  # unstructured | 2:4
    scope: str = "layer"  # layer | global
    mask_every: int = 10  # steps between mask updates during the ramp

    def __post_init__(self):
        for name, value, valid in (("optimizer", self.optimizer, ("sgd", "adamw")),
                                   ("schedule", self.schedule, ("cosine", "onecycle")),
                                   ("pattern", self.pattern, ("unstructured", "2:4")),
                                   ("scope", self.scope, ("layer", "global"))):
            if value not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must lie in [0, 1), got {self.sparsity}")


@dataclass
class Dataset:
    images: np.ndarray  # N,H,W,3 uint8, decoded once
    labels: np.ndarray | None
    classes: tuple[str, ...]


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


def load_folder(root, size: tuple[int, int], limit: int | None = None, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """(train, holdout) decoded into uint8 arrays; holdout only when the folder is labelled."""
    folder = scan_image_folder(root)
    if limit is not None and limit < len(folder):
        idx = np.sort(np.random.default_rng(seed).permutation(len(folder))[:limit])
        folder = folder.subset(idx)

    def decode(f):
        imgs = np.stack([read_rgb(p, size) for p in f.files]) if len(f) else np.zeros((0, *size, 3), np.uint8)
        return Dataset(imgs, None if f.labels is None else np.asarray(f.labels, np.int64), f.classes)

    if folder.labels is None:
        return decode(folder), None
    train, held = split_holdout(folder)
    if not len(held):  # fewer than 10 images per class: hold out every 5th instead
        train, held = split_holdout(folder, every=5, offset=4)
    return decode(train), (decode(held) if len(held) else None)


def to_tensor(images: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """uint8 N,H,W,3 → normalised float NCHW (the layout the torch models take)."""
    x = torch.from_numpy(images).float() * pre.scale
    x = (x - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    if pre.channel_order == "BGR":
        x = x.flip(-1)
    return x.permute(0, 3, 1, 2).contiguous()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


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


class _Sparsifier:
    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int):
        self.cfg, self.layers = cfg, prunable(model)
        if cfg.pattern == "2:4":  # layers whose input channels do not group by 4 stay dense
            self.layers = {n: m for n, m in self.layers.items() if m.weight.shape[1] % 4 == 0}
        self.ramp_end = max(1, int(total_steps * 2 / 3))
        self.masks: dict[str, torch.Tensor] = {}

    def step(self, step: int) -> None:
        if step <= self.ramp_end and (step % self.cfg.mask_every == 0 or step == self.ramp_end or not self.masks):
            s = cubic_sparsity(step, self.ramp_end, self.cfg.sparsity)
            weights = {n: m.weight.detach() for n, m in self.layers.items()}
            if self.cfg.pattern == "2:4":
                self.masks = {n: nm_mask(w) for n, w in weights.items()} if step >= self.ramp_end // 2 else {}
            elif self.cfg.scope == "global":
                self.masks = global_masks(weights, s)
            else:
                self.masks = {n: magnitude_mask(w, s) for n, w in weights.items()}
        apply_masks(self.layers, self.masks)

    def finish(self) -> None:
        """Masks at the final sparsity: exact zeros whatever the step count was."""
        self.step(self.ramp_end)


def _write_curves(history: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "training.csv", out_dir / "training.png"
    keys = list(history[0])
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any(h.get("val_top1") is not None for h in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["val_top1"] for h in history], color="tab:orange", marker="s", label="val top-1")
        ax2.set_ylabel("top-1 %")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return csv_path, png_path


def train_kd(teacher: nn.Module, student: nn.Module, data_dir, pre: Preprocess, cfg: TrainConfig,
             out_dir: Path | None = None, progress: Progress | None = None) -> TrainResult:
    """Distils ``teacher`` into ``student`` (in place) on the images under ``data_dir``."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train, held = load_folder(data_dir, pre.size, cfg.max_samples, cfg.seed)
    x = to_tensor(train.images, pre)
    y = None if train.labels is None else torch.from_numpy(train.labels)
    teacher.eval()
    t_logits = predict(teacher, x)  # cached once, on un-augmented data
    total = len(x)
    if y is None and cfg.select_fraction is not None:
        keep = entropy_select(t_logits, cfg.select_fraction)
        x, t_logits = x[keep], t_logits[keep]
    xv = None if held is None else to_tensor(held.images, pre)
    teacher_acc = None if held is None else top1(predict(teacher, xv), held.labels)

    steps_per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
    total_steps = steps_per_epoch * max(1, cfg.epochs)
    params = [p for p in student.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total_steps)
    sparsifier = _Sparsifier(student, cfg, total_steps) if cfg.sparsity else None

    history: list[dict] = []
    start_epoch, best, stale = 0, None, 0
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    last = ckpt_dir / "last.pt" if ckpt_dir else None
    if cfg.resume and last is not None and last.exists():
        ck = torch.load(last, weights_only=True)
        student.load_state_dict(ck["student"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, start_epoch, best, stale = ck["history"], ck["epoch"], ck["best"], ck["stale"]
        if sparsifier is not None:
            sparsifier.masks = ck.get("masks", {})

    epochs_run = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        student.train()
        order = torch.randperm(len(x), generator=gen)
        losses = []
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            progress_frac = step / max(1, total_steps - 1)
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = _augment(x[idx], gen) if cfg.augment else x[idx]
            out = student(xb)
            loss = kd_with_labels(out, t_logits[idx], None if y is None else y[idx],
                                  cfg.temperature.at(progress_frac), cfg.alpha.at(progress_frac))
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}"
                    + (f"; the last good checkpoint is {last}" if last is not None and last.exists() else ""))
            opt.zero_grad(set_to_none=True)
            clip_term(loss, cfg.loss_clip).backward()
            opt.step()
            sched.step()
            if sparsifier is not None:
                sparsifier.step(step + 1)
            losses.append(loss.item())
            if progress:
                progress(epoch + 1, i + 1, steps_per_epoch, loss.item(), None)
        acc = None if xv is None else top1(predict(student, xv), held.labels)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_top1": acc,
                        "lr": sched.get_last_lr()[0]})
        if progress:
            progress(epoch + 1, steps_per_epoch, steps_per_epoch, history[-1]["train_loss"], acc)
        epochs_run = epoch + 1
        if acc is not None and (best is None or acc > best):
            best, stale = acc, 0
        else:
            stale += 1
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_dir / "last.pt.tmp"
            torch.save({"epoch": epoch + 1, "student": student.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "history": history, "best": best, "stale": stale,
                        "masks": sparsifier.masks if sparsifier else {}}, tmp)
            tmp.replace(last)  # atomic: a crash mid-save leaves the previous good checkpoint
        if out_dir is not None:
            _write_curves(history, Path(out_dir))
        if cfg.early_stop_patience is not None and stale >= cfg.early_stop_patience:
            break
    if sparsifier is not None:
        sparsifier.finish()
    csv_path = png_path = None
    if out_dir is not None and history:
        csv_path, png_path = _write_curves(history, Path(out_dir))
    return TrainResult(history, best, teacher_acc, len(x), total, epochs_run, time.perf_counter() - t0, csv_path,
                       png_path, sparsity_report(student) if sparsifier else None)

"""Training images decoded once into uint8 arrays, a fixed holdout split, and the flip/crop augmentation."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.data.folder import ImageFolder, scan_image_folder, split_holdout
from edgekd.data.frames import LUMA
from edgekd.data.preprocess import Preprocess, read_rgb
from edgekd.errors import DataError

MAX_UNREADABLE = 0.01  # above this fraction of undecodable files the folder is refused, not silently thinned


@dataclass
class Dataset:
    images: np.ndarray  # N,H,W,3 uint8
    labels: np.ndarray | None
    classes: tuple[str, ...]
    skipped: int = 0  # files that could not be decoded

    def __len__(self) -> int:
        return len(self.images)


def decode(folder: ImageFolder, size: tuple[int, int], max_unreadable: float = MAX_UNREADABLE) -> Dataset:
    images, keep, bad = [], [], []
    for i, path in enumerate(folder.files):
        try:
            rgb = read_rgb(path, size)  # float32 from a 16-bit file: training keeps uint8 in memory
            images.append(rgb if rgb.dtype == np.uint8 else np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
            keep.append(i)
        except DataError:
            bad.append(path)
    if bad and len(bad) > max_unreadable * max(1, len(folder)):
        raise DataError(
            f"{len(bad)} of {len(folder)} images under {folder.root} cannot be decoded (first: {bad[0]})",
            f"remove or replace them; up to {max_unreadable:.0%} are skipped",
        )
    if bad:
        print(f"edgekd: skipped {len(bad)} unreadable image(s) under {folder.root}, first {bad[0]}", file=sys.stderr)
    labels = None if folder.labels is None else np.asarray(folder.labels, np.int64)[keep]
    array = np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)
    return Dataset(array, labels, folder.classes, len(bad))


def load_folder(root, size: tuple[int, int], limit: int | None = None, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """(train, holdout) decoded; holdout only when the folder is labelled."""
    folder = scan_image_folder(root)
    if limit is not None and limit < len(folder):
        idx = np.sort(np.random.default_rng(seed).permutation(len(folder))[:limit])
        folder = folder.subset(idx)
    if folder.labels is None:
        return decode(folder, size), None
    train, held = split_holdout(folder)
    if not len(held):  # fewer than 10 images per class: hold out every 5th instead
        train, held = split_holdout(folder, every=5, offset=4)
    return decode(train, size), (decode(held, size) if len(held) else None)


def to_tensor(images: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """uint8 N,H,W,3 → normalised float NCHW (the layout the torch models take)."""
    x = torch.from_numpy(images).float()
    if pre.channel_order == "GRAY":
        x = x @ torch.tensor(LUMA)[:, None]
    x = x * pre.scale
    x = (x - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    if pre.channel_order == "BGR":
        x = x.flip(-1)
    return x.permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip per image and one random 4-pixel padded crop per batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]

"""Replay buffer for incremental distillation: a reservoir sample of earlier training images with the
teacher's logits for them, stored as a plain .npz (no pickles), mixed into every step of an update so
the student keeps its old behaviour while it learns from new data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import DataError


class ReplayBuffer:
    def __init__(self, capacity: int, seed: int = 0):
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.images = np.zeros((0, 0, 0, 3), np.uint8)
        self.logits = np.zeros((0, 0), np.float32)
        self.seen = 0  # samples ever offered: reservoir sampling keeps each with probability capacity/seen
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def fill(self) -> float:
        return len(self) / self.capacity

    def add(self, images: np.ndarray, logits: np.ndarray) -> None:
        """Reservoir sampling (Vitter's algorithm R): every sample ever offered is equally likely to stay."""
        if not len(self):
            self.images = np.zeros((0, *images.shape[1:]), np.uint8)
            self.logits = np.zeros((0, logits.shape[1]), np.float32)
        if images.shape[1:] != self.images.shape[1:] or logits.shape[1] != self.logits.shape[1]:
            raise DataError(
                f"replay samples of shape {images.shape[1:]} / {logits.shape[1]} classes do not match "
                f"the buffer's {self.images.shape[1:]} / {self.logits.shape[1]}",
                "start a new buffer for a model with another input size or class count",
            )
        free = self.capacity - len(self)
        take = min(free, len(images))
        self.images = np.concatenate([self.images, images[:take]])
        self.logits = np.concatenate([self.logits, logits[:take].astype(np.float32)])
        self.seen += take
        for img, lg in zip(images[take:], logits[take:]):
            self.seen += 1
            j = int(self._rng.integers(self.seen))
            if j < self.capacity:
                self.images[j], self.logits[j] = img, lg

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(len(self), size=n)
        return self.images[idx], self.logits[idx]

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, images=self.images, logits=self.logits, capacity=self.capacity, seen=self.seen)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, seed: int = 0) -> "ReplayBuffer":
        with np.load(path, allow_pickle=False) as z:
            buf = cls(int(z["capacity"]), seed)
            buf.images, buf.logits, buf.seen = z["images"], z["logits"], int(z["seen"])
        return buf

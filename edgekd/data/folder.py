"""Image folders: ``root/<class>/*.jpg`` (labelled) or ``root/*.jpg`` (unlabelled)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import DataError, InputNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


@dataclass(frozen=True)
class ImageFolder:
    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None  # None when the folder has no class subfolders
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices) -> "ImageFolder":
        idx = list(indices)
        labels = None if self.labels is None else tuple(self.labels[i] for i in idx)
        return ImageFolder(self.root, tuple(self.files[i] for i in idx), labels, self.classes)

    def content_hash(self) -> str:
        """sha256 over the relative names and bytes of every file, in order."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(str(f.relative_to(self.root)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_image_folder(root: str | Path) -> ImageFolder:
    root = Path(root)
    if not root.exists():
        raise InputNotFoundError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in subdirs if _images_in(d)]
    if class_dirs:
        files, labels = [], []
        for label, d in enumerate(class_dirs):
            imgs = _images_in(d)
            files += imgs
            labels += [label] * len(imgs)
        return ImageFolder(root, tuple(files), tuple(labels), tuple(d.name for d in class_dirs))
    files = _images_in(root)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root} or its subfolders")
    return ImageFolder(root, tuple(files), None, ())


def split_holdout(folder: ImageFolder, every: int = 10, offset: int = 9) -> tuple[ImageFolder, ImageFolder]:
    """Deterministic (train, holdout) split: within each class, every ``every``-th file goes to holdout.

    Depends only on sorted file names, so the same split comes back on every machine.
    """
    if folder.labels is None:
        idx = range(len(folder))
        held = [i for i in idx if i % every == offset]
    else:
        held, seen = [], {}
        for i, lab in enumerate(folder.labels):
            k = seen.get(lab, 0)
            seen[lab] = k + 1
            if k % every == offset:
                held.append(i)
    held_set = set(held)
    train = [i for i in range(len(folder)) if i not in held_set]
    return folder.subset(train), folder.subset(held)

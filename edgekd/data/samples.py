"""Sample inputs for verification and calibration: image folders or .npy/.npz arrays, in batches.

Only one batch is in memory at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from edgekd.data.folder import scan_image_folder
from edgekd.data.preprocess import Preprocess, load_image
from edgekd.errors import DataError, InputNotFoundError


def _array_source(path: Path) -> np.ndarray:
    # allow_pickle=False: an .npy/.npz with object arrays would run code when loaded.
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise DataError(f"{path} holds no arrays")
                return z[z.files[0]]
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DataError(f"cannot read {path}: {e}", "save plain numeric arrays (no object dtype)") from e


def count_samples(source: str | Path) -> int:
    path = Path(source)
    if not path.exists():
        raise InputNotFoundError(f"sample data {path} does not exist")
    if path.suffix in (".npy", ".npz"):
        return len(_array_source(path))
    return len(scan_image_folder(path))


def iter_batches(
    source: str | Path,
    pre: Preprocess,
    input_shape: tuple[int, ...],
    batch_size: int | None = None,
    limit: int | None = None,
) -> Iterator[np.ndarray]:
    """Yields float32 batches shaped like ``input_shape`` (batch axis = ``batch_size`` or the shape's)."""
    path = Path(source)
    if not path.exists():
        raise InputNotFoundError(f"sample data {path} does not exist")
    batch = batch_size or input_shape[0]
    sample_shape = tuple(input_shape[1:])
    if path.suffix in (".npy", ".npz"):
        arr = _array_source(path)
        if tuple(arr.shape[1:]) != sample_shape:
            raise DataError(
                f"{path} holds samples of shape {tuple(arr.shape[1:])}, the model takes {sample_shape}",
                "store preprocessed samples as an array of shape [N, *input_shape[1:]]",
            )
        n = len(arr) if limit is None else min(limit, len(arr))
        for i in range(0, n, batch):
            yield np.array(arr[i : min(i + batch, n)], dtype=np.float32)  # a copy: mmap slices are read-only
        return
    folder = scan_image_folder(path)
    pre.check_channels(input_shape)
    files = folder.files if limit is None else folder.files[:limit]
    for i in range(0, len(files), batch):
        chunk = [load_image(f, pre) for f in files[i : i + batch]]
        yield np.stack(chunk).astype(np.float32)


def random_batches(input_shape: tuple[int, ...], count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Standard-normal inputs, the range a mean/std-normalised image takes."""
    rng = np.random.default_rng(seed)
    for _ in range(max(1, count // input_shape[0])):
        yield rng.standard_normal(input_shape).astype(np.float32)


def has_labels(source: str | Path) -> bool:
    """Whether ``source`` is an image folder with class subfolders (arrays and flat folders have no labels)."""
    path = Path(source)
    return path.suffix not in (".npy", ".npz") and scan_image_folder(path).labels is not None


def iter_labelled(
    source: str | Path,
    pre: Preprocess,
    input_shape: tuple[int, ...],
    class_names: tuple[str, ...] | None,
    limit: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(batch, labels) from a class-subfolder image folder; labels follow ``class_names`` when given
    (the model's label order), else the sorted folder names. Samples are spread over all classes."""
    folder = scan_image_folder(source)
    pre.check_channels(input_shape)
    if folder.labels is None:
        raise DataError(
            f"{source} has no class subfolders, so it has no labels to evaluate against",
            "arrange the eval images as DIR/<class name>/*.jpg",
        )
    mapping = list(range(len(folder.classes)))
    if class_names:
        unknown = [c for c in folder.classes if c not in class_names]
        if unknown:
            raise DataError(
                f"eval classes {unknown} are not among the model's labels", f"labels: {', '.join(class_names)}"
            )
        mapping = [class_names.index(c) for c in folder.classes]
    n = len(folder) if limit is None else min(limit, len(folder))
    # A fixed stride through the sorted files picks from every class, not only the first ones.
    idx = np.linspace(0, len(folder) - 1, n).round().astype(int) if n < len(folder) else np.arange(len(folder))
    batch = input_shape[0]
    for i in range(0, len(idx), batch):
        chunk = idx[i : i + batch]
        yield (
            np.stack([load_image(folder.files[j], pre) for j in chunk]).astype(np.float32),
            np.asarray([mapping[folder.labels[j]] for j in chunk]),
        )

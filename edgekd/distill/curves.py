"""training.csv and training.png: every loss term and the holdout top-1, per epoch."""

from __future__ import annotations

import csv
from pathlib import Path


def write_curves(history: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "training.csv", out_dir / "training.png"
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    for key in keys:
        if key == "train_loss" or key.startswith("loss_"):
            ax.plot(epochs, [h.get(key) for h in history], marker="o", label=key.replace("loss_", ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left", fontsize="small")
    if any(h.get("val_top1") is not None for h in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["val_top1"] for h in history], color="black", marker="s", label="val top-1")
        ax2.set_ylabel("holdout top-1 %")
        ax2.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return csv_path, png_path

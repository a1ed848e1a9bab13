"""Train the people-det teacher: zoo yolo-det with a stride-4 level, on crops at native resolution.

    nice -n 19 python examples/people-det/train_teacher.py --data ../shared/data/people-det/data.yaml \\
        --epochs 30 > people-det-train.log 2>&1 &

Data: "Tiny people detection RPI" v1 (Roboflow Universe, workspace resq; repository
projectaeroaiml/human_rpi), CC BY 4.0. One class, 640×640 images, median object 3 × 10 px, median 26
objects per image.

Why this detector: at stride 8 a median person (3 × 10 px) is smaller than one cell and neighbours share
cells, so the head gets a stride-4 level and drops stride 32 (levels 4/8/16; objects ≤ 16 px go to stride
4, 16–32 px to 8, larger to 16; see edgekd/detect/assign.py). The network is fully convolutional, so it
trains on random crops (``--crop`` px, most of them centred near an object, with scale jitter) at the
images' own resolution and is evaluated on whole 640 × 640 validation images, which costs a fraction of
full-image training on a CPU. The images are decoded once into a uint8 cache (``--cache-dir``).

Every epoch is checkpointed (``--resume`` continues); ``--init WEIGHTS`` starts a new cosine cycle of
``--epochs`` epochs from a finished run's weights (a warm restart; the record keeps the earlier run's record
under ``init`` and numbers its epochs after it); every ``--eval-every`` epochs the EMA weights are
scored on the validation split (COCO mAP50-95 / mAP50, faster-coco-eval). The result is a plain
state_dict of the EMA weights plus a JSON record (command, epochs, seconds per epoch, mAP per evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.data.detection import load_detection_set
from edgekd.data.detection.letterbox import fit, letterbox
from edgekd.data.preprocess import Preprocess, read_rgb
from edgekd.detect.evaluate import evaluate
from edgekd.detect.loss import DetectionLoss
from edgekd.models.yolo import person_detector
from edgekd.runtime import torch_reference

ATTRIBUTION = (
    "people-det: 'Tiny people detection RPI' v1, Roboflow Universe workspace resq, repository "
    "projectaeroaiml/human_rpi, CC BY 4.0"
)
MODEL = "edgekd.models.yolo:person_detector"  # yolo_det_p2(num_classes=1): width 0.25, strides 4/8/16, head 32/32


def build() -> torch.nn.Module:
    model = person_detector()
    model.decode = False  # raw heads while training (the loss decodes the assigned cells itself)
    return model


def decode_split(dataset, size: int, cache: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images fitted to ``size`` (uint8 [N, H, W, 3], memory-mapped) and their boxes in those pixels."""
    boxes = [fit(im.size, (size, size)).to_input(im.boxes).astype(np.float32) for im in dataset.images]
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        arr = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(dataset), size, size, 3))
        for i, im in enumerate(dataset.images):
            arr[i] = letterbox(read_rgb(im.path, None), (size, size))[0]
            if i % 200 == 0:
                print(f"  decoded {i}/{len(dataset)}", flush=True)
        arr.flush()
        del arr
        tmp.replace(cache)
    return np.load(cache, mmap_mode="r"), boxes


def sample_crop(
    img: np.ndarray,
    boxes: np.ndarray,
    crop: int,
    scale_jitter: float,
    rng: np.random.Generator,
    object_bias: float = 0.8,
) -> tuple[torch.Tensor, np.ndarray]:
    """A ``crop``² uint8 CHW tensor and its boxes: a square of side crop/s (s ∈ [1/(1+j), 1+j]) taken around a
    random object (or anywhere), resized to ``crop``, flipped half the time."""
    H, W = img.shape[:2]
    s = math.exp(rng.uniform(-math.log1p(scale_jitter), math.log1p(scale_jitter)))
    side = min(int(round(crop / s)), H, W)
    if len(boxes) and rng.random() < object_bias:
        b = boxes[rng.integers(len(boxes))]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        x0 = int(np.clip(cx - rng.uniform(0.1, 0.9) * side, 0, W - side))
        y0 = int(np.clip(cy - rng.uniform(0.1, 0.9) * side, 0, H - side))
    else:
        x0, y0 = int(rng.integers(0, W - side + 1)), int(rng.integers(0, H - side + 1))
    patch = torch.from_numpy(np.array(img[y0 : y0 + side, x0 : x0 + side])).permute(2, 0, 1)  # a writable copy
    k = crop / side
    if side != crop:
        patch = F.interpolate(patch[None].float(), size=(crop, crop), mode="bilinear", align_corners=False)[0]
    b = boxes - np.asarray([x0, y0, x0, y0], np.float32)
    clipped = b.clip(0, side)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (visible >= 0.5 * np.maximum(area, 1e-6)) & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    b = clipped[keep] * k
    if rng.random() < 0.5:
        patch = patch.flip(2)
        b = np.stack([crop - b[:, 2], b[:, 1], crop - b[:, 0], b[:, 3]], 1) if len(b) else b
    return patch.float(), b.reshape(-1, 4)


def photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness (±30 %), contrast (±30 %) and saturation (±50 %) jitter per image, on 0..255 floats."""
    n = x.shape[0]

    def u(lo, hi):
        return torch.rand(n, 1, 1, 1, generator=gen) * (hi - lo) + lo

    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * u(0.5, 1.5)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(0.7, 1.3)
    return (x * u(0.7, 1.3)).clamp(0, 255)


def make_batch(images, boxes, idx, args, rng, gen) -> tuple[torch.Tensor, torch.Tensor]:
    xs, targets = [], []
    for j, i in enumerate(idx):
        patch, b = sample_crop(images[i], boxes[i], args.crop, args.scale_jitter, rng)
        xs.append(patch)
        if len(b):
            targets.append(np.concatenate([np.full((len(b), 1), j), np.zeros((len(b), 1)), b], 1))
    x = photometric(torch.stack(xs), gen) / 255.0
    t = torch.from_numpy(np.concatenate(targets).astype(np.float32)) if targets else torch.zeros(0, 6)
    return x.contiguous(memory_format=torch.channels_last), t


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim == 4 else no_decay).append(p)  # conv weights decay; BN and biases do not
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Ema:
    """Exponential moving average of the weights (and BN statistics), ramped in over the first updates."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9995, ramp: float = 1000.0, factory=None):
        self.model = (factory or build)()
        self.model.load_state_dict(model.state_dict())
        self.model.eval().requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        for e, m in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(m.detach(), alpha=1 - d)
            else:
                e.copy_(m)


def validate(model: torch.nn.Module, val_set, size: int, limit: int | None = None) -> dict:
    pre = Preprocess(size=(size, size), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="letterbox")
    model.decode = True
    try:
        m = evaluate(torch_reference(model.eval()), val_set, pre, batch=4, limit=limit)
    finally:
        model.decode = False
    return {
        "map50_95": m.map50_95,
        "map50": m.map50,
        "precision": m.precision,
        "recall": m.recall,
        "best_f1": m.best_f1,
        "best_f1_conf": m.best_f1_conf,
    }


def command_line(script: str, argv: list[str] | None) -> str:
    """How this run was started, for its record: the script (relative to here) and its arguments."""
    return "python " + shlex.join([os.path.relpath(script)] + (argv if argv is not None else sys.argv[1:]))


def save_atomically(obj, path: Path) -> None:
    """torch.save through a temporary file: an interrupted save never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def warm_start(ap: argparse.ArgumentParser, init: str | None, model: torch.nn.Module) -> tuple[dict | None, int]:
    """``--init WEIGHTS``: loads them into ``model``; returns their training record (beside them, as this
    script or train_student.py wrote it) and how many epochs it counted. No ``--init``: (None, 0)."""
    if not init:
        return None, 0
    record_path = Path(init).with_suffix(".json")
    if not record_path.exists():
        ap.error(f"--init {init}: its training record {record_path} is missing; pass weights this script wrote")
    model.load_state_dict(torch.load(init, weights_only=True))
    record = json.loads(record_path.read_text())
    return record, record.get("total_epochs", record["epochs"])


def end_epoch(record: dict, epoch: int, model: torch.nn.Module, val_set, args) -> None:
    """Validates ``model`` into ``record`` every ``--eval-every`` epochs and at the last; prints the epoch."""
    if epoch % args.eval_every == 0 or epoch == args.epochs:
        t1 = time.time()
        record["val"] = validate(model, val_set, args.size)
        record["val_seconds"] = round(time.time() - t1, 1)
        v = record["val"]
        print(
            f"epoch {epoch}/{args.epochs} ({record['seconds']:.0f}s): valid mAP50 {v['map50']:.4f} "
            f"mAP50-95 {v['map50_95']:.4f} P {v['precision']:.3f} R {v['recall']:.3f} "
            f"(eval {record['val_seconds']:.0f}s)",
            flush=True,
        )
    else:
        print(f"epoch {epoch}/{args.epochs} ({record['seconds']:.0f}s): loss {record['loss']:.3f}", flush=True)


def main(argv=None) -> int:  # long on purpose: the whole training recipe, top to bottom, as its record cites it
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/people-det/data.yaml")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--crops-per-image", type=int, default=1, help="crops drawn from each training image per epoch")
    ap.add_argument("--scale-jitter", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=640, help="evaluation (and model input) size")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--warmup-steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is fastest on a shared machine (2 threads on 2 busy cores spin)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--out", default="examples/people-det/teacher.pth")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="weights of a finished run (its .json beside them) to continue from")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set = load_detection_set(args.data, "train")
    val_set = load_detection_set(args.data, "val")
    print(train_set.summary(), val_set.summary(), sep="\n", flush=True)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    images, boxes = decode_split(train_set, args.size, cache / f"people-det-train-{args.size}.npy")

    model = build().to(memory_format=torch.channels_last)
    init_record, first_epoch = warm_start(ap, args.init, model)
    loss_fn = DetectionLoss(model.strides)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = len(train_set) * args.crops_per_image // args.batch_size
    total = args.epochs * steps_per_epoch

    def lr_at(step):
        return min(1.0, (step + 1) / args.warmup_steps) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = Ema(model)
    # a continued run checkpoints apart from the run that made its starting weights
    ckpt_path = cache / (f"people-det-teacher-from-{first_epoch}.ckpt" if args.init else "people-det-teacher.ckpt")
    start, history = 0, []
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        ema.model.load_state_dict(ck["ema"])
        ema.updates = ck["ema_updates"]
        start, history = ck["epoch"], json.loads(ck["history"])
        print(f"resumed after epoch {start}", flush=True)
    for epoch in range(start, args.epochs):
        rng = np.random.default_rng(args.seed * 1000 + epoch)
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        model.train()
        t0, sums, seen = time.time(), {"loss": 0.0, "box": 0.0, "cls": 0.0, "iou": 0.0}, 0
        order = np.concatenate([rng.permutation(len(train_set)) for _ in range(args.crops_per_image)])
        for step in range(steps_per_epoch):
            x, t = make_batch(
                images, boxes, order[step * args.batch_size : (step + 1) * args.batch_size], args, rng, gen
            )
            loss, parts = loss_fn(model(x), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            ema.update(model)
            seen += 1
            for k in sums:
                sums[k] += float(loss.detach()) if k == "loss" else parts[k]
            if step % 20 == 0:
                avg = {k: v / seen for k, v in sums.items()}
                print(
                    f"  epoch {epoch + 1} step {step}/{steps_per_epoch} loss {avg['loss']:.3f} box {avg['box']:.3f} "
                    f"cls {avg['cls']:.3f} iou {avg['iou']:.3f} lr {sched.get_last_lr()[0]:.2e} "
                    f"({time.time() - t0:.0f}s)",
                    flush=True,
                )
        record = {
            "epoch": first_epoch + epoch + 1,
            "seconds": round(time.time() - t0, 1),
            **{k: v / seen for k, v in sums.items()},
        }
        end_epoch(record, epoch + 1, ema.model, val_set, args)
        history.append(record)
        save_atomically(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "ema": ema.model.state_dict(),
                "ema_updates": ema.updates,
                "epoch": epoch + 1,
                "history": json.dumps(history),
            },
            ckpt_path,
        )

    out = Path(args.out)
    save_atomically({k: v.contiguous() for k, v in ema.model.state_dict().items()}, out)
    evals = [h for h in history if "val" in h]
    record = {
        "command": command_line(__file__, argv),
        "data": ATTRIBUTION,
        "model": MODEL,
        "epochs": args.epochs,
        "total_epochs": first_epoch + args.epochs,
        "init": None if init_record is None else {"weights": args.init, "record": init_record},
        "batch_size": args.batch_size,
        "crop": args.crop,
        "lr": args.lr,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "eval_size": args.size,
        "valid": evals[-1]["val"] if evals else None,
        "history": history,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

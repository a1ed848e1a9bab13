"""Train the CIFAR-10 teacher that `make demo` compiles.

    python examples/cifar10/train_teacher.py --data ../shared/data/cifar10/train --epochs 15

Holds out every 10th image of each class (5,000 images) for validation, decodes the JPEGs once
into a uint8 cache, checkpoints every epoch (``--resume`` continues), and writes the weights as a
plain state_dict plus a JSON record of the command, epochs and validation accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.data.folder import scan_image_folder, split_holdout
from edgekd.data.preprocess import read_rgb
from edgekd.models import build_model

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def decode(folder, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    if cache.exists():
        z = np.load(cache)
        return z["x"], z["y"]
    x = np.empty((len(folder), 32, 32, 3), np.uint8)
    for i, f in enumerate(folder.files):
        x[i] = read_rgb(f, (32, 32))
        if i % 5000 == 0:
            print(f"  decoded {i}/{len(folder)}", flush=True)
    y = np.asarray(folder.labels, np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=y)
    return x, y


def to_input(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x_uint8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32×32 crop of the 4-pixel zero-padded image, and horizontal flip."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(32)).view(n, 1, 32, 1).expand(n, 3, 32, 40)
    cols = (dx.view(n, 1) + torch.arange(32)).view(n, 1, 1, 32).expand(n, 3, 32, 32)
    out = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """One ``size``×``size`` square per normalized image set to 0 (the mean colour), its centre anywhere in the
    image and the square clipped at the edges (DeVries & Taylor 2017: 16 px on CIFAR-10)."""
    n, _, h, w = x.shape
    y0 = torch.randint(0, h, (n, 1, 1), generator=gen) - size // 2
    x0 = torch.randint(0, w, (n, 1, 1), generator=gen) - size // 2
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    hole = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    return x * (~hole).unsqueeze(1)


@torch.no_grad()
def evaluate(model, x, y, batch=500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(to_input(torch.from_numpy(x[i : i + batch])))
        correct += (logits.argmax(1) == torch.from_numpy(y[i : i + batch])).sum().item()
    return correct / len(x)


def main(argv=None) -> int:  # long on purpose: the whole training recipe, top to bottom, as its record cites it
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10/train")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--out", default="examples/cifar10/teacher.pth")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--cutout", type=int, default=0, help="side of the square Cutout hides per image (0: none)")
    ap.add_argument(
        "--init",
        help="start from these weights (a state_dict, e.g. the teacher of an earlier run): "
        "one more learning-rate cycle on top of it; its .json record is kept in ours",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # before the hours of training, not after

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    folder = scan_image_folder(args.data)
    train, val = split_holdout(folder)
    print(f"{len(train)} train / {len(val)} validation images, classes: {', '.join(folder.classes)}")
    xtr, ytr = decode(train, Path(args.cache_dir) / "cifar10-train.npz")
    xva, yva = decode(val, Path(args.cache_dir) / "cifar10-val.npz")

    model = build_model(args.model, num_classes=len(folder.classes)).to(memory_format=torch.channels_last)
    earlier = None
    if args.init:
        model.load_state_dict(torch.load(args.init, weights_only=True))
        record_path = Path(args.init).with_suffix(".json")
        earlier = json.loads(record_path.read_text()) if record_path.exists() else {"weights": args.init}
        print(f"starting from {args.init} (validation top-1 {evaluate(model, xva, yva):.4f})")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = len(xtr) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.25)
    # a continued run checkpoints apart from the run that made its starting weights
    suffix = f"-from-{hashlib.sha256(Path(args.init).read_bytes()).hexdigest()[:8]}" if args.init else ""
    ckpt_path = Path(args.cache_dir) / f"{args.model}-teacher{suffix}.ckpt"
    start, history = 0, []
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start, history = ck["epoch"], json.loads(ck["history"])
        print(f"resumed after epoch {start}")
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(start, args.epochs):
        gen.manual_seed(args.seed * 1000 + epoch)
        model.train()
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        perm = torch.randperm(len(xtr), generator=gen)
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            xb = augment(torch.from_numpy(xtr[idx.numpy()]).permute(0, 3, 1, 2), gen).permute(0, 2, 3, 1)
            inp = to_input(xb)
            if args.cutout:
                inp = cutout(inp, args.cutout, gen)
            inp = inp.contiguous(memory_format=torch.channels_last)
            target = torch.from_numpy(ytr[idx.numpy()])
            logits = model(inp)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == target).sum().item()
            if step % 50 == 0:
                print(
                    f"  epoch {epoch + 1} step {step}/{steps_per_epoch} loss {loss_sum / seen:.3f} "
                    f"acc {correct / seen:.3f} "
                    f"({time.time() - t0:.0f}s)",
                    flush=True,
                )
        val_acc = evaluate(model, xva, yva)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "val_acc": val_acc,
                "seconds": time.time() - t0,
            }
        )
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / seen:.3f} acc {correct / seen:.3f}, "
            f"val top-1 {val_acc:.4f} ({time.time() - t0:.0f}s)",
            flush=True,
        )
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": epoch + 1,
                "history": json.dumps(history),
            },
            ckpt_path,
        )

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    record = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_images": len(xtr),
        "val_images": len(xva),
        "val_top1": history[-1]["val_acc"] if history else None,
        "history": history,
    }
    if earlier is not None:  # this run continued an earlier one: the total is what the teacher has seen
        record["total_epochs"] = earlier.get("total_epochs", earlier.get("epochs", 0)) + args.epochs
        record["initialised_from"] = earlier
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), validation top-1 {record['val_top1']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

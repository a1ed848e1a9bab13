"""Train a people-det student at ≤ 1/4 of the teacher's MACs, with detection distillation or labels only.

    nice -n 19 python examples/people-det/train_student.py --teacher examples/people-det/teacher.pth \\
        --epochs 20 --out examples/people-det/student-kd.pth
    nice -n 19 python examples/people-det/train_student.py --labels-only \\
        --epochs 20 --out examples/people-det/student-labels.pth

Student: edgekd.models.yolo:person_detector_student, i.e. yolo_det_p2(num_classes=1, width=0.125,
depth=0.2), with strides 4/8/16 like the teacher, so every head cell has a teacher counterpart:
0.87 G MACs at 640 against the teacher's 3.71 (23.6 %).
Same data, crops, augmentation, schedule, EMA and evaluation as train_teacher.py. With ``--teacher`` the
loss is edgekd.distill.detection.DetectionDistillLoss: the labels' loss plus class-map KD (temperature
``--temperature``), box KD and neck imitation (FitNets hints through 1×1 adapters), weights below.

``--init WEIGHTS`` starts a new cosine cycle of ``--epochs`` epochs from a finished run's weights (a warm
restart); the new record keeps the earlier run's record under ``init`` and numbers its epochs after it.
``--resume --epochs N`` with N above the checkpoint's total stretches the cosine schedule over N epochs (the
learning rate steps back up to where the longer cycle would be, then decays to the same floor); the record
lists every command.

Data: "Tiny people detection RPI" v1 (Roboflow Universe, workspace resq), CC BY 4.0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from train_teacher import (
    ATTRIBUTION,
    Ema,
    command_line,
    decode_split,
    end_epoch,
    make_batch,
    param_groups,
    save_atomically,
    warm_start,
)

from edgekd.data.detection import load_detection_set
from edgekd.detect.loss import DetectionLoss
from edgekd.distill.detection import DetectionDistillLoss
from edgekd.distill.features import capture
from edgekd.models.profile import count_macs
from edgekd.models.yolo import person_detector, person_detector_student

STUDENT = "edgekd.models.yolo:person_detector_student"  # yolo_det_p2(num_classes=1, width=0.125, depth=0.2)


def build_student() -> torch.nn.Module:
    student = person_detector_student()
    student.decode = False
    return student


def load_teacher(path: str) -> torch.nn.Module:
    teacher = person_detector()
    teacher.load_state_dict(torch.load(path, weights_only=True))
    teacher.decode = False
    return teacher.eval().requires_grad_(False)


def previous_commands(out: Path) -> list[str]:
    """Commands of a run checkpointed before the checkpoint kept them: the record it wrote, if any."""
    record = out.with_suffix(".json")
    return [json.loads(record.read_text())["command"]] if record.exists() else []


def main(argv=None) -> int:  # long on purpose: the whole training recipe, top to bottom, as its record cites it
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/people-det/data.yaml")
    ap.add_argument("--teacher", help="teacher state_dict (person_detector); omit with --labels-only")
    ap.add_argument("--labels-only", action="store_true")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--crops-per-image", type=int, default=1)
    ap.add_argument("--scale-jitter", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--warmup-steps", type=int, default=300)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--kd-weight", type=float, default=4.0)
    ap.add_argument("--box-kd-weight", type=float, default=5.0)
    ap.add_argument("--hint-weight", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="weights of a finished run (its .json beside them) to continue from")
    args = ap.parse_args(argv)
    if bool(args.teacher) == args.labels_only:
        ap.error("pass either --teacher WEIGHTS (distillation) or --labels-only")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set, val_set = load_detection_set(args.data, "train"), load_detection_set(args.data, "val")
    images, boxes = decode_split(train_set, args.size, Path(args.cache_dir) / f"people-det-train-{args.size}.npy")
    student = build_student().to(memory_format=torch.channels_last)
    init_record, first_epoch = warm_start(ap, args.init, student)
    example = torch.zeros(1, 3, args.crop, args.crop)
    teacher = loss_fn = None
    if args.teacher:
        teacher = load_teacher(args.teacher).to(memory_format=torch.channels_last)
        loss_fn = DetectionDistillLoss(
            student,
            teacher,
            example,
            args.temperature,
            labels=1.0,
            kd=args.kd_weight,
            box_kd=args.box_kd_weight,
            hint=args.hint_weight,
        )
    labels_loss = DetectionLoss(student.strides)
    macs = {"student": count_macs(student, (1, 3, args.size, args.size))}
    if teacher is not None:
        macs["teacher"] = count_macs(teacher, (1, 3, args.size, args.size))
    print(
        f"student {macs['student'] / 1e9:.3f} G MACs at {args.size}"
        + (f", teacher {macs['teacher'] / 1e9:.3f} ({macs['student'] / macs['teacher']:.1%})" if teacher else ""),
        flush=True,
    )
    params = param_groups(student, args.weight_decay)
    if loss_fn is not None:
        params.append({"params": list(loss_fn.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(params, lr=args.lr)
    steps_per_epoch = len(train_set) * args.crops_per_image // args.batch_size
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup_steps) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / total)))
    )
    ema = Ema(student, factory=build_student)
    ckpt_path = Path(args.cache_dir) / f"{Path(args.out).stem}.ckpt"
    start, history, commands = 0, [], []
    command = command_line(__file__, argv)
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        student.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        ema.model.load_state_dict(ck["ema"])
        ema.updates = ck["ema_updates"]
        if loss_fn is not None:
            loss_fn.load_state_dict(ck["adapters"])
        start, history = ck["epoch"], json.loads(ck["history"])
        commands = json.loads(ck.get("commands", "[]")) or previous_commands(Path(args.out))
        print(f"resumed after epoch {start}", flush=True)
    for epoch in range(start, args.epochs):
        rng = np.random.default_rng(args.seed * 1000 + epoch)
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        student.train()
        t0, sums, seen = time.time(), {}, 0
        order = np.concatenate([rng.permutation(len(train_set)) for _ in range(args.crops_per_image)])
        for step in range(steps_per_epoch):
            x, t = make_batch(
                images, boxes, order[step * args.batch_size : (step + 1) * args.batch_size], args, rng, gen
            )
            if loss_fn is None:
                loss, parts = labels_loss(student(x), t)
            else:
                with torch.no_grad(), capture(teacher, loss_fn.teacher_layers) as t_feats:
                    t_raw = teacher(x)
                with capture(student, loss_fn.student_layers) as s_feats:
                    s_raw = student(x)
                loss, parts = loss_fn(s_raw, t_raw, t, s_feats, t_feats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 10.0)
            opt.step()
            sched.step()
            ema.update(student)
            seen += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if step % 20 == 0:
                avg = " ".join(f"{k} {v / seen:.3f}" for k, v in sums.items() if k != "positives")
                print(f"  epoch {epoch + 1} step {step}/{steps_per_epoch} {avg} ({time.time() - t0:.0f}s)", flush=True)
        record = {
            "epoch": first_epoch + epoch + 1,
            "seconds": round(time.time() - t0, 1),
            **{k: v / seen for k, v in sums.items() if k != "positives"},
        }
        end_epoch(record, epoch + 1, ema.model, val_set, args)
        history.append(record)
        save_atomically(
            {
                "model": student.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "ema": ema.model.state_dict(),
                "ema_updates": ema.updates,
                "epoch": epoch + 1,
                "adapters": loss_fn.state_dict() if loss_fn is not None else {},
                "history": json.dumps(history),
                "commands": json.dumps(commands + [command]),
            },
            ckpt_path,
        )

    out = Path(args.out)
    save_atomically({k: v.contiguous() for k, v in ema.model.state_dict().items()}, out)
    evals = [h for h in history if "val" in h]
    record = {
        "command": " && ".join(dict.fromkeys(commands + [command])),
        "data": ATTRIBUTION,
        "model": STUDENT,
        "macs": macs,
        "distillation": None
        if loss_fn is None
        else {"teacher": args.teacher, "temperature": args.temperature, "weights": loss_fn.weights},
        "epochs": args.epochs,
        "total_epochs": first_epoch + args.epochs,
        "init": None if init_record is None else {"weights": args.init, "record": init_record},
        "batch_size": args.batch_size,
        "crop": args.crop,
        "lr": args.lr,
        "valid": evals[-1]["val"] if evals else None,
        "history": history,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Student benchmark: what distillation and sparsity buy on CIFAR-10, at equal epochs.

From the trained teacher of the model card, five students of one architecture, each trained with edgekd's
trainer on the same 45,000 training images and scored on the same 5,000 held-out ones (every 10th file of
each class, the split the teacher was trained with):

  (a) labels only            cross-entropy on the hard labels, no teacher
  (b) KD                     Hinton KD (T 6 → 2, T²-scaled) mixed with the labels (α 0.7 → 0.3)
  (c) KD + features          (b) plus hint (1×1 adapters, MSE) and attention-transfer losses on the stage ends
  (f) decoupled KD           DKD (Zhao et al. 2022: TCKD + 8·NCKD, T 4) mixed half and half with the labels
  (d) 50 % sparse            (b)'s student, magnitude-pruned per layer with a cubic ramp during a KD fine-tune
  (e) 2:4 sparse             (b)'s student, N:M 2:4 along input channels during a KD fine-tune

Further student shapes (--shapes) train with (b)'s KD only, at the same epochs: which architecture within the
budget keeps most of the teacher. A variant or shape written NAME@N trains for N epochs instead (its own run,
folder NAME@N), so objectives can be compared on a short schedule beside a long one: `--variants kd,kd@20,dkd@20`.
Each run checkpoints every epoch under --workdir and resumes, so the benchmark can be stopped and restarted;
finished runs are not retrained. Prints one table and writes it as markdown (--markdown).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from edgekd.distill.schedules import Schedule
from edgekd.distill.trainer import TrainConfig, train_kd
from edgekd.frontend import model_input
from edgekd.model_config import read_model_card
from edgekd.models.load import load_model
from edgekd.models.profile import profile
from edgekd.models.zoo import build_model
from edgekd.passes.sparsify import gzip_bytes

VARIANTS = ("labels", "kd", "kd-features", "dkd", "sparse-50", "sparse-2:4")
TITLES = {
    "labels": "(a) labels only",
    "kd": "(b) KD",
    "kd-features": "(c) KD + hint + attention",
    "dkd": "(f) decoupled KD",
    "sparse-50": "(d) 50 % sparse, KD fine-tune",
    "sparse-2:4": "(e) 2:4 sparse, KD fine-tune",
}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="labelled CIFAR-10 folder (DIR/<class>/*.jpg)")
    ap.add_argument("--model", default="examples/cifar10/model.toml", help="teacher model card")
    ap.add_argument("--student", default="resnet8:0.625", help="zoo student (default: resnet8:0.625)")
    ap.add_argument(
        "--shapes",
        type=lambda text: [s for s in text.split(",") if s],
        default=[],
        help="further zoo students, comma-separated, trained with (b)'s KD only (SHAPE@N: for N epochs)",
    )
    ap.add_argument("--epochs", type=int, default=20, help="epochs for (a)-(c), (f) and --shapes")
    ap.add_argument("--finetune-epochs", type=int, default=8, help="KD fine-tune epochs for (d), (e)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--live-teacher", action="store_true", help="KD on the teacher's logits of each augmented batch")
    ap.add_argument("--amp", choices=["bf16"], help="forward passes in bfloat16 autocast (see TrainConfig.amp)")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"subset of {','.join(VARIANTS)}; VARIANT@N trains that variant for N epochs (fine-tune epochs for sparse)",
    )
    ap.add_argument("--workdir", default=".cache/student-bench", help="checkpoints and per-variant results")
    ap.add_argument("--json", help="write all results as JSON here")
    ap.add_argument("--markdown", help="write the table as a markdown page here")
    return ap.parse_args(argv)


def nonzero_params(model: torch.nn.Module) -> int:
    return int(sum((p != 0).sum() for p in model.parameters()))


def split_epochs(spec: str) -> tuple[str, int | None]:
    """``dkd@20`` → ("dkd", 20); ``kd`` → ("kd", None): a run and its own epochs, if any."""
    name, at, epochs = spec.partition("@")
    if at and not (epochs.isdigit() and int(epochs) > 0):
        sys.exit(f"{spec}: the epochs after @ must be a positive whole number")
    return name, int(epochs) if epochs else None


def parse_run(spec: str) -> tuple[str, int | None]:
    """A --variants entry: the variant and its own epochs, if any."""
    variant, epochs = split_epochs(spec)
    if variant not in VARIANTS:
        sys.exit(f"unknown variant {variant!r} in --variants; valid: {', '.join(VARIANTS)} (optionally @EPOCHS)")
    return variant, epochs


def config_for(variant: str, args, ckpt: Path, epochs: int | None = None) -> TrainConfig:
    base = TrainConfig(
        epochs=epochs or args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_dir=ckpt,
        resume=True,
        temperature=Schedule("linear", 6.0, 2.0),
        alpha=Schedule("linear", 0.7, 0.3),
        live_teacher=args.live_teacher,
        amp=args.amp,
    )
    if variant == "labels":
        return replace(base, alpha=Schedule("constant", 0.0), live_teacher=False)
    if variant == "kd":
        return base
    if variant == "kd-features":
        # our AT term sums over positions, ≈ Zagoruyko & Komodakis' β = 10³ on their per-position mean at 32×32;
        # gradient-norm compensation keeps any one term from dominating the update
        return replace(base, hint_weight=1.0, attention_weight=1.0, compensate=True)
    if variant == "dkd":
        # the paper's CIFAR setting: CE + DKD(α 1, β 8, T 4) with equal weights
        return replace(
            base, kd_loss="dkd", dkd_beta=8.0, temperature=Schedule("constant", 4.0), alpha=Schedule("constant", 0.5)
        )
    fine = replace(
        base,
        epochs=epochs or args.finetune_epochs,
        lr=args.lr / 5,
        sparsity=0.5,
        pattern="2:4" if variant == "sparse-2:4" else "unstructured",
    )
    return fine


def run_settings(args) -> dict:
    """What a finished run is reused under: the same teaching, precision and optimizer settings."""
    return {"live_teacher": args.live_teacher, "amp": args.amp, "lr": args.lr, "batch_size": args.batch_size}


def run_name(variant: str, shape: str | None = None, epochs: int | None = None) -> str:
    """The run's name and folder under --workdir: ``kd``, ``dkd@20``, ``kd-resnet14-0.375@20`` (a further shape)."""
    return ("kd-" + shape.replace(":", "-") if shape else variant) + (f"@{epochs}" if epochs else "")


def run_variant(
    variant, args, teacher, pre, workdir: Path, shape: str | None = None, epochs: int | None = None
) -> dict:
    """One training run: a variant of --student (for ``epochs`` when given), or (``shape`` given) that zoo student
    with (b)'s KD."""
    name = run_name(variant, shape, epochs)
    done = workdir / name / "result.json"
    settings = run_settings(args)
    if done.exists():  # runs recorded before the key name no student: theirs is --student
        recorded = json.loads(done.read_text())
        differ = {k: (v, settings[k]) for k, v in recorded.get("settings", settings).items() if settings.get(k) != v}
        if differ:
            sys.exit(
                f"{done} was trained with other settings ({', '.join(f'{k} {a} here {b}' for k, (a, b) in differ.items())}"
                f"): give another --workdir, or the run's own settings"
            )
        return {"student": shape or args.student, **recorded}
    student = build_model(shape or args.student, num_classes=10)
    if variant.startswith("sparse"):
        dense = workdir / "kd" / "student.pt"
        student.load_state_dict(torch.load(dense, weights_only=True))
    cfg = config_for(variant, args, workdir / name / "checkpoints", epochs)
    started = time.time()

    def progress(epoch, step, steps, loss, acc):
        if step == steps:
            line = f"[{name}] epoch {epoch}/{cfg.epochs} loss {loss:.4f}"
            print(
                line
                + (f" holdout top-1 {acc:.2f} %" if acc is not None else "")
                + f"  ({time.time() - started:.0f} s)",
                flush=True,
            )

    r = train_kd(teacher, student, args.data, pre, cfg, out_dir=workdir / name, progress=progress)
    student.eval()
    torch.save(student.state_dict(), workdir / name / "student.pt")
    prof = profile(student, (1, 3, *pre.size))
    sparsity = None
    if r.sparsity:
        sizes = {n: m.weight.numel() for n, m in student.named_modules() if n in r.sparsity}
        sparsity = sum(r.sparsity[n] * sizes[n] for n in sizes) / sum(sizes.values())
    result = {
        "variant": variant,
        "student": shape or args.student,
        "title": f"(b) KD, {shape}" if shape else TITLES[variant],
        "params": prof.params,
        "nonzero_params": nonzero_params(student),
        "macs": prof.macs,
        "val_top1": r.history[-1]["val_top1"],
        "best_val_top1": r.best_acc,
        "teacher_val_top1": r.teacher_acc,
        "epochs": r.epochs_run,
        "train_seconds": round(sum(h.get("seconds", 0) for h in r.history) or r.seconds, 1),
        "gzip_bytes": gzip_bytes(student),
        "weight_sparsity": sparsity,
        "feature_pairs": r.feature_pairs,
        "settings": settings,
        "history": r.history,
    }
    done.write_text(json.dumps(result, indent=2))
    return result


def epoch_seconds(result: dict) -> float:
    """Median seconds per epoch: robust to an epoch slowed by something else running on the machine."""
    import statistics

    return statistics.median(h["seconds"] for h in result["history"])


def table(results: dict, teacher: dict) -> str:
    rows = [
        "| model | params (non-zero) | MACs | holdout top-1 | vs teacher | epochs | s / epoch (median) "
        "| weights, gzip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| teacher {teacher['name']} | {teacher['params']:,} | {teacher['macs'] / 1e6:.1f} M | "
        f"{teacher['val_top1']:.2f} % | 100 % | {teacher['epochs']} | — | {teacher['gzip_bytes'] / 1024:.0f} KiB |",
    ]
    for r in results.values():
        nz = f" ({r['nonzero_params']:,})" if r["weight_sparsity"] else ""
        rows.append(
            f"| {r['title']} | {r['params']:,}{nz} | {r['macs'] / 1e6:.2f} M | {r['val_top1']:.2f} % | "
            f"{r['val_top1'] / teacher['val_top1'] * 100:.1f} % | {r['epochs']} | {epoch_seconds(r):.0f} s | "
            f"{r['gzip_bytes'] / 1024:.0f} KiB |"
        )
    return "\n".join(rows)


def counterpart(results: dict, variant: str, like: dict) -> dict | None:
    """The run of ``variant`` with the same student and epochs as ``like``: comparisons are at equal schedules."""
    return next(
        (
            r
            for r in results.values()
            if r["variant"] == variant and r["student"] == like["student"] and r["epochs"] == like["epochs"]
        ),
        None,
    )


def verdicts(results: dict, teacher: dict, student: str = "resnet8:0.625") -> list[str]:
    """The targets' verdicts, and each comparison of two runs that differ in one thing only (the objective,
    or the student shape against ``student``)."""
    out = []
    for s in results.values():
        if s["variant"] != "kd":
            continue
        p, m, acc = teacher["params"] / s["params"], teacher["macs"] / s["macs"], s["val_top1"] / teacher["val_top1"]
        ok = p >= 8 and m >= 8 and acc >= 0.95
        out.append(
            f"- `{s['student']}` with KD, {s['epochs']} epochs, ≤ 1/8 of the teacher's params and MACs at ≥ 95 % of "
            f"its top-1: params 1/{p:.1f}, MACs 1/{m:.1f}, {acc * 100:.1f} % of the teacher — "
            f"**{'met' if ok else 'NOT met'}**"
        )
    for r in results.values():
        labels = counterpart(results, "labels", r)
        if r["variant"] == "kd" and labels:
            gain = r["val_top1"] - labels["val_top1"]
            out.append(
                f"- KD ≥ +1 pt over labels only ({r['epochs']} epochs each): {gain:+.2f} pt — "
                f"**{'met' if gain >= 1 else 'NOT met'}**"
            )
        kd = counterpart(results, "kd", {**r, "student": student})
        if r["variant"] == "kd" and r["student"] != student and kd:
            out.append(
                f"- `{r['student']}` over `{student}`, KD, {r['epochs']} epochs each: "
                f"{r['val_top1'] - kd['val_top1']:+.2f} pt"
            )
        if r["variant"] in ("kd-features", "dkd") and kd:
            vs_labels = f", {r['val_top1'] - labels['val_top1']:+.2f} pt over labels only" if labels else ""
            out.append(
                f"- {r['title']} over KD ({r['epochs']} epochs each): {r['val_top1'] - kd['val_top1']:+.2f} pt"
                + vs_labels
            )
    for v in ("sparse-50", "sparse-2:4"):
        if v in results and "kd" in results:
            d = results[v]["val_top1"] - results["kd"]["val_top1"]
            out.append(
                f"- {TITLES[v]} within 1 pt of the dense KD student: {d:+.2f} pt, weight sparsity "
                f"{results[v]['weight_sparsity'] * 100:.1f} % — **{'met' if d >= -1 else 'NOT met'}**"
            )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    card = read_model_card(args.model)
    pre = model_input(args.model).input.preprocess  # the card's preprocessing, as compile reads it
    teacher = load_model(card.source, card.weights).torch_module.eval()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # sparse variants fine-tune (b)'s student, so every run goes in VARIANTS order
    runs = sorted(
        (parse_run(spec) for spec in dict.fromkeys(args.variants.split(",")) if spec),
        key=lambda run: VARIANTS.index(run[0]),
    )
    needs_dense = any(v.startswith("sparse") for v, _ in runs)
    if needs_dense and ("kd", None) not in runs and not (workdir / "kd" / "student.pt").exists():
        sys.exit(f"the sparse variants fine-tune (b)'s student: add kd to --variants (none under {workdir / 'kd'})")
    results = {}
    for variant, epochs in runs:
        results[run_name(variant, epochs=epochs)] = run_variant(variant, args, teacher, pre, workdir, epochs=epochs)
    for shape, epochs in map(split_epochs, args.shapes):
        results[run_name("kd", shape, epochs)] = run_variant(
            "kd", args, teacher, pre, workdir, shape=shape, epochs=epochs
        )
    tprof = profile(teacher, (1, 3, *pre.size))
    record = (
        json.loads((Path(args.model).parent / "teacher.json").read_text())
        if (Path(args.model).parent / "teacher.json").exists()
        else {}
    )
    first = next(iter(results.values()))
    teacher_info = {
        "name": record.get("model", card.source),
        "params": tprof.params,
        "macs": tprof.macs,
        "val_top1": first["teacher_val_top1"],
        "epochs": record.get("total_epochs", record.get("epochs", "?")),
        "gzip_bytes": gzip_bytes(teacher),
    }
    text = table(results, teacher_info)
    lines = verdicts(results, teacher_info, args.student)
    print("\n" + text + "\n\n" + "\n".join(lines))
    command = "python bench/student_benchmark.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"teacher": teacher_info, "results": results, "command": command}, indent=2)
        )
    if args.markdown:
        Path(args.markdown).write_text(markdown(text, lines, results, teacher_info, args, command))
    return 0


def markdown(text, lines, results, teacher, args, command) -> str:
    variants = {r["variant"]: r for r in results.values()}
    pairs = variants.get("kd-features", {}).get("feature_pairs")
    dkd = (
        "(f) is the paper's CIFAR loss (TCKD + 8·NCKD at T 4, weighted equally with the labels) without its "
        "linear warm-up of the DKD term over the first 20 of 240 epochs.\n"
        if "dkd" in variants
        else ""
    )
    names = [split_epochs(spec)[0] for spec in args.shapes]
    shapes = f" (and, with (b)'s KD only, {', '.join(f'`{s}`' for s in names)})" if names else ""
    teaching = (
        "those of each augmented batch (consistent teaching)"
        if args.live_teacher
        else "computed once on the un-augmented images (hint + attention: of each augmented batch)"
    )
    return f"""# Student benchmark: distillation and sparsity on CIFAR-10

Produced by

```
{command}
```

on {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread{"s" if torch.get_num_threads() > 1 else ""} per run, torch {torch.__version__}.
Teacher: the model card `{args.model}`; student: `{args.student}` from edgekd's zoo{shapes}. Training set: the 45,000
images of the folder left after holding out every 10th file of each class; holdout top-1 on those 5,000.
(a)–(c) and (f) train from scratch for the epochs in the table (SGD + Nesterov, lr {args.lr}, cosine over the run, batch {args.batch_size},
flip + crop{"; forward passes in bfloat16 autocast" if args.amp else ""}); the teacher's logits are {teaching}.
(d) and (e) start from (b)'s {args.epochs}-epoch student and fine-tune with KD at lr
{args.lr / 5:g} while the masks ramp up (cubic, first two thirds), then stay fixed.
{dkd}{f"Feature pairs (student = teacher, matched by spatial size): {', '.join(f'`{s}` = `{t}`' for s, t in pairs)}." if pairs else ""}

{text}

{chr(10).join(lines)}

2:4 leaves dense the layers whose input channels do not group by 4 (the RGB stem), hence less than 50 % of
all weights. Seconds per epoch are medians; epochs that shared the two cores with other jobs run slower.
Sizes are honest about sparsity: the parameter count stays the same, the gzip'd weights shrink with
unstructured zeros; no latency gain is claimed, as none of the CPU runtimes here runs sparse kernels
(TensorRT on Jetson Orin does for 2:4: `build_engine.sh` passes `--sparsity=enable`).
Per-epoch losses and holdout top-1 of every run: `{args.workdir}/<run>/training.csv` and `training.png`.
"""


if __name__ == "__main__":
    raise SystemExit(main())

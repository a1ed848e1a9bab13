"""PTQ vs QAT: the same student, the same calibration images, the same held-out images, per target.

    python bench/qat_benchmark.py --data ../shared/data/cifar10/train \\
        --student resnet8:0.625 --weights .cache/student-bench/kd/student.pt \\
        --targets onnx-cpu,rpi4,openvino-cpu --qat-epochs 3 --tune-lr 1e-4,2.5e-4,5e-4 \\
        --json build/qat-benchmark.json --markdown docs/qat-benchmark.md

For each target, two `edgekd.api.compile` runs of the student with the teacher card's preprocessing and
labels (examples/cifar10/model.toml): post-training quantization (calibration on 512 training images,
evenly spaced over the train split), and the same plus `--qat-epochs N` on the train split. Both score
the float model and the emitted artifact, in the target's own runtime, on the held-out images (every
10th image of each class: the split every edgekd training uses, so QAT never trains on them). Reported:
float, PTQ int8 and QAT int8 top-1, the drops, and how much of the PTQ drop QAT recovers. With --tune-lr the
QAT learning rate is chosen first, on images the table does not score (``tune_lr``).

Each compile's result is kept under --workdir, and an interrupted QAT resumes from its checkpoints, so
the run can be stopped and restarted; finished compiles are not redone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from edgekd import __version__ as EDGEKD_VERSION
from edgekd import api
from edgekd.config import CalibrationOptions
from edgekd.data.folder import scan_image_folder, split_holdout
from edgekd.errors import EdgekdError
from edgekd.model_config import read_model_card

TARGET_RECOVERY = 0.5  # QAT recovers at least half of the PTQ drop ...
TARGET_GAP_PT = 0.1  # ... and ends within 0.1 pt of float


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="labelled CIFAR-10 folder (DIR/<class>/*.jpg)")
    ap.add_argument("--card", default="examples/cifar10/model.toml", help="model card giving preprocessing and labels")
    ap.add_argument("--student", default="resnet8:0.625", help="zoo model (default: resnet8:0.625)")
    ap.add_argument("--weights", required=True, help="the student's state_dict (e.g. from student_benchmark.py)")
    ap.add_argument("--targets", default="onnx-cpu,rpi4,openvino-cpu")
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument(
        "--calib-method",
        default=CalibrationOptions().method,
        choices=["ema", "minmax", "percentile", "mse"],
        help="calibration for both PTQ and QAT's starting ranges (default: edgekd's)",
    )
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument(
        "--fallback-max-drop",
        type=float,
        help="also compile the first target with --max-drop this and no --qat-epochs: the accuracy "
        "budget's automatic QAT fallback, with its before/after search",
    )
    ap.add_argument("--eval-samples", type=int, default=5000, help="held-out images scored (default: all 5000)")
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lr", type=float, help="default: edgekd's")
    ap.add_argument("--qat-ranges", default="learn", choices=["learn", "ema"])
    ap.add_argument(
        "--qat-images",
        type=int,
        help="train QAT on this many train-split images (spread over the classes) instead of all 45,000",
    )
    ap.add_argument(
        "--tune-lr",
        help="comma-separated QAT learning rates to choose from first, on --tune-target: each trains on the train "
        "split less its every-10th image and is judged there (never on the scored images); the rate whose QAT "
        "top-1 ends closest to float's is then used for every target",
    )
    ap.add_argument("--tune-target", default="openvino-cpu")
    ap.add_argument("--workdir", default=".cache/qat-bench")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    return ap.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spread(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


def link_folder(root: Path, files: list[Path], classes_of: list[str]) -> Path:
    """``root/<class>/<file>`` symlinks: an image folder edgekd reads, made of chosen files."""
    if root.exists():
        return root
    tmp = root.with_name(root.name + ".tmp")
    for f, cls in zip(files, classes_of, strict=True):
        (tmp / cls).mkdir(parents=True, exist_ok=True)
        (tmp / cls / f.name).symlink_to(f.resolve())
    tmp.rename(root)
    return root


def class_names(folder) -> list[str]:
    return [folder.classes[label] for label in folder.labels]


def prepare_folders(args, workdir: Path) -> dict:
    folder = scan_image_folder(args.data)
    train, held = split_holdout(folder)
    calib_idx = spread(len(train), args.calib_samples)
    calib = train.subset(calib_idx)
    held_idx = spread(len(held), args.eval_samples)
    evalset = held.subset(held_idx)
    out = {
        "calib": link_folder(workdir / "calib", list(calib.files), class_names(calib)),
        "eval": link_folder(workdir / "holdout", list(evalset.files), class_names(evalset)),
        "train": Path(args.data),
        "train_images": len(train),
        "held_images": len(held),
        "calib_images": len(calib),
        "eval_images": len(evalset),
    }
    if args.tune_lr:
        # QAT takes every 10th file of each class as its own holdout: of these, train-split files only
        out["tune"] = link_folder(workdir / "tune-train", list(train.files), class_names(train))
        out["tune_held_images"] = len(split_holdout(train)[1])
    if args.qat_images:
        sub = train.subset(spread(len(train), args.qat_images))
        # its own every-10th holdout is taken from these train-split files: QAT still never sees the eval images
        out["train"] = link_folder(workdir / f"qat-train-{args.qat_images}", list(sub.files), class_names(sub))
        out["train_images"] = len(sub)
    return out


def student_card(args, workdir: Path) -> Path:
    """The teacher card's input and labels, with the student and its weights as the model."""
    card = read_model_card(args.card)
    path = workdir / "student.toml"
    text = Path(args.card).read_text().split("[input]", 1)[1]
    path.write_text(f'[model]\nsource = "{args.student}"\nweights = "{Path(args.weights).resolve()}"\n\n[input]{text}')
    assert read_model_card(path).labels == card.labels
    return path


def result_file(out: Path) -> Path:
    """``out`` + ``.json`` (not ``with_suffix``: a rate in the name, ``lr0.0005``, has a dot of its own)."""
    return out.with_name(out.name + ".json")


def compile_one(card: Path, target: str, out: Path, folders: dict, args, qat: bool | str) -> dict:
    options = dict(
        precision="int8",
        calib=folders["calib"],
        calib_samples=args.calib_samples,
        calib_method=args.calib_method,
        percentile=args.percentile,
        eval=folders["eval"],
        eval_samples=args.eval_samples,
        skip=("sensitivity",),
        force=True,
    )
    if qat:
        options.update(data=folders["train"], resume=True, qat_ranges=args.qat_ranges)
        if qat == "fallback":
            options.update(max_drop=args.fallback_max_drop, qat_fallback_epochs=args.qat_epochs, skip=())
        else:
            options.update(qat_epochs=args.qat_epochs)
        if args.qat_lr is not None:
            options["qat_lr"] = args.qat_lr
    # A result is reused only for the same settings and weights: a run with another --qat-lr, say, in the
    # same --workdir compiles again instead of reporting the old figures.
    settings = {k: str(v) for k, v in options.items() if k not in ("force", "resume")}
    settings["weights_sha256"] = hashlib.sha256(Path(args.weights).read_bytes()).hexdigest()
    done = result_file(out)
    if done.exists() and json.loads(done.read_text()).get("settings") == settings:
        return json.loads(done.read_text())
    started = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = api.compile(
                api.make_config(str(card), target, out, **options),
                progress=lambda line: progress(f"  [{target} {'qat' if qat else 'ptq'}] {line}"),
            ).manifest
    except EdgekdError as e:
        return {"error": e.message}
    acc = m["accuracy"]
    result = {
        "float_top1": acc["float_top1"],
        "int8_top1": acc["artifact_top1"],
        "drop_pt": acc["drop_pt"],
        "samples": acc["samples"],
        "seconds": round(time.time() - started, 1),
        "ranges_from": m["quantization"]["ranges_from"],
        "fidelity": m["fidelity"],
        "accuracy_budget": m["quantization"]["accuracy_budget"],
        "qat": {k: v for k, v in (m.get("qat") or {}).items() if k not in ("tensor_ranges",)} or None,
        **{k: acc[k] for k in PAIRED if k in acc},
        "settings": settings,
    }
    done.write_text(json.dumps(result, indent=2))
    return result


PAIRED = ("images_lost", "images_gained", "drop_ci95_pt")  # the evaluate pass's float-vs-artifact pairing


def add_pairing(rows: dict, card: Path, workdir: Path, folders: dict, samples: int) -> None:
    """Fills in, for results compiled before the evaluate pass recorded it, the images each artifact lost and
    gained against float: the artifacts kept in --workdir run again on the scored images, and must reproduce
    the top-1 their compile reported."""
    from edgekd.backends import get_backend
    from edgekd.data.samples import iter_labelled
    from edgekd.frontend import model_input, resolve
    from edgekd.quant.accuracy import paired_drop, predictions

    todo = [
        (target, kind)
        for target, r in rows.items()
        for kind in ("ptq", "qat")
        if isinstance(r.get(kind), dict) and "error" not in r[kind] and "images_lost" not in r[kind]
    ]
    if not todo:
        return
    spec = model_input(str(card))
    data = list(iter_labelled(folders["eval"], spec.input.preprocess, tuple(spec.input.shape), spec.labels, samples))
    labels = np.concatenate([y for _, y in data])
    float_pred = predictions(resolve(spec.source, spec.weights, False, spec.input).reference, data)
    for target, kind in todo:
        out, result = workdir / f"{target}-{kind}", rows[target][kind]
        artifact = json.loads((out / "manifest.json").read_text())["artifact"]
        run = get_backend(artifact["backend"]).session(out / artifact["model_file"], 2)
        int8_pred = predictions(run, data)
        again = (float(np.mean(float_pred == labels)), float(np.mean(int8_pred == labels)))
        if again != (result["float_top1"], result["int8_top1"]):
            raise SystemExit(
                f"{out}: float and int8 top-1 {again} here, {result['float_top1'], result['int8_top1']} in its compile"
            )
        paired = paired_drop(labels, float_pred, int8_pred)
        result |= dict(zip(PAIRED, (paired.lost, paired.gained, list(paired.ci95_pt()))))
        result_file(out).write_text(json.dumps(result, indent=2))
        progress(f"{target} {kind}: {paired.lost} images lost, {paired.gained} gained against float")


def verdict(ptq: dict, qat: dict) -> dict:
    recovered = None if ptq["drop_pt"] <= 0 else (ptq["drop_pt"] - qat["drop_pt"]) / ptq["drop_pt"]
    return {
        "recovered": recovered,
        "recovery_met": recovered is None or recovered >= TARGET_RECOVERY,
        "gap_met": qat["drop_pt"] <= TARGET_GAP_PT + 1e-9,
    }


def drop_cell(result: dict) -> str:
    lost_gained = f" ({result['images_lost']} / {result['images_gained']})" if "images_lost" in result else ""
    return f"{result['drop_pt']:+.2f}{lost_gained}"


def table(rows: dict) -> str:
    lines = [
        "| target | float top-1 % | PTQ int8 % | PTQ drop pt (lost / gained) | QAT int8 % | "
        "QAT drop pt (lost / gained) | QAT drop, 95 % interval | PTQ drop recovered | QAT within 0.1 pt |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target, r in rows.items():
        ptq, qat = r["ptq"], r.get("qat")
        if "error" in ptq or qat is None or "error" in qat:
            why = ptq.get("error") or (qat or {}).get("error") or "not run"
            lines.append(f"| {target} | – | – | – | – | – | – | – | {why} |")
            continue
        v = verdict(ptq, qat)
        rec = "no PTQ drop" if v["recovered"] is None else f"{100 * v['recovered']:.0f} %"
        interval = "[{:+.2f}, {:+.2f}]".format(*qat["drop_ci95_pt"]) if "drop_ci95_pt" in qat else "–"
        lines.append(
            f"| {target} | {100 * ptq['float_top1']:.2f} | {100 * ptq['int8_top1']:.2f} | {drop_cell(ptq)} | "
            f"{100 * qat['int8_top1']:.2f} | {drop_cell(qat)} | {interval} | {rec} | "
            f"{'met' if v['gap_met'] else 'NOT met'} |"
        )
    return "\n".join(lines)


def fallback_text(result: dict, args) -> str:
    """The accuracy budget's search before and after the QAT it ran, from the compile's manifest."""
    budget = result.get("accuracy_budget")
    if "error" in result or not budget:
        return f"Fallback run (--max-drop {args.fallback_max_drop}): {result.get('error', 'no budget record')}"
    rows = lambda steps: "\n".join(  # noqa: E731
        f"| {s['kept_float']} | {100 * s['top1']:.2f} | {s['drop_pt']:+.2f} |" for s in steps
    )
    head = "| layers in float | int8 top-1 % | drop pt |\n|---:|---:|---:|"
    text = [
        f"--max-drop {args.fallback_max_drop}, no --qat-epochs (float top-1 {100 * budget['float_top1']:.2f} % "
        f"on {budget['samples']} images):",
        "",
    ]
    if budget.get("before_qat"):
        text += [
            "Post-training quantization, layers returned to float one by one (most sensitive first):",
            "",
            head,
            rows(budget["before_qat"]),
            "",
            f"missed, so QAT ran ({result['qat']['trigger']}), and the search again:",
            "",
        ]
    else:
        text += ["Post-training quantization met it; no QAT ran:", ""]
    text += [
        head,
        rows(budget["steps"]),
        "",
        f"Shipped: int8 top-1 {100 * result['int8_top1']:.2f} % in the target's runtime (drop "
        f"{result['drop_pt']:+.2f} pt), ranges from {result['ranges_from']}.",
    ]
    return "\n".join(text)


def reading(rows: dict, eval_images: int) -> str:
    """What the table says about the student: how much PTQ left for QAT to recover, and how far QAT moved."""
    pairs = [(r["ptq"], r["qat"]) for r in rows.values() if r.get("qat") and "error" not in r["qat"]]
    if not pairs:
        return ""
    drops = [p["drop_pt"] for p, _ in pairs]
    worst_ptq = max(drops)
    moved = [p["drop_pt"] - q["drop_pt"] for p, q in pairs]
    step = 100 / max(1, eval_images)
    lost = (
        f"PTQ loses at most {worst_ptq:+.2f} pt on these targets ({round(worst_ptq / step)} of {eval_images} images)"
        if worst_ptq > 0
        else f"PTQ loses nothing on these targets (int8 top-1 {-max(drops):+.2f} to {-min(drops):+.2f} pt from float's)"
    )
    text = (
        f"{lost}, so this student leaves QAT {'little' if worst_ptq <= 5 * step else 'something'} to recover; QAT "
        f"moved top-1 by {min(moved):+.2f} to {max(moved):+.2f} pt against PTQ."
    )
    paired = {t: (r["ptq"], r["qat"]) for t, r in rows.items() if "images_lost" in (r.get("qat") or {})}
    if not paired:
        return text
    changed = lambda r: r["images_lost"] + r["images_gained"]  # noqa: E731
    text += " Against float, the artifacts change " + ", ".join(
        f"{changed(q)} images after QAT and {changed(p)} after PTQ on {t}" for t, (p, q) in paired.items()
    )
    real = [
        f"{t} ({q['images_lost']} lost, {q['images_gained']} gained)"
        for t, (_, q) in paired.items()
        if q["drop_ci95_pt"][0] > 0
    ]
    closer = all(changed(q) < changed(p) for p, q in paired.values())
    text += ": QAT follows the float model more closely" if closer else ""
    return text + (
        f"; a QAT drop is real where its 95 % interval excludes 0: {', '.join(real)}."
        if real
        else "; no QAT drop is distinguishable from 0."
    )


def tuning_text(tuning: list[dict], chosen: float, args) -> str:
    lines = [
        "## QAT learning rate",
        "",
        f"Chosen before the table, on {args.tune_target}: QAT at each rate trained on the train split less its "
        f"every-10th image and was judged on those {tuning[0]['images']} images, which the table never scores; "
        "the rate whose QAT top-1 there ends closest to float's is used for every target (a tie goes to the "
        "larger rate).",
        "",
        "| QAT lr | float top-1 % (tuning split) | QAT int8 top-1 % | QAT − float pt |",
        "|---:|---:|---:|---:|",
    ]
    for r in tuning:
        mark = " **(chosen)**" if r["lr"] == chosen else ""
        lines.append(f"| {r['lr']:g}{mark} | {r['float']:.2f} | {r['qat']:.2f} | {r['qat'] - r['float']:+.2f} |")
    return "\n".join(lines)


def markdown(
    rows: dict, args, folders: dict, command: str, fallback: dict | None = None, tuning: list[dict] | None = None
) -> str:
    any_qat = next((r["qat"]["qat"] for r in rows.values() if r.get("qat") and "error" not in r["qat"]), None)
    training = any_qat["training"] if any_qat else {}
    temperature = training.get("temperature", {}).get("start", "–")
    kd_share = training.get("alpha", {}).get("start", "–")
    return f"""# QAT benchmark: post-training quantization vs quantization-aware training

Produced by

```
{command}
```

on {platform.processor() or platform.machine()}, edgekd {EDGEKD_VERSION}, {time.strftime("%Y-%m-%d")}.
Student `{args.student}` (weights `{args.weights}`: the KD student of `python bench/student_benchmark.py
--variants kd`), preprocessing and labels of `{args.card}`.
Calibration: {folders["calib_images"]} training images evenly spaced over the train split, observer
{observer_text(args)}, the same for PTQ and QAT (its starting ranges).
Scored: {folders["eval_images"]} held-out images (every 10th of each class), by each
target's own runtime running the emitted artifact (`evaluate` pass); float is the PyTorch model on the same images.
QAT: {args.qat_epochs} epochs on {folders["train_images"]} train-split images, KD from the float student
(temperature {temperature}, KD share {kd_share}),
SGD lr {training.get("lr", "–")} cosine, batch {training.get("batch_size", "–")}, ranges {args.qat_ranges}
(from the calibration), BatchNorm folded as deployed. One image is {100 / max(1, folders["eval_images"]):.2f} pt.

{table(rows)}

{reading(rows, folders["eval_images"])}

Targets: QAT recovers ≥ {100 * TARGET_RECOVERY:.0f} % of the PTQ drop and ends within {TARGET_GAP_PT} pt of float.
{chr(10) + tuning_text(tuning, args.qat_lr, args) + chr(10) if tuning else ""}
{chr(10) + fallback_text(fallback, args) + chr(10) if fallback else ""}"""


def observer_text(args) -> str:
    text = f"`{args.calib_method}`" + (f" at {args.percentile}" if args.calib_method == "percentile" else "")
    default = CalibrationOptions().method
    if args.calib_method == default:
        return text
    why = "; min/max gives PTQ and QAT the full observed ranges, EMA about its first batch's"
    return text + f" (edgekd's default is `{default}`{why if args.calib_method == 'minmax' else ''})"


def tune_lr(card: Path, folders: dict, args, workdir: Path) -> list[dict]:
    """QAT on --tune-target at each candidate rate, trained on the train split less its every-10th image and
    judged on those (QAT's own holdout; the scored images stay unseen): one row per rate."""
    rows = []
    for lr in [float(v) for v in args.tune_lr.split(",")]:
        progress(f"{args.tune_target}: QAT at lr {lr:g} on the tuning split ...")
        tuned = argparse.Namespace(**{**vars(args), "qat_lr": lr})
        out = workdir / f"tune-{args.tune_target}-lr{lr:g}"
        result = compile_one(card, args.tune_target, out, {**folders, "train": folders["tune"]}, tuned, qat=True)
        if "error" in result:
            raise SystemExit(f"tuning at lr {lr:g}: {result['error']}")
        q = result["qat"]
        rows.append({"lr": lr, "images": folders["tune_held_images"], "float": q["float_top1"], "qat": q["qat_top1"]})
    return rows


def chosen_lr(rows: list[dict]) -> float:
    """The rate whose QAT top-1 on the tuning split is closest to float's; a tie goes to the larger rate."""
    return min(rows, key=lambda r: (abs(r["qat"] - r["float"]), -r["lr"]))["lr"]


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folders = prepare_folders(args, workdir)
    card = student_card(args, workdir)
    tuning = tune_lr(card, folders, args, workdir) if args.tune_lr else None
    if tuning:
        args.qat_lr = chosen_lr(tuning)
        progress(f"QAT learning rate: {args.qat_lr:g} (closest to float on the tuning split)")
    rows = {}
    for target in [t for t in args.targets.split(",") if t]:
        progress(f"{target}: post-training quantization ...")
        rows[target] = {"ptq": compile_one(card, target, workdir / f"{target}-ptq", folders, args, qat=False)}
        if "error" in rows[target]["ptq"]:
            progress(f"{target}: {rows[target]['ptq']['error']}")
            continue
        progress(f"{target}: quantization-aware training, {args.qat_epochs} epochs ...")
        rows[target]["qat"] = compile_one(card, target, workdir / f"{target}-qat", folders, args, qat=True)
    add_pairing(rows, card, workdir, folders, args.eval_samples)
    fallback = None
    if args.fallback_max_drop is not None:
        target = next(iter(rows))
        progress(f"{target}: --max-drop {args.fallback_max_drop} with the QAT fallback ...")
        fallback = compile_one(card, target, workdir / f"{target}-fallback", folders, args, qat="fallback")
    text = table(rows) + ("\n\n" + fallback_text(fallback, args) if fallback else "")
    print("\n" + text)
    command = "python bench/qat_benchmark.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "folders": {k: str(v) for k, v in folders.items()},
                    "results": rows,
                    "lr_tuning": tuning,
                    "fallback": fallback,
                },
                indent=2,
            )
        )
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, args, folders, command, fallback, tuning))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

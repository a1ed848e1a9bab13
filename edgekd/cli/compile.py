"""``edgekd compile`` and ``edgekd distill``, and what they print."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgekd import api
from edgekd.cli.bench import bench_artifact, bench_settings
from edgekd.cli.common import handle_errors, main, parse_floats, parse_ints, parse_names, training_flags
from edgekd.quant.qparams import SCHEMES
from edgekd.ui import text_table


@main.command("compile")
@click.argument("model")
@click.option("--target", "-t", required=True, help="target name (see `edgekd targets`) or a spec .toml")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="artifact directory to write")
@click.option("--force", is_flag=True, help="replace OUTPUT if it exists")
@click.option("--weights", type=click.Path(path_type=Path), help="state_dict for a factory MODEL (weights_only)")
@click.option("--allow-pickle", is_flag=True, help="allow unpickling a whole-module file (runs code from it)")
@click.option("--input-shape", callback=parse_ints, help="N,C,H,W (or N,H,W,C with --layout NHWC)")
@click.option(
    "--mean", callback=parse_floats, help="per-channel mean after scaling, e.g. 0.485,0.456,0.406 (GRAY: one value)"
)
@click.option("--std", callback=parse_floats, help="per-channel std, e.g. 0.229,0.224,0.225")
@click.option("--scale", type=float, help="pixel multiplier before mean/std (default 1/255)")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR", "GRAY"]))
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]))
@click.option("--labels", type=click.Path(exists=True, path_type=Path), help="text file, one class name per line")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8", "auto"]),
    help="default: the target's; auto: the fastest on --device within --max-drop (needs --eval)",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    help="sample images or .npy/.npz (verification now, calibration for int8)",
)
@click.option(
    "--calib-samples", type=int, default=512, show_default=True, help="use at most this many calibration samples"
)
@click.option(
    "--calib-method",
    type=click.Choice(["ema", "minmax", "percentile", "mse"]),
    default="ema",
    show_default=True,
    help="activation ranges: a moving average of batch min/max, min/max over all samples, a percentile, "
    "or the range closest to the values seen (mse)",
)
@click.option("--ema-constant", type=float, default=0.01, show_default=True, help="EMA averaging constant")
@click.option("--percentile", type=float, default=99.99, show_default=True)
@click.option(
    "--activation-scheme",
    type=click.Choice(list(SCHEMES)),
    help="override the target's activation scheme",
)
@click.option("--keep-float", help="N (keep the N most sensitive layers in float) or layer names, comma-separated")
@click.option(
    "--eval",
    "eval_dir",
    type=click.Path(path_type=Path),
    help="images DIR/<class>/* (top-1); a flat folder or .npy (top-1 agreement with float); a data.yaml / COCO "
    ".json (mAP)",
)
@click.option("--eval-samples", type=int, default=1000, show_default=True)
@click.option(
    "--max-drop",
    type=float,
    help="points of --eval's metric int8 may lose (agreement: % of images may differ from float); layers "
    "return to float until met",
)
@click.option("--student", help="distil into this zoo model (e.g. mobilenetv2-cifar:0.5); needs --data")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    help="training images for --student/--sparsity (class subfolders or flat)",
)
@click.option("--epochs", type=int, default=10, show_default=True, help="training epochs for distillation and sparsity")
@click.option("--sparsity", type=float, help="fraction of Conv/Linear weights set to zero (0..1)")
@click.option(
    "--sparsity-pattern", type=click.Choice(["unstructured", "2:4"]), default="unstructured", show_default=True
)
@click.option(
    "--resume", is_flag=True, help="continue training from OUTPUT.checkpoints (left by an interrupted compile)"
)
@click.option(
    "--qat-epochs",
    type=int,
    default=0,
    show_default=True,
    help="int8: quantization-aware training after calibration, distilled from the float model; needs --data",
)
@click.option(
    "--qat-ranges",
    type=click.Choice(["learn", "ema"]),
    default="learn",
    show_default=True,
    help="QAT ranges: learned by gradient (LSQ-style) or a moving average of batch min/max",
)
@click.option(
    "--qat-lr",
    type=float,
    default=0.0005,
    show_default=True,
    help="QAT learning rate (SGD; BN-folded weights diverged at 0.002 on a CIFAR ResNet-20)",
)
@click.option(
    "--qat-alpha",
    type=float,
    default=1.0,
    show_default=True,
    help="KD share of the QAT loss (from the float model); below 1 mixes in the labels",
)
@click.option(
    "--qat-fallback-epochs",
    type=int,
    default=3,
    show_default=True,
    help="QAT epochs run when --max-drop is missed after PTQ and mixed precision (0: fail instead); needs --data",
)
@click.option(
    "--nms",
    is_flag=True,
    help="detectors: NonMaxSuppression inside the artifact (onnx-cpu, openvino-cpu, jetson-*); else the runner does it",
)
@click.option("--nms-conf", type=float, default=0.25, show_default=True, help="--nms: score threshold")
@click.option("--nms-iou", type=float, default=0.7, show_default=True, help="--nms: IoU above which a box is dropped")
@click.option("--nms-max-det", type=int, default=300, show_default=True, help="--nms: boxes kept per class and image")
@click.option("--passes", callback=parse_names, help="run exactly these passes, comma-separated")
@click.option("--skip", callback=parse_names, help="drop these passes from the target's default pipeline")
@click.option("--verify-samples", type=int, default=16, show_default=True)
@click.option("--keep-failed", is_flag=True, help="keep an artifact that fails the fidelity check (status in manifest)")
@click.option("--bench", "bench_device", help="benchmark the artifact on this device afterwards (e.g. local)")
@click.option(
    "--device",
    "search_device",
    help="time the candidates of --precision auto / --latency-budget here [--bench's device, else the target's]",
)
@click.option("--inventory", type=click.Path(exists=True, path_type=Path), help="device inventory .toml (SSH boards)")
@click.option(
    "--latency-budget",
    type=float,
    help="ms on --device: distil the most accurate --student that fits "
    "(--student NAME:W1,W2,... or a zoo name for its widths)",
)
@click.option(
    "--proxy-epochs",
    type=int,
    default=1,
    show_default=True,
    help="distillation epochs that rank the students within --latency-budget",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@training_flags
@handle_errors
def compile_cmd(
    model,
    target,
    output,
    labels,
    keep_float,
    eval_dir,
    data_dir,
    skip,
    bench_device,
    search_device,
    inventory,
    quiet,
    **options,
):
    """Compile MODEL (.pt TorchScript, .pt2, .onnx, package.module:factory, zoo name, or a model card .toml)."""
    label_names = [line.strip() for line in labels.read_text().splitlines() if line.strip()] if labels else None
    searching = options["precision"] == "auto" or options["latency_budget"] is not None
    keep_names, keep_count = (), 0
    if keep_float:
        if keep_float.strip().isdigit():
            keep_count = int(keep_float)
        else:
            keep_names = parse_names(None, None, keep_float)
    config = api.make_config(
        model,
        target,
        output,
        labels=label_names,
        keep_float=keep_names,
        keep_float_count=keep_count,
        eval=eval_dir,
        data=data_dir,
        skip=skip or (),
        inventory=inventory if searching else None,
        device=search_device or (bench_device if searching else None),
        **options,
    )
    emit = None if quiet else (lambda line: click.echo(line, err=True))
    result = api.compile(config, progress=emit)
    _compile_summary(result)
    _search_tables(result.manifest)
    if bench_device:
        bench_artifact(result.output, bench_device, bench_settings(result.output), quiet, inventory)


def _percent(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f} %"


def _compile_summary(result) -> None:
    m = result.manifest
    fid = m["fidelity"] or {}
    click.echo(
        f"wrote {result.output}  ({m['target']['name']}, {m['artifact']['precision']}, "
        f"{sum(f['bytes'] for f in m['files']):,} bytes)"
    )
    if fid:
        click.echo(
            f"fidelity vs {fid['reference']}: max abs error {fid['max_abs_error']:.3g}, "
            f"top-1 agreement {fid.get('top1_agreement', '–')}"
        )
    qat = m.get("qat")
    if qat:
        click.echo(
            f"QAT ({qat['trigger']}, {qat['epochs']} epochs, ranges {qat['ranges']}): holdout top-1 float "
            f"{_percent(qat['float_top1'])}, int8 before {_percent(qat['ptq_top1'])}, "
            f"after {_percent(qat['qat_top1'])}"
        )
    _accuracy_lines(m.get("accuracy"))
    sc = m.get("speed_check")
    if sc and sc["int8_slower"]:
        click.secho(
            f"warning: this int8 artifact is slower than the float model on {sc['measured_on']} "
            f"({sc['speedup']['median']:.2f}x in {sc['speedup']['repeats']} repeats); ship --precision fp32, "
            "or let --precision auto choose",
            fg="yellow",
        )


def _accuracy_lines(acc: dict | None) -> None:
    if acc and acc.get("kind") == "detection":
        click.echo(
            f"mAP50 on {acc['images']} eval images: "
            + ", ".join(f"{k} {acc[k]['map50']:.4f}" for k in ("float", "simulation", "artifact") if k in acc)
            + (f" (drop {acc['drop_map50_pt']:.2f} pt)" if "drop_map50_pt" in acc else "")
        )
    elif acc and acc.get("metric") == "agreement":
        click.echo(
            f"top-1 agreement with float on {acc['samples']} eval images without labels: "
            f"{100 * acc['artifact_top1']:.2f} % ({acc['images_lost']} differ)"
        )
    elif acc:
        click.echo(
            f"top-1 on {acc['samples']} eval images: float {100 * acc['float_top1']:.2f} %, "
            f"artifact {100 * acc['artifact_top1']:.2f} % (drop {acc['drop_pt']:.2f} pt"
            + (
                f"; {acc['images_lost']} images lost, {acc['images_gained']} gained; 95 % interval "
                f"{acc['drop_ci95_pt'][0]:+.2f} to {acc['drop_ci95_pt'][1]:+.2f})"
                if "drop_ci95_pt" in acc
                else ")"
            )
        )
    speed = (acc or {}).get("speed")
    if speed and not speed["met"]:
        click.secho(
            f"note: {speed['drop_pt']:.2f} pt lost for {speed['speedup']:.2f}x speed on this machine; "
            f"the design rule asks {speed['needed_speedup']:.2f}x (2x per point)",
            fg="yellow",
        )


def _search_tables(m: dict) -> None:
    from edgekd.report import BUDGET_HEADERS, budget_rows, precision_headers, precision_rows

    if m.get("latency_budget"):
        click.echo(text_table(BUDGET_HEADERS, budget_rows(m["latency_budget"])))
    if m.get("precision_search"):
        ps = m["precision_search"]
        click.echo(text_table(precision_headers(ps), precision_rows(ps)))
        click.echo(f"shipped {ps['chosen']}: {ps['why']}")


@main.command("distill")
@click.argument("teacher")
@click.option("--student", required=True, help="zoo model to train, e.g. resnet8:0.625 or mobilenetv2-cifar:0.5")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="training images (class subfolders, or flat for label-free KD); every 10th per class is held out",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="student state_dict (.pt) to write"
)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--resume", is_flag=True, help="continue from OUTPUT.checkpoints")
@click.option("--force", is_flag=True, help="replace OUTPUT (and its .json record) if they exist")
@click.option(
    "--init", type=click.Path(exists=True, path_type=Path), help="start from these student weights (an update)"
)
@click.option(
    "--replay",
    type=click.Path(path_type=Path),
    help="replay buffer .npz: earlier samples mixed into every step, new ones added (created if missing)",
)
@click.option("--replay-size", type=int, default=5000, show_default=True, help="capacity of a new replay buffer")
@click.option("--weights", type=click.Path(path_type=Path), help="teacher state_dict for a factory TEACHER")
@click.option("--allow-pickle", is_flag=True, help="allow unpickling a whole-module teacher file (runs code from it)")
@click.option("--input-shape", callback=parse_ints, help="N,C,H,W")
@click.option("--mean", callback=parse_floats)
@click.option("--std", callback=parse_floats)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@training_flags
@handle_errors
def distill_cmd(teacher, student, data_dir, output, epochs, quiet, **options):
    """Train a STUDENT from TEACHER by knowledge distillation and write its weights.

    Runs as is, or data-parallel under torchrun (gloo on CPU, nccl on GPUs), e.g.
    `torchrun --nproc_per_node 2 -m edgekd distill ...`. Compile the result with
    `edgekd compile STUDENT --weights OUTPUT --target ...`.
    """
    progress = None if quiet else _EpochBar(epochs)
    m = api.distill(teacher, student, data_dir, output, epochs=epochs, progress=progress, **options)
    from edgekd.distill.distributed import join

    if join().is_main:
        click.echo(
            f"wrote {output}: {student}, {m['student_params']:,} params "
            f"({m['teacher_params'] / m['student_params']:.1f}x "
            f"fewer), {m['student_macs'] / 1e6:.2f} M MACs; holdout top-1 {_percent(m['student_val_top1'])}"
            f" (teacher {_percent(m['teacher_val_top1'])}), {m['epochs']} epochs, {m['workers']} worker(s)"
        )


class _EpochBar:
    """A step bar per epoch on stderr, closed by the epoch's loss and holdout top-1."""

    def __init__(self, epochs: int):
        self.epochs, self.bar = epochs, None

    def __call__(self, epoch, step, steps, loss, acc):
        if self.bar is None:
            self.bar = click.progressbar(
                length=steps,
                label=f"epoch {epoch}/{self.epochs}",
                file=sys.stderr,
                show_pos=True,
                item_show_func=lambda text: text,
            )
            self.bar.__enter__()
        self.bar.update(step - self.bar.pos, f"loss {loss:.4f}")
        if step == steps:
            self.bar.render_finish()
            self.bar = None
            click.echo(
                f"epoch {epoch}/{self.epochs}: loss {loss:.4f}"
                + (f", holdout top-1 {acc:.2f} %" if acc is not None else ""),
                err=True,
            )

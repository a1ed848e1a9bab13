"""The ``edgekd`` command: parses, calls edgekd.api, renders. Nothing else lives here."""

from __future__ import annotations

import functools
import json
import signal
import sys
import warnings
from pathlib import Path

import click

from edgekd import __version__, api
from edgekd.bench.end_to_end import (
    DEFAULT_END_TO_END,
    END_TO_END_HEADERS,
    EndToEndSettings,
    end_to_end_line,
    end_to_end_rows,
)
from edgekd.bench.session import BenchSettings
from edgekd.errors import ConfigError, EdgekdError, InputNotFoundError
from edgekd.report import LATENCY_HEADERS, latency_rows
from edgekd.ui import text_table


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def _ints(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,3,224,224, got {value!r}") from None


def _names(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds like Ctrl-C and the atomic writer cleans up."""


def _terminate(signum, frame):
    raise Terminated()


def _notes(e: BaseException) -> None:
    for note in getattr(e, "__notes__", ()):
        click.echo(f"  note: {note}", err=True)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except EdgekdError as e:
            click.secho(f"error: {e.message}", fg="red", err=True)
            if e.hint:
                click.echo(f"  hint: {e.hint}", err=True)
            _notes(e)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            kept = getattr(e, "__notes__", None)
            click.echo(f"{how}; {'no artifact' if kept else 'nothing'} was written", err=True)
            _notes(e)
            sys.exit(143 if isinstance(e, Terminated) else 130)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


# Training flags shared by `compile` (distillation, sparsity fine-tune) and `distill`; unset ones keep the
# trainer's defaults (edgekd.distill.trainer.TrainConfig).
TRAINING_FLAGS = [
    click.option("--lr", type=float, help="peak learning rate [0.05; sparsity fine-tune 0.01]"),
    click.option("--batch-size", type=int, help="[64]"),
    click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), help="[sgd, Nesterov momentum]"),
    click.option("--lr-schedule", type=click.Choice(["cosine", "onecycle"]), help="[cosine]"),
    click.option("--temperature", help="KD temperature: a number, or START:END over training [6:2]"),
    click.option("--temperature-schedule", type=click.Choice(["linear", "cosine"]), help="shape of START:END [linear]"),
    click.option("--learn-temperature", is_flag=True, default=None, help="train T with the student, from START"),
    click.option("--alpha", help="KD weight against hard labels: a number or START:END [0.7:0.3; label-free 1]"),
    click.option(
        "--kd-loss",
        type=click.Choice(["hinton", "dkd"]),
        help="KD objective: Hinton's, or decoupled KD (target + β·non-target terms) [hinton]",
    ),
    click.option("--dkd-beta", type=float, help="decoupled KD: weight of the non-target term [8]"),
    click.option("--hint-weight", type=float, help="FitNets hint loss on paired feature maps [0: off]"),
    click.option("--attention-weight", type=float, help="attention transfer on the same pairs [0: off]"),
    click.option("--feature-loss", type=click.Choice(["mse", "cosine"]), help="hint distance [mse]"),
    click.option("--feature-pairs", help="STUDENT_LAYER=TEACHER_LAYER,... [auto: stage ends matched by spatial size]"),
    click.option("--compensate", is_flag=True, default=None, help="rescale loss weights by gradient-norm sensitivity"),
    click.option("--loss-clip", type=float, help="clip each loss term at this value (e.g. 0.3)"),
    click.option(
        "--select-fraction", type=float, help="label-free: keep this fraction with the highest teacher entropy"
    ),
    click.option("--early-stop", type=int, help="stop after N epochs without a better holdout top-1"),
    click.option("--sparsity-scope", type=click.Choice(["layer", "global"]), help="magnitude ranking scope [layer]"),
]
TRAINING_KEYS = (
    "lr",
    "batch_size",
    "optimizer",
    "lr_schedule",
    "temperature",
    "temperature_schedule",
    "learn_temperature",
    "alpha",
    "kd_loss",
    "dkd_beta",
    "hint_weight",
    "attention_weight",
    "feature_loss",
    "feature_pairs",
    "compensate",
    "loss_clip",
    "select_fraction",
    "early_stop",
    "sparsity_scope",
)


def training_flags(fn):
    """Adds TRAINING_FLAGS and hands the ones the user set to ``fn`` as one ``train_options`` dict."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = {k: kwargs.pop(k) for k in TRAINING_KEYS}
        return fn(*args, train_options={k: v for k, v in given.items() if v is not None}, **kwargs)

    for flag in reversed(TRAINING_FLAGS):
        wrapper = flag(wrapper)
    return wrapper


class EdgekdGroup(click.Group):
    """Command-line mistakes (a bad flag value, an unknown option) read like every other edgekd error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            click.secho(f"error: {e.format_message()}", fg="red", err=True)
            command = e.ctx.command_path if e.ctx else "edgekd"
            click.echo(f"  hint: see `{command} --help` for the accepted values", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)


@click.group(cls=EdgekdGroup)
@click.version_option(__version__, prog_name="edgekd")
def main():
    """edgekd: compile a trained model into a target's artifact, and benchmark it."""
    warnings.formatwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning for a user: what happened, not the source line inside edgekd that noticed it."""
    return f"warning: {message}\n"


@main.command("compile")
@click.argument("model")
@click.option("--target", "-t", required=True, help="target name (see `edgekd targets`) or a spec .toml")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="artifact directory to write")
@click.option("--force", is_flag=True, help="replace OUTPUT if it exists")
@click.option("--weights", type=click.Path(path_type=Path), help="state_dict for a factory MODEL (weights_only)")
@click.option("--allow-pickle", is_flag=True, help="allow unpickling a whole-module file (runs code from it)")
@click.option("--input-shape", callback=_ints, help="N,C,H,W (or N,H,W,C with --layout NHWC)")
@click.option("--mean", callback=_floats, help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
@click.option("--std", callback=_floats, help="per-channel std, e.g. 0.229,0.224,0.225")
@click.option("--scale", type=float, help="pixel multiplier before mean/std (default 1/255)")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]))
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
@click.option("--calib-method", type=click.Choice(["ema", "minmax", "percentile"]), default="ema", show_default=True)
@click.option("--ema-constant", type=float, default=0.01, show_default=True, help="EMA averaging constant")
@click.option("--percentile", type=float, default=99.99, show_default=True)
@click.option(
    "--activation-scheme",
    type=click.Choice(["asymmetric-int8", "asymmetric-uint8", "symmetric-int8"]),
    help="override the target's activation scheme",
)
@click.option("--keep-float", help="N (keep the N most sensitive layers in float) or layer names, comma-separated")
@click.option("--eval", "eval_dir", type=click.Path(path_type=Path), help="labelled images DIR/<class>/* for top-1")
@click.option("--eval-samples", type=int, default=1000, show_default=True)
@click.option(
    "--max-drop", type=float, help="top-1 points int8 may lose; with --eval, layers return to float until met"
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
@click.option("--passes", callback=_names, help="run exactly these passes, comma-separated")
@click.option("--skip", callback=_names, help="drop these passes from the target's default pipeline")
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
            keep_names = _names(None, None, keep_float)
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
        _bench(result.output, bench_device, _settings(result.output), quiet, inventory)


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
    elif acc:
        click.echo(
            f"top-1 on {acc['samples']} eval images: float {100 * acc['float_top1']:.2f} %, "
            f"artifact {100 * acc['artifact_top1']:.2f} % (drop {acc['drop_pt']:.2f} pt)"
        )
        speed = acc.get("speed")
        if speed and not speed["met"]:
            click.secho(
                f"note: {speed['drop_pt']:.2f} pt lost for {speed['speedup']:.2f}x speed on this machine; "
                f"the design rule asks {speed['needed_speedup']:.2f}x (2x per point)",
                fg="yellow",
            )


def _search_tables(m: dict) -> None:
    from edgekd.report import BUDGET_HEADERS, PRECISION_HEADERS, budget_rows, precision_rows

    if m.get("latency_budget"):
        click.echo(text_table(BUDGET_HEADERS, budget_rows(m["latency_budget"])))
    if m.get("precision_search"):
        ps = m["precision_search"]
        click.echo(text_table(PRECISION_HEADERS, precision_rows(ps)))
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
@click.option("--input-shape", callback=_ints, help="N,C,H,W")
@click.option("--mean", callback=_floats)
@click.option("--std", callback=_floats)
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


def _settings(
    artifact, threads=None, warmup=None, iterations=None, time_budget=None, end_to_end=DEFAULT_END_TO_END
) -> BenchSettings:
    """Flags first, then the artifact's target spec defaults."""
    from edgekd.artifact import read_manifest
    from edgekd.specs import load_target

    spec_bench = None
    try:
        spec_bench = load_target(read_manifest(artifact)["target"]["spec_path"]).bench
    except EdgekdError:
        pass
    d = spec_bench or BenchSettings()
    return BenchSettings(
        threads=d.threads if threads is None else threads,
        warmup=d.warmup if warmup is None else warmup,
        iterations=d.iterations if iterations is None else iterations,
        time_budget_s=time_budget,
        end_to_end=end_to_end,
    )


def _bench(artifact, device, settings, quiet, inventory=None, accept_new=False):
    if quiet:
        result = api.bench(artifact, device, settings, inventory=inventory, accept_new_host_key=accept_new)
    else:
        with click.progressbar(length=settings.iterations, label=f"benchmarking on {device}", file=sys.stderr) as bar:

            def progress(done, total):
                bar.length = total  # a detector's run counts its end-to-end loop too
                bar.update(done - bar.pos)

            result = api.bench(
                artifact, device, settings, progress, inventory=inventory, accept_new_host_key=accept_new
            )
    _latency_tables([result])
    return result


def _latency_tables(results: list[dict]) -> None:
    """Model-only latency; for detectors, each stage from frame to detections below it."""
    click.echo(text_table(LATENCY_HEADERS, latency_rows(results)))
    rows = end_to_end_rows(results)
    if rows:
        click.echo("\nend to end (frame → detections):")
        click.echo(text_table(END_TO_END_HEADERS, rows))
        for r in results:
            if r.get("end_to_end"):
                click.echo(end_to_end_line(r))


def _compare_table(rows: list[dict]) -> str:
    headers = ["target", "device", "runtime", "threads", "p50 ms", "p90 ms", "p99 ms", "e2e p50 ms", "fps", "when"]
    keys = ["target", "device", "runtime", "threads", "p50_ms", "p90_ms", "p99_ms", "e2e_p50_ms", "throughput_fps"]
    return text_table(headers, [[r.get(k) for k in keys] + [r["started"]] for r in rows])


@main.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--device", "-d", default="local", show_default=True, help="a device, or several comma-separated (run at once)"
)
@click.option(
    "--compare", is_flag=True, help="print the newest run per device/target from the artifacts' histories, and plot it"
)
@click.option("--inventory", type=click.Path(exists=True, path_type=Path), help="device inventory .toml")
@click.option("--threads", type=int, help="default: the target spec's")
@click.option("--warmup", type=int)
@click.option("--iterations", "-n", type=int)
@click.option("--time-budget", type=float, help="seconds; stop each timed loop early when spent")
@click.option(
    "--frames",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a detector: time it end to end on these images (the first 16) [synthetic 640×480 frames]",
)
@click.option("--conf", type=float, default=0.25, show_default=True, help="a detector's end-to-end score threshold")
@click.option("--iou", type=float, default=0.7, show_default=True, help="a detector's end-to-end NMS IoU")
@click.option("--max-det", type=int, default=300, show_default=True, help="a detector's detections kept per frame")
@click.option("--model-only", is_flag=True, help="a detector: time the model alone, not frame to detections")
@click.option("--accept-new-host-key", is_flag=True, help="trust and record a board's host key not yet in known_hosts")
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def bench_cmd(
    artifacts,
    device,
    compare,
    inventory,
    threads,
    warmup,
    iterations,
    time_budget,
    frames,
    conf,
    iou,
    max_det,
    model_only,
    accept_new_host_key,
    quiet,
):
    """Benchmark compiled ARTIFACTS: p50/p90/p99 latency, throughput, peak memory; a detector also end to end
    (preprocess + model + decode/NMS, from camera-like frames)."""
    if compare:
        rows, png = api.compare(artifacts)
        if not rows:
            raise InputNotFoundError(
                "no benchmark runs recorded in these artifacts", "run `edgekd bench OUT --device NAME` first"
            )
        click.echo(_compare_table(rows))
        click.echo(f"plot: {png}")
        return
    if len(artifacts) != 1:
        raise ConfigError("benchmark one artifact at a time (several are only for --compare)")
    e2e = None if model_only else EndToEndSettings(str(frames) if frames else None, conf, iou, max_det)
    settings = _settings(artifacts[0], threads, warmup, iterations, time_budget, e2e)
    names = [d.strip() for d in device.split(",") if d.strip()]
    if len(names) == 1:
        _bench(artifacts[0], names[0], settings, quiet, inventory, accept_new_host_key)
        return
    results = api.bench_many(artifacts[0], names, settings, inventory, accept_new_host_key)
    ok = [r for r in results if not isinstance(r, Exception)]
    if ok:
        _latency_tables(ok)
    for name, r in zip(names, results):
        if isinstance(r, Exception):
            click.secho(f"{name}: {r}", fg="red", err=True)
    if len(ok) < len(results):
        sys.exit(4)


def _inventory_option(fn):
    return click.option("--inventory", type=click.Path(exists=True, path_type=Path), help="device inventory .toml")(fn)


@main.group("devices", invoke_without_command=True)
@_inventory_option
@click.pass_context
@handle_errors
def devices_cmd(ctx, inventory):
    """List the devices (built-in local plus the inventory)."""
    ctx.obj = {"inventory": inventory}
    if ctx.invoked_subcommand is None:
        rows = api.list_devices(inventory)
        click.echo(
            text_table(
                ["device", "host", "port", "user", "arch", "runtimes", "jetson", "description"],
                [
                    [
                        d["name"],
                        d["host"],
                        d["port"],
                        d["user"],
                        d["arch"],
                        ",".join(d["runtimes"]),
                        "yes" if d["jetson"] else "",
                        d["description"],
                    ]
                    for d in rows
                ],
            )
        )


@devices_cmd.command("check")
@click.argument("name")
@_inventory_option
@click.option("--accept-new-host-key", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def devices_check_cmd(ctx, name, inventory, accept_new_host_key, as_json):
    """Connect to NAME and report OS, CPU, memory, Python, runtimes (and Jetson facts)."""
    info = api.check_device(name, inventory or ctx.obj["inventory"], accept_new_host_key)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [
        ["os", info["os"]],
        ["kernel", info["kernel"]],
        ["cpu", f"{info['cpu']} ({info['cores']} cores, {info['machine']})"],
        ["memory", f"{info['memory_mb']} MB"],
        ["python", f"{info['python']} ({info['python_path']})"],
        ["governor", info["governor"]],
    ]
    rows += [[f"runtime {k}", v or "missing"] for k, v in info["runtimes"].items()]
    for k, v in (info.get("jetson") or {}).items():
        rows.append([f"jetson {k}", (v or "–").splitlines()[0] if isinstance(v, str) else v])
    click.echo(text_table([name, ""], rows))


@main.command("val")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="YOLO data.yaml or COCO annotation .json")
@click.option("--split", default="val", show_default=True, help="data.yaml split")
@click.option(
    "--conf", default=0.25, show_default=True, help="confidence for precision/recall (mAP uses every detection)"
)
@click.option("--iou", default=0.7, show_default=True, help="NMS IoU threshold")
@click.option("--max-det", default=300, show_default=True, help="detections kept per image")
@click.option("--limit", type=int, help="first N images only")
@click.option("--threads", default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def val_cmd(artifact, data, split, conf, iou, max_det, limit, threads, as_json):
    """Score a compiled detector: COCO mAP50-95, mAP50, precision and recall on DATA, in its own runtime."""
    with click.progressbar(length=1, label="evaluating", file=sys.stderr) as bar:

        def progress(done, total):
            bar.length = total
            bar.update(done - bar.pos)

        r = api.val(
            artifact,
            data,
            split=split,
            conf=conf,
            iou=iou,
            max_det=max_det,
            limit=limit,
            threads=threads,
            progress=progress,
        )
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
        return
    click.echo(r.data)
    click.echo(f"{r.model_file} ({r.runtime}): {r.metrics.line()}")


@main.command("targets")
@click.option("--explain", metavar="TARGET", help="print one target's spec and why its defaults were chosen")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def targets_cmd(explain, as_json):
    """List the built-in targets, their backend and whether its toolchain is installed."""
    if explain:
        info = api.explain_target(explain)
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        click.echo(f"{info['name']}: {info['description']}")
        click.echo(f"  spec {info['path']} (sha256 {info['spec_sha256'][:16]}…)")
        click.echo(
            f"  backend {info['backend']} ({'installed' if info['toolchain_installed'] else 'toolchain missing'}), "
            f"class {info['device_class']}"
        )
        click.echo(
            f"  precisions {', '.join(info['precisions'])} (default {info['default_precision']}), "
            f"activations {info['activation_scheme']}, placement {info['placement']}, "
            f"opset {info['opset']} in {info['opset_range']}"
        )
        click.echo(f"  default pipeline: {' → '.join(info['passes'])}")
        for title, text in (("why this pipeline", info["pipeline_why"]), ("why this scheme", info["quantization_why"])):
            if text:
                click.echo(f"\n{title}:\n  " + " ".join(text.split()))
        for table, facts in info["facts"].items():
            click.echo(f"\n[{table}]")
            for k, v in facts.items():
                click.echo(f"  {k} = {v}")
        b = info["bench"]
        click.echo(
            f"\nbenchmark defaults: device {b['device']}, {b['threads']} threads, {b['warmup']} warm-up, "
            f"{b['iterations']} iterations"
        )
        return
    rows = api.list_targets()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        text_table(
            ["target", "backend", "class", "precisions", "toolchain", "description"],
            [
                [
                    r["name"],
                    r["backend"],
                    r["device_class"],
                    ",".join(r["precisions"]),
                    "installed" if r["toolchain_installed"] else "missing",
                    r["description"],
                ]
                for r in rows
            ],
        )
    )


@main.command("inspect")
@click.argument("model")
@click.option("--input-shape", callback=_ints)
@click.option("--weights", type=click.Path(path_type=Path))
@click.option("--allow-pickle", is_flag=True)
@click.option("--target", "-t", help="also list the nodes this target cannot run")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def inspect_cmd(model, input_shape, weights, allow_pickle, target, as_json):
    """Show a model's ops, parameters and MACs (and, with --target, what that target cannot run)."""
    info = api.inspect(model, input_shape=input_shape, weights=weights, allow_pickle=allow_pickle, target=target)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['model']} ({info['kind']}), input {info['input_shape']}, opset {info['opset']}")
    click.echo(f"params {info['params']:,}   MACs {info['macs']:,}")
    click.echo(text_table(["op", "count"], sorted(info["ops"].items(), key=lambda kv: -kv[1])))
    if target:
        bad, groups = info["unsupported"], info["unsupported_groups"]
        click.echo(
            f"\n{info['target']}: "
            + ("every node is supported" if not bad else f"{len(bad)} unsupported node(s) of {len(groups)} op type(s)")
        )
        if bad:
            rows = [
                [
                    g["op"],
                    g["count"],
                    ", ".join(g["nodes"]) + (", …" if g["count"] > len(g["nodes"]) else ""),
                    g["reason"] + (f" (+{g['other_reasons']} other)" if g["other_reasons"] else ""),
                    g["canonicalize_removes"],
                ]
                for g in groups
            ]
            click.echo(text_table(["op", "nodes", "e.g.", "reason", "canonicalize removes"], rows))
            if any(g["canonicalize_removes"] < g["count"] for g in groups):
                sys.exit(1)


if __name__ == "__main__":
    main()

"""The command group, option parsing and the error handling every ``edgekd`` command shares."""

from __future__ import annotations

import functools
import signal
import sys
import warnings

import click

from edgekd import __version__
from edgekd.errors import EdgekdError


def parse_floats(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def parse_ints(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,3,224,224, got {value!r}") from None


def parse_names(ctx, param, value):
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
    click.option(
        "--live-teacher",
        is_flag=True,
        default=None,
        help="the teacher's logits of each augmented batch (consistent teaching; one teacher pass a step), not "
        "its stored logits of the un-augmented images",
    ),
    click.option(
        "--amp",
        type=click.Choice(["bf16"]),
        help="forward passes in bfloat16 autocast, weights and losses float32 (2-2.7x faster on CPUs with AMX)",
    ),
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
    "live_teacher",
    "amp",
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

"""``edgekd bench`` and ``edgekd devices``: timing artifacts locally and on boards, and the tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgekd import api
from edgekd.bench.end_to_end import (
    DEFAULT_END_TO_END,
    END_TO_END_HEADERS,
    EndToEndSettings,
    end_to_end_line,
    end_to_end_rows,
)
from edgekd.bench.session import BenchSettings
from edgekd.cli.common import handle_errors, main
from edgekd.errors import ConfigError, EdgekdError, InputNotFoundError
from edgekd.report import LATENCY_HEADERS, latency_rows
from edgekd.ui import text_table


def bench_settings(
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


def bench_artifact(artifact, device, settings, quiet, inventory=None, accept_new=False):
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
    settings = bench_settings(artifacts[0], threads, warmup, iterations, time_budget, e2e)
    names = [d.strip() for d in device.split(",") if d.strip()]
    if len(names) == 1:
        bench_artifact(artifacts[0], names[0], settings, quiet, inventory, accept_new_host_key)
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

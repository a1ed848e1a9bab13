"""``edgekd val``, ``targets`` and ``inspect``: what a compiled detector scores, which targets exist, what a
model holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgekd import api
from edgekd.cli.common import handle_errors, main, parse_ints
from edgekd.ui import text_table


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
@click.option("--input-shape", callback=parse_ints)
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

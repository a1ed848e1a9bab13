"""``report.md`` and plots for people, rendered from the manifest and the stored bench results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.artifact import REPORT, read_manifest
from edgekd.bench.end_to_end import END_TO_END_HEADERS, end_to_end_line, end_to_end_rows
from edgekd.bench.session import load_results
from edgekd.ui import markdown_table


def _db(v) -> str:
    """A decibel figure; JSON keeps no infinity, so an SQNR of identical outputs arrives as None."""
    return "∞" if v is None else f"{v:.1f}"


def _r(v, digits):
    return None if v is None else round(v, digits)


def latency_rows(results: list[dict]) -> list[list[Any]]:
    """One row per result; a figure a runtime does not report (trtexec: std, RSS) shows as –."""
    rows = []
    for r in results:
        lat, mem = r["latency"], r.get("memory") or {}
        rows.append(
            [
                r["device"],
                r["runtime"]["name"],
                r["settings"]["threads"],
                lat.get("iterations"),
                _r(lat.get("p50_ms"), 3),
                _r(lat.get("p90_ms"), 3),
                _r(lat.get("p99_ms"), 3),
                _r(lat.get("mean_ms"), 3),
                _r(lat.get("std_ms"), 3),
                _r(lat.get("throughput_fps"), 1),
                _r(mem.get("peak_rss_mb"), 1),
            ]
        )
    return rows


LATENCY_HEADERS = [
    "device",
    "runtime",
    "threads",
    "iters",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "std ms",
    "fps",
    "peak RSS MB",
]


def plot_latencies(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["latencies_ms"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(range(1, len(lat) + 1), lat, lw=0.8)
    a.set_xlabel("iteration")
    a.set_ylabel("latency (ms)")
    a.set_title("per-iteration latency")
    b.hist(lat, bins=min(50, max(5, len(lat) // 4)))
    for q, style in (("p50_ms", "-"), ("p99_ms", "--")):
        b.axvline(result["latency"][q], color="k", ls=style, lw=0.8, label=q.replace("_ms", ""))
    b.set_xlabel("latency (ms)")
    b.set_ylabel("count")
    b.set_title("distribution")
    b.legend()
    fig.suptitle(
        f"{result['artifact']['target']} on {result['device']} ({result['runtime']['name']}, "
        f"{result['settings']['threads']} threads)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_report(artifact: str | Path) -> str:
    artifact = Path(artifact)
    m = read_manifest(artifact)
    lines = _header(m) + _io_section(m) + _passes_section(m) + _fidelity_section(m.get("fidelity"))
    lines += _quantization_section(m, artifact)
    lines += coverage_section(m.get("int8_coverage"))
    lines += speed_section(m.get("speed_check"))
    lines += precision_section(m.get("precision_search"))
    lines += budget_section(m.get("latency_budget"))
    acc = m.get("accuracy")
    if acc and acc.get("kind") == "detection":
        lines += _detection_section(acc)
    elif acc:
        lines += _accuracy_section(acc)
    lines += _latency_section(load_results(artifact))
    lines += [
        "## Files",
        "",
        markdown_table(
            ["file", "bytes", "sha256"], [[f["path"], f"{f['bytes']:,}", f["sha256"][:16] + "…"] for f in m["files"]]
        ),
        "",
    ]
    return "\n".join(lines)


def _header(m: dict) -> list[str]:
    lines = [
        f"# edgekd artifact: {m['target']['name']}",
        "",
        f"Created {m['created']} by edgekd {m['edgekd_version']}; backend {m['artifact']['backend']}, "
        f"precision {m['artifact']['precision']}; runtime file `{m['artifact']['model_file']}`.",
        "",
    ]
    src = m.get("source") or {}
    if src:
        lines += [f"Source model: `{src.get('model')}` ({src.get('kind')})", ""]
    prof = m.get("profile")
    if prof:
        lines += [
            "## Model",
            "",
            markdown_table(
                ["params", "MACs", "nodes"], [[f"{prof['params']:,}", f"{prof['macs']:,}", sum(prof["ops"].values())]]
            ),
            "",
        ]
    return lines


def _io_section(m: dict) -> list[str]:
    rows = [
        [
            "in" if i < len(m["inputs"]) else "out",
            t["name"],
            "×".join(map(str, t["shape"])),
            t["dtype"],
            t.get("layout"),
            t.get("quantization"),
        ]
        for i, t in enumerate(m["inputs"] + m["outputs"])
    ]
    lines = [
        "## Inputs and outputs",
        "",
        markdown_table(["", "name", "shape", "dtype", "layout", "quantization"], rows),
        "",
    ]
    pre = m["inputs"][0]["preprocessing"] if m["inputs"] else None
    if pre:
        lines += [
            f"Preprocessing: resize to {pre['size'][0]}×{pre['size'][1]}, {pre['channel_order']}, "
            f"×{pre['scale']:.6g}, mean {pre['mean']}, std {pre['std']}, {pre['layout']}.",
            "",
        ]
    return lines + _nms_line(m.get("nms"))


def _nms_line(nms: dict | None) -> list[str]:
    if not nms:
        return []
    if nms["where"] == "graph":
        return [
            f"NMS: in the artifact (ONNX NonMaxSuppression after the float decode; score > {nms['conf']}, "
            f"IoU > {nms['iou']} suppressed, at most {nms['max_per_class']} per class): output `{nms['output']}` "
            "holds (image, class, box) rows into `boxes` and `scores`.",
            "",
        ]
    hint = " (`--nms` would put it in the artifact)" if nms.get("graph_nms_available") else ""
    return [f"NMS: in the runner, numpy (`{nms['module']}`){hint}.", ""]


def _passes_section(m: dict) -> list[str]:
    rows = [
        [
            p["name"],
            round(p["seconds"], 3) if p["seconds"] is not None else None,
            p["changed"],
            ", ".join(f"{k}={v}" for k, v in p["metrics"].items() if not isinstance(v, dict)),
        ]
        for p in m["passes"]
    ]
    return ["## Passes", "", markdown_table(["pass", "seconds", "changed", "metrics"], rows), ""]


def _fidelity_section(fid: dict | None) -> list[str]:
    if not fid:
        return []
    row = [
        f"{fid['max_abs_error']:.3g}",
        f"{fid['mean_abs_error']:.3g}",
        f"{fid['relative_error']:.3g}",
        fid.get("top1_agreement"),
    ]
    lines = [
        "## Fidelity",
        "",
        f"Artifact vs {fid['reference']} on {fid['samples']} {fid['inputs']}:",
        "",
        markdown_table(["max abs error", "mean abs error", "relative error", "top-1 agreement"], [row]),
        "",
    ]
    far = fid.get("vs_float")
    if far:
        lines += [
            f"Past the simulation's limits, so measured against the float model too: SQNR vs float, artifact "
            f"{far['artifact_sqnr_db']} dB, simulation "
            f"{far['simulation_sqnr_db']} dB; artifact vs simulation {far['artifact_vs_simulation_sqnr_db']} dB. "
            "The integer kernels round once per layer; the artifact is as close to float as the simulation.",
            "",
        ]
    return lines


def _accuracy_section(acc: dict) -> list[str]:
    if acc.get("metric") == "agreement":
        return _agreement_section(acc)
    header = ["float top-1 %", "artifact top-1 %", "drop pt"]
    row = [f"{100 * acc['float_top1']:.2f}", f"{100 * acc['artifact_top1']:.2f}", f"{acc['drop_pt']:.2f}"]
    ci = acc.get("drop_ci95_pt")
    if ci is not None:
        header += ["images lost / gained", "drop, 95 % interval"]
        row += [f"{acc['images_lost']} / {acc['images_gained']}", f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"]
    lines = [
        "## Accuracy",
        "",
        f"Top-1 on {acc['samples']} images of `{acc['source']}`:",
        "",
        markdown_table(header, [row]),
        "",
    ]
    if ci is not None:
        lines += [
            "Lost: images the float model gets right and the artifact wrong; gained: the reverse. Only those carry "
            "the drop: " + ("within its interval it may be 0 (noise)." if ci[0] <= 0 <= ci[1] else "it is real."),
            "",
        ]
    return lines + _speed_rule_lines(acc.get("speed"))


def _agreement_section(acc: dict) -> list[str]:
    lines = [
        "## Accuracy",
        "",
        f"`{acc['source']}` has no class subfolders, so the float model's own top-1 is the label: the artifact "
        f"agrees with it on **{100 * acc['artifact_top1']:.2f} %** of {acc['samples']} images "
        f"({acc.get('images_lost', '–')} differ; a drop of {acc['drop_pt']:.2f} pt).",
        "",
    ]
    return lines + _speed_rule_lines(acc.get("speed"))


def _speed_rule_lines(sp: dict | None) -> list[str]:
    if not sp:
        return []
    verdict = "meets" if sp["met"] else "does NOT meet"
    return [
        f"Speed-up on {sp['measured_on']}: {sp['speedup']:.2f}× (see Speed). This {verdict} the rule "
        f"that each point of accuracy lost should buy ≥ 2× speed (needed {sp['needed_speedup']:.2f}×).",
        "",
    ]


def _latency_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    lines = ["## Latency", "", markdown_table(LATENCY_HEADERS, latency_rows(results)), ""]
    lines += [f"![latency on {r['device']}]({r['plot']})" for r in results if r.get("plot")]
    e2e = end_to_end_rows(results)
    if e2e:
        lines += ["", "End to end, frame to detections (preprocess + model + decode/NMS):", ""]
        lines += [markdown_table(END_TO_END_HEADERS, e2e), ""]
        lines += [f"- {end_to_end_line(r)}" for r in results if r.get("end_to_end")]
    return lines + [""]


def plot_sensitivity(sensitivity: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A non-finite SQNR (an output equal to float's, or all zero) is stored as null: drawn at the clamp.
    names = [s["layer"] + ("" if s["sqnr_db"] is not None else " (not finite)") for s in sensitivity][::-1]
    values = [120.0 if s["sqnr_db"] is None else min(s["sqnr_db"], 120.0) for s in sensitivity][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(names) + 1.2))
    ax.barh(range(len(names)), values)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("output SQNR (dB) with only this layer in int8 — lower is more sensitive")
    ax.set_title("per-layer quantization sensitivity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _quantization_section(m: dict, artifact: Path) -> list[str]:
    q = m.get("quantization")
    if not q:
        return []
    lines = [
        "## Quantization",
        "",
        f"Activations: {q['activation_scheme']}; weights: {q['weights']}; bias: {q['bias']}.",
        "",
    ]
    if q.get("why"):
        lines += [f"Why: {' '.join(q['why'].split())}", ""]
    cal = m.get("calibration") or {}
    if cal:
        lines += [
            f"Calibrated with {cal['method']} on {cal['samples']} samples of `{cal['source']}` "
            f"(sha256 {cal['sha256'][:16]}…).",
            "",
        ]
    qat = m.get("qat")
    if q.get("ranges_from") == "qat" and qat:
        lines += [
            f"Ranges and weights from quantization-aware training ({qat['trigger']}); the calibrated ranges "
            "were its starting point (see Quantization-aware training below).",
            "",
        ]
    err = q.get("error_vs_float")
    if err:
        lines += [
            f"Simulation vs float on {err.get('samples', 'calibration')} samples: "
            f"output SQNR {_db(err['sqnr_db'])} dB, "
            f"top-1 agreement {err.get('top1_agreement', '–')}.",
            "",
        ]
    lines += [f"Layers kept in float: {', '.join(q['layers_in_float']) or 'none'}.", ""]
    sens = q.get("sensitivity")
    if sens:
        png = plot_sensitivity(sens, artifact / "sensitivity.png")
        lines += [
            "Most sensitive layers (output SQNR when only that layer is int8):",
            "",
            markdown_table(["layer", "SQNR dB"], [[s["layer"], _db(s["sqnr_db"])] for s in sens[:10]]),
            "",
            f"![sensitivity]({png.name})",
            "",
        ]
    budget = q.get("accuracy_budget")
    if budget:
        metric = budget.get("metric", "top-1")

        def table(steps):
            return markdown_table(
                ["layers in float", f"int8 {metric} %", "drop pt"],
                [[s["kept_float"], f"{100 * s['top1']:.2f}", f"{s['drop_pt']:.2f}"] for s in steps],
            )

        lines += [
            f"Accuracy budget {budget['max_drop_pt']} pt (float {metric} {100 * budget['float_top1']:.2f} %):",
            "",
        ]
        if budget.get("before_qat"):
            lines += [
                "Post-training quantization with layers returned to float missed it:",
                "",
                table(budget["before_qat"]),
                "",
                "so quantization-aware training ran (fallback), and the search was repeated:",
                "",
            ]
        lines += [table(budget["steps"]), ""]
        counts = [s["kept_float"] for s in budget["steps"]]
        if any(b < a for a, b in zip(counts, counts[1:])):
            lines += [
                "Once the budget was met, each layer returned to float went back to int8, the least sensitive "
                "first, where the budget held without it (the rows after the most in float).",
                "",
            ]
    return lines + _qat_section(m)


def _qat_section(m: dict) -> list[str]:
    qat = m.get("qat")
    if not qat:
        return []
    pct = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    moved = qat.get("ranges_moved") or {}
    return [
        "## Quantization-aware training",
        "",
        f"Why: {qat['trigger']}. {qat['epochs']} epochs on {qat['train_samples']} images of `{qat['data']}`, "
        f"KD from the float graph, ranges {'learned (LSQ-style)' if qat['ranges'] == 'learn' else 'EMA-updated'} "
        f"from the calibration, BatchNorm folded as deployed.",
        "",
        markdown_table(
            ["holdout top-1 %", "float", "int8 before QAT", "int8 after QAT"],
            [["", pct(qat["float_top1"]), pct(qat["ptq_top1"]), pct(qat["qat_top1"])]],
        ),
        "",
        f"Trained: {qat['sites'].get('activations_trained', 0)} activation ranges "
        f"(median width change {100 * moved.get('median_width_change', 0):.2f} %), "
        f"{qat['sites'].get('weights', 0)} int8 weights, {qat['sites'].get('biases_int32', 0)} int32 biases.",
        "",
    ]


def precision_headers(record: dict) -> list[str]:
    metric = record.get("metric", "top-1")
    return ["precision", f"{metric} %", "drop pt", "p50 ms", "speed-up vs fp32", "≥ 2× per point lost"]


BUDGET_HEADERS = ["student", "MACs", "p50 ms", "within budget", "proxy top-1 %"]


def precision_rows(record: dict) -> list[list[Any]]:
    rows = []
    for c in record["candidates"]:
        s = c["speedup_vs_float"]
        rule = c.get("speedup_per_point_met")
        rows.append(
            [
                c["precision"] + (" (shipped)" if c["precision"] == record["chosen"] else ""),
                "–" if c["top1"] is None else f"{100 * c['top1']:.2f}",
                "–" if c["drop_pt"] is None else f"{c['drop_pt']:.2f}",
                "–" if c["p50_ms"] is None else f"{c['p50_ms']:.3f}",
                c["error"] or ("–" if s is None else f"{s['median']:.2f}× [{s['min']:.2f}, {s['max']:.2f}]"),
                "–" if rule is None else ("yes" if rule else "no"),
            ]
        )
    return rows


def budget_rows(record: dict) -> list[list[Any]]:
    return [
        [
            c["student"] + (" (chosen)" if c["student"] == record["chosen"] else ""),
            "–" if c["macs"] is None else f"{c['macs'] / 1e6:.2f} M",
            "–" if c["p50_ms"] is None else f"{c['p50_ms']:.3f}",
            c["error"] or ("yes" if c["fits"] else "no"),
            "–" if c["proxy_top1"] is None else f"{c['proxy_top1']:.2f}",
        ]
        for c in record["candidates"]
    ]


def precision_section(rec: dict | None) -> list[str]:
    if not rec:
        return []
    return [
        "## Precision search",
        "",
        f"`--precision auto`: every precision compiled, scored on the eval set and timed on `{rec['device']}` "
        f"({rec['repeats']} interleaved repeats; speed-up = float's latency over the candidate's, median "
        f"[min, max] of the repeats); budget {rec['max_drop_pt']} pt of {rec.get('metric', 'top-1')}.",
        "",
        markdown_table(precision_headers(rec), precision_rows(rec)),
        "",
        f"Shipped **{rec['chosen']}**: {rec['why']}.",
        "",
    ]


def budget_section(rec: dict | None) -> list[str]:
    if not rec:
        return []
    return [
        "## Latency budget",
        "",
        f"Students compiled untrained at {rec['precision'] or 'the target default'} precision and timed on "
        f"`{rec['device']}` ({rec['repeats']} interleaved repeats, median p50); budget {rec['budget_ms']:g} ms. "
        f"Those within it were ranked by holdout top-1 after {rec['proxy_epochs']} epoch(s) of distillation; the "
        f"winner was distilled for {rec['epochs']} epoch(s).",
        "",
        markdown_table(BUDGET_HEADERS, budget_rows(rec)),
        "",
        f"Chosen: **{rec['chosen']}**.",
        "",
    ]


SLOWER = (
    "**WARNING: this int8 artifact is slower than the float model on {where}** (in every repeat). "
    "Ship float (`--precision fp32`), or let `--precision auto` time both and choose."
)


def speed_section(sc: dict | None) -> list[str]:
    if not sc:
        return []
    s = sc["speedup"]
    lines = [
        "## Speed",
        "",
        f"int8 vs float on {sc['measured_on']} ({sc['runtime']}, {sc['threads']} threads, the same "
        f"backend's float artifact): float {min(sc['float_ms']):.3f}–{max(sc['float_ms']):.3f} ms, int8 "
        f"{min(sc['artifact_ms']):.3f}–{max(sc['artifact_ms']):.3f} ms; speed-up **{s['median']:.2f}×** "
        f"[{s['min']:.2f}, {s['max']:.2f}] over {s['repeats']} interleaved repeats.",
        "",
    ]
    if sc["int8_slower"]:
        lines += [SLOWER.format(where=sc["measured_on"]), ""]
    return lines


def coverage_section(cov: dict | None) -> list[str]:
    if not cov:
        return []
    lines = ["## What runs in int8", ""]
    if not cov["measured"]:
        return lines + [f"Not read: {cov['note']}.", ""]
    share = cov["coverage_macs"]
    lines += [
        f"As {cov['backend']}'s runtime compiled the artifact: {cov['int8_layers']} of {cov['layers']} layers on "
        f"integer kernels, **{100 * share:.1f} % of the multiply-accumulates in int8**"
        + (" (by layer count: no layer has MACs)." if not cov["macs"] else "."),
        "",
    ]
    islands = cov["float_islands"]
    if not islands:
        return lines + ["No float islands: every layer reads and writes integers.", ""]
    rows = [
        [
            i + 1,
            ", ".join(island["layers"][:4]) + (", …" if len(island["layers"]) > 4 else ""),
            ", ".join(sorted(set(island["ops"]))),
            f"{island['macs']:,}",
        ]
        for i, island in enumerate(islands)
    ]
    return lines + [
        f"Float islands ({len(islands)}; dequantized into, computed in float, quantized out of):",
        "",
        markdown_table(["#", "layers", "ops", "MACs"], rows),
        "",
    ]


def write_report(artifact: str | Path) -> Path:
    path = Path(artifact) / REPORT
    path.write_text(render_report(artifact))
    return path


def _detection_section(acc: dict) -> list[str]:
    rows = [
        [
            name,
            f"{acc[name]['map50_95']:.4f}",
            f"{acc[name]['map50']:.4f}",
            f"{acc[name]['precision']:.3f}",
            f"{acc[name]['recall']:.3f}",
        ]
        for name in ("float", "simulation", "artifact")
        if name in acc
    ]
    lines = [
        "## Accuracy (detection)",
        "",
        f"COCO mAP (faster-coco-eval, ≤ {acc['nms']['max_det']} detections per image, NMS IoU {acc['nms']['iou']}) "
        f"on {acc['images']} images ({acc['objects']} objects) of `{acc['source']}` [{acc['split']}]; precision and "
        f"recall at confidence {acc['artifact' if 'artifact' in acc else 'float']['conf']}:",
        "",
        markdown_table(["model", "mAP50-95", "mAP50", "precision", "recall"], rows),
        "",
    ]
    if "drop_map50_pt" in acc:
        lines += [f"mAP50 drop of the artifact against the float model: {acc['drop_map50_pt']:.2f} pt.", ""]
    if acc.get("label_issues"):
        lines += ["Labels the reader skipped: " + ", ".join(f"{n} {k}" for k, n in acc["label_issues"].items()), ""]
    if acc.get("picture"):
        lines += [
            "The artifact's detections (red, confidence ≥ 0.25) over the labels (green) on the first images:",
            "",
            f"![detections]({acc['picture']})",
            "",
        ]
    return lines

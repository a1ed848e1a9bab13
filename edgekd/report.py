"""``report.md`` and plots for people, rendered from the manifest and the stored bench results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.artifact import REPORT, read_manifest
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
        rows.append([r["device"], r["runtime"]["name"], r["settings"]["threads"], lat.get("iterations"),
                     _r(lat.get("p50_ms"), 3), _r(lat.get("p90_ms"), 3), _r(lat.get("p99_ms"), 3),
                     _r(lat.get("mean_ms"), 3), _r(lat.get("std_ms"), 3), _r(lat.get("throughput_fps"), 1),
                     _r(mem.get("peak_rss_mb"), 1)])
    return rows


LATENCY_HEADERS = ["device", "runtime", "threads", "iters", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "fps",
                   "peak RSS MB"]


def plot_latencies(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["latencies_ms"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(range(1, len(lat) + 1), lat, lw=0.8)
    a.set_xlabel("iteration"); a.set_ylabel("latency (ms)"); a.set_title("per-iteration latency")
    b.hist(lat, bins=min(50, max(5, len(lat) // 4)))
    for q, style in (("p50_ms", "-"), ("p99_ms", "--")):
        b.axvline(result["latency"][q], color="k", ls=style, lw=0.8, label=q.replace("_ms", ""))
    b.set_xlabel("latency (ms)"); b.set_ylabel("count"); b.set_title("distribution"); b.legend()
    fig.suptitle(f"{result['artifact']['target']} on {result['device']} ({result['runtime']['name']}, "
                 f"{result['settings']['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_report(artifact: str | Path) -> str:
    artifact = Path(artifact)
    m = read_manifest(artifact)
    lines = [f"# edgekd artifact: {m['target']['name']}", "",
             f"Created {m['created']} by edgekd {m['edgekd_version']}; backend {m['artifact']['backend']}, "
             f"precision {m['artifact']['precision']}; runtime file `{m['artifact']['model_file']}`.", ""]
    src = m.get("source") or {}
    if src:
        lines += [f"Source model: `{src.get('model')}` ({src.get('kind')})", ""]
    prof = m.get("profile")
    if prof:
        lines += ["## Model", "", markdown_table(["params", "MACs", "nodes"],
                                                 [[f"{prof['params']:,}", f"{prof['macs']:,}", sum(prof['ops'].values())]]), ""]
    lines += ["## Inputs and outputs", "",
              markdown_table(["", "name", "shape", "dtype", "layout", "quantization"],
                             [["in" if i < len(m["inputs"]) else "out", t["name"], "×".join(map(str, t["shape"])),
                               t["dtype"], t.get("layout"), t.get("quantization")]
                              for i, t in enumerate(m["inputs"] + m["outputs"])]), ""]
    pre = m["inputs"][0]["preprocessing"] if m["inputs"] else None
    if pre:
        lines += [f"Preprocessing: resize to {pre['size'][0]}×{pre['size'][1]}, {pre['channel_order']}, "
                  f"×{pre['scale']:.6g}, mean {pre['mean']}, std {pre['std']}, {pre['layout']}.", ""]
    lines += ["## Passes", "", markdown_table(
        ["pass", "seconds", "changed", "metrics"],
        [[p["name"], round(p["seconds"], 3) if p["seconds"] is not None else None, p["changed"],
          ", ".join(f"{k}={v}" for k, v in p["metrics"].items() if not isinstance(v, dict))] for p in m["passes"]]), ""]
    fid = m.get("fidelity")
    if fid:
        lines += ["## Fidelity", "", f"Artifact vs {fid['reference']} on {fid['samples']} {fid['inputs']}:", "",
                  markdown_table(["max abs error", "mean abs error", "relative error", "top-1 agreement"],
                                 [[f"{fid['max_abs_error']:.3g}", f"{fid['mean_abs_error']:.3g}",
                                   f"{fid['relative_error']:.3g}", fid.get("top1_agreement")]]), ""]
    lines += _quantization_section(m, artifact)
    acc = m.get("accuracy")
    if acc:
        lines += ["## Accuracy", "", f"Top-1 on {acc['samples']} images of `{acc['source']}`:", "",
                  markdown_table(["float top-1 %", "artifact top-1 %", "drop pt"],
                                 [[f"{100 * acc['float_top1']:.2f}", f"{100 * acc['artifact_top1']:.2f}", f"{acc['drop_pt']:.2f}"]]), ""]
        sp = acc.get("speed")
        if sp:
            verdict = "meets" if sp["met"] else "does NOT meet"
            lines += [f"Speed on {sp['measured_on']} (ONNX Runtime, median of 50): float {sp['float_ms']:.3f} ms, artifact "
                      f"{sp['artifact_ms']:.3f} ms ({sp['speedup']:.2f}×). This {verdict} the rule that each point of "
                      f"accuracy lost should buy ≥ 2× speed (needed {sp['needed_speedup']:.2f}×).", ""]
    results = load_results(artifact)
    if results:
        lines += ["## Latency", "", markdown_table(LATENCY_HEADERS, latency_rows(results)), ""]
        for r in results:
            png = r.get("plot")
            if png:
                lines.append(f"![latency on {r['device']}]({png})")
        lines.append("")
    lines += ["## Files", "", markdown_table(["file", "bytes", "sha256"],
                                             [[f["path"], f"{f['bytes']:,}", f["sha256"][:16] + "…"] for f in m["files"]]), ""]
    return "\n".join(lines)


def plot_sensitivity(sensitivity: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["layer"] for s in sensitivity][::-1]
    values = [min(s["sqnr_db"], 120.0) for s in sensitivity][::-1]
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
    lines = ["## Quantization", "", f"Activations: {q['activation_scheme']}; weights: {q['weights']}; bias: {q['bias']}.", ""]
    if q.get("why"):
        lines += [f"Why: {' '.join(q['why'].split())}", ""]
    cal = m.get("calibration") or {}
    if cal:
        lines += [f"Calibrated with {cal['method']} on {cal['samples']} samples of `{cal['source']}` "
                  f"(sha256 {cal['sha256'][:16]}…).", ""]
    qat = m.get("qat")
    if q.get("ranges_from") == "qat" and qat:
        lines += [f"Ranges and weights from quantization-aware training ({qat['trigger']}); the calibrated ranges "
                  "were its starting point (see Quantization-aware training below).", ""]
    err = q.get("error_vs_float")
    if err:
        lines += [f"Simulation vs float on {err.get('samples', 'calibration')} samples: output SQNR {_db(err['sqnr_db'])} dB, "
                  f"top-1 agreement {err.get('top1_agreement', '–')}.", ""]
    lines += [f"Layers kept in float: {', '.join(q['layers_in_float']) or 'none'}.", ""]
    sens = q.get("sensitivity")
    if sens:
        png = plot_sensitivity(sens, artifact / "sensitivity.png")
        lines += ["Most sensitive layers (output SQNR when only that layer is int8):", "",
                  markdown_table(["layer", "SQNR dB"], [[s["layer"], _db(s["sqnr_db"])] for s in sens[:10]]), "",
                  f"![sensitivity]({png.name})", ""]
    budget = q.get("accuracy_budget")
    if budget:
        table = lambda steps: markdown_table(  # noqa: E731
            ["layers in float", "int8 top-1 %", "drop pt"],
            [[s["kept_float"], f"{100 * s['top1']:.2f}", f"{s['drop_pt']:.2f}"] for s in steps])
        lines += [f"Accuracy budget {budget['max_drop_pt']} pt (float top-1 {100 * budget['float_top1']:.2f} %):", ""]
        if budget.get("before_qat"):
            lines += ["Post-training quantization with layers returned to float missed it:", "",
                      table(budget["before_qat"]), "",
                      "so quantization-aware training ran (fallback), and the search was repeated:", ""]
        lines += [table(budget["steps"]), ""]
    return lines + _qat_section(m)


def _qat_section(m: dict) -> list[str]:
    qat = m.get("qat")
    if not qat:
        return []
    pct = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    moved = qat.get("ranges_moved") or {}
    return ["## Quantization-aware training", "",
            f"Why: {qat['trigger']}. {qat['epochs']} epochs on {qat['train_samples']} images of `{qat['data']}`, "
            f"KD from the float graph, ranges {'learned (LSQ-style)' if qat['ranges'] == 'learn' else 'EMA-updated'} "
            f"from the calibration, BatchNorm folded as deployed.", "",
            markdown_table(["holdout top-1 %", "float", "int8 before QAT", "int8 after QAT"],
                           [["", pct(qat["float_top1"]), pct(qat["ptq_top1"]), pct(qat["qat_top1"])]]), "",
            f"Trained: {qat['sites'].get('activations_trained', 0)} activation ranges "
            f"(median width change {100 * moved.get('median_width_change', 0):.2f} %), "
            f"{qat['sites'].get('weights', 0)} int8 weights, {qat['sites'].get('biases_int32', 0)} int32 biases.", ""]


def write_report(artifact: str | Path) -> Path:
    path = Path(artifact) / REPORT
    path.write_text(render_report(artifact))
    return path

"""docs/model-coverage.md from the results of bench/model_coverage.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

TEACHER_RECORD = Path(__file__).resolve().parents[1] / "examples" / "cifar10" / "teacher.json"
MIN_TOP1 = 0.99  # issue 11's fidelity targets for int8 against float
MIN_SQNR_DB = 20.0


def _short(reason: str) -> str:
    """The refusal without the pass preamble: what failed and why, one line."""
    text = reason.replace("\n", " ").replace("|", "/")
    if "): " in text and text.startswith("pass '"):
        text = text.split("): ", 1)[1]
    return text[:150] + ("…" if len(text) > 150 else "")


def _meets(cell: dict) -> bool | None:
    f = cell.get("vs_float")
    if cell["status"] != "ok" or not f:
        return None
    if "top1_agreement" in f:
        return f["top1_agreement"] >= MIN_TOP1
    return f["sqnr_db"] >= MIN_SQNR_DB


def cell_text(cell: dict, precision: str) -> str:
    if cell["status"] != "ok":
        return f"✗ {_short(cell['reason'])}"
    f = cell.get("vs_float") or {}
    parts = []
    if "top1_agreement" in f:
        parts.append(f"{100 * f['top1_agreement']:.1f} %")
    sqnr = f.get("sqnr_db")
    if sqnr is not None:
        parts.append("∞ dB" if not math.isfinite(sqnr) else f"{sqnr:.0f} dB")
    parts.append(f"{cell['seconds']:.0f} s")
    mark = "✓" if precision != "int8" or _meets(cell) is not False else "✓ᶠ"
    return f"{mark} " + " · ".join(parts)


RESUMES = "the command above resumes them."


def _totals_section(results: dict, precisions: list[str], pending: int, resumes: str = RESUMES) -> list[str]:
    """The page's totals: what is still planned, then each precision's cells."""
    lines = ["## Totals", ""]
    if pending:
        lines += [f"{pending} planned cells are not compiled yet; {resumes}", ""]
    for precision in precisions:
        lines += _totals(results, precision)
    return lines


def _totals(results: dict, precision: str) -> list[str]:
    cells = {k: c for k, c in results.items() if k.endswith(f"|{precision}")}
    ok = [c for c in cells.values() if c["status"] == "ok"]
    refused = [c for c in cells.values() if c["status"] != "ok"]
    unnamed = [k for k, c in cells.items() if c["status"] != "ok" and not c.get("named", True)]
    met = [c for c in ok if _meets(c)]
    judged = [c for c in ok if _meets(c) is not None]
    share = 100 * len(ok) / len(cells) if cells else 0.0
    return [
        f"- **{precision}: {len(ok)} of {len(cells)} cells ({share:.0f} %) compile with verify passing**; "
        f"{len(refused)} refused, {len(unnamed)} of them without a named edgekd error"
        + (f" ({', '.join(unnamed[:5])})" if unnamed else "")
        + (
            f"; fidelity target met (top-1 ≥ {100 * MIN_TOP1:.0f} % / SQNR ≥ {MIN_SQNR_DB:.0f} dB) in "
            f"{len(met)} of {len(judged)} compiled cells"
            if precision == "int8"
            else ""
        )
    ]


CONVERGED_MODELS = ("cifar10-teacher/", "people-det-teacher/")  # trained to convergence on real data
RANDOM_WEIGHTS = ("unet/", "ultralytics-style/")  # random weights, BatchNorm recalibrated


WEIGHT_KINDS = (
    "trained to convergence",
    "stock, trained briefly",
    "stock, random weights",
    "light, random weights rescaled",
    "light, constant weights (degenerate)",
)


def weights_kind(model: str) -> str:
    if model.startswith(CONVERGED_MODELS):
        return WEIGHT_KINDS[0]
    if model.startswith("light/"):
        return WEIGHT_KINDS[3] if model.endswith("(realistic)") else WEIGHT_KINDS[4]
    return WEIGHT_KINDS[2] if model.startswith(RANDOM_WEIGHTS) else WEIGHT_KINDS[1]


def _fidelity_by_weights(results: dict) -> list[str]:
    """The int8 fidelity target per kind of weights: it measures the compiler only where the float model's
    decisions have a trained model's margins."""
    tally: dict[str, list[int]] = {}
    for key, cell in results.items():
        if key.endswith("|int8") and (met := _meets(cell)) is not None:
            counts = tally.setdefault(weights_kind(key.split("|")[0]), [0, 0])
            counts[0] += met
            counts[1] += 1
    parts = [f"{kind} {tally[kind][0]} of {tally[kind][1]}" for kind in WEIGHT_KINDS if kind in tally]
    return ["- int8 fidelity target met, by how the weights were made: " + "; ".join(parts)] if parts else []


def _before_after(results: dict, before: dict) -> list[str]:
    names = ("resnet50", "densenet121", "inception_v1", "shufflenet", "squeezenet")
    cells = [c for k, c in results.items() if k.endswith("|int8") and k.split("|")[0] in {f"light/{n}" for n in names}]
    ok = sum(c["status"] == "ok" for c in cells)
    now = (
        f"**{ok} of {len(cells)}** now"
        if cells
        else f"not compiled in this run (it stopped before them); {before['last']}"
    )
    return [
        f"- Before/after for the issue's measured cells ({before['cells']}): "
        f"**{before['int8_ok']} of {before['int8_cells']}** on main {before['commit']}, {now}."
    ]


def _matrix(results: dict, targets: list[str], precision: str) -> list[str]:
    models = sorted({k.split("|")[0] for k in results if k.endswith(f"|{precision}")})
    lines = ["| model | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for model in models:
        row = [
            cell_text(results[key], precision) if (key := f"{model}|{t}|{precision}") in results else "–"
            for t in targets
        ]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return lines


def _classifiers(results: dict, context: dict[str, dict]) -> list[str]:
    """Each trained classifier's float confidence, edgekd's int8 agreement over the targets and the peer's
    on the same graph: int8 noise flips the top-1 of images whose two best logits nearly tie."""
    if not context:
        return []
    lines = [
        "## Classifier fidelity in context",
        "",
        "Top-1 agreement counts the predictions int8 noise flips, and only images whose two best logits nearly "
        "tie can flip: a briefly trained model has many. Per classifier (static graphs): its float model's mean "
        "top-1 softmax probability on the fidelity images; edgekd's int8 agreement, lowest and median over the "
        "targets, and its onnx-cpu SQNR; and NNCF's `nncf.quantize` on the same ONNX with the same calibration "
        "images (its ONNX backend's QDQ graph in ONNX Runtime), scored on the same images.",
        "",
        "| classifier | float mean top-1 probability | edgekd int8 agreement, lowest / median | edgekd onnx-cpu "
        "SQNR | NNCF agreement · SQNR |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, c in sorted(context.items(), key=lambda kv: -kv[1]["confidence"]):
        cells = {
            k.split("|")[1]: cell["vs_float"]
            for k, cell in results.items()
            if k.startswith(f"{model}|") and k.endswith("|int8") and cell["status"] == "ok" and cell.get("vs_float")
        }
        if not cells:
            continue  # not compiled by edgekd in this run: nothing to compare
        agree = _int8_agreements(results, model)
        shown = f"{100 * agree[0]:.1f} % / {100 * agree[len(agree) // 2]:.1f} %"
        ort = f"{cells['onnx-cpu']['sqnr_db']:.1f} dB" if "onnx-cpu" in cells else "–"
        lines.append(f"| {model} | {c['confidence']:.2f} | {shown} | {ort} | {_peer_text(c, 1)} |")
    return lines + ["", *_converged_flips(results), ""]


def _peer_text(context: dict, decimals: int) -> str:
    """NNCF's int8 of a classifier: top-1 agreement · SQNR, its error, or – where it was not run."""
    peer = context.get("nncf")
    if peer is None:
        return "–"
    if "error" in peer:
        return peer["error"]
    return f"{100 * peer['top1_agreement']:.1f} % · {peer['sqnr_db']:.{decimals}f} dB"


def _int8_agreements(results: dict, model: str) -> list[float]:
    """The model's int8 top-1 agreements with float over the targets where it compiled, lowest first."""
    return sorted(
        cell["vs_float"]["top1_agreement"]
        for key, cell in results.items()
        if key.startswith(f"{model}|") and key.endswith("|int8") and cell["status"] == "ok" and cell.get("vs_float")
    )


CONVERGED_CLASSIFIER = "cifar10-teacher/opset17"


def _converged_flips(results: dict) -> list[str]:
    """Why the converged classifier's lowest int8 agreement is where it is, from its cells' recorded flips."""
    cells = {
        k.split("|")[1]: c["vs_float"]
        for k, c in results.items()
        if k == f"{CONVERGED_CLASSIFIER}|{k.split('|')[1]}|int8" and c["status"] == "ok" and "flips" in c["vs_float"]
    }
    if not cells:
        return []
    target, worst = min(cells.items(), key=lambda kv: kv[1]["top1_agreement"])
    flips = worst["flips"]
    if not flips["images"]:
        return []
    grid = (
        f"{target} writes the logits in int8, here on a {flips['logit_step']:.2g} grid"
        if flips["logit_step"]
        else f"{target} keeps the logits float"
    )
    text = (
        f"The converged teacher's lowest agreement is {target}'s ({100 * worst['top1_agreement']:.1f} %): {grid}. "
        f"Of its {len(flips['images'])} flips in {worst['images']} images, the float model's two best logits were "
        f"{flips['float_margin'][0]:.2g} to {flips['float_margin'][1]:.2g} apart"
    )
    if flips["tied"]:
        text += f", and {flips['tied']} are exact ties in the artifact's logits (the first index wins)"
    others = [
        f"{t} flips {len(f['flips']['images'])} ({len(set(f['flips']['images']) & set(flips['images']))} of them "
        "the same images)"
        for t, f in sorted(cells.items())
        if t != target and f["flips"]["logit_step"] is None
    ]
    return [text + (f"; where the logits stay float, {', '.join(others)}." if others else ".")]


def _refusals(results: dict) -> list[str]:
    """Each distinct refusal once, with the models and targets it hit and the full message."""
    seen: dict[str, list[str]] = {}
    for key, c in results.items():
        if c["status"] != "ok":
            seen.setdefault(c["reason"], []).append(key.replace("|", " · "))
    lines = []
    for reason, keys in sorted(seen.items(), key=lambda kv: -len(kv[1])):
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        lines += [f"- {', '.join(keys[:4])}{more}:", "  ```", *[f"  {r}" for r in reason.splitlines()], "  ```"]
    return lines


# Where a target's cells lagged the others' for a reason in edgekd's own graph, not the model's margins.
QUANTIZER_FINDINGS = [
    "## What the matrix found in edgekd's own quantization",
    "",
    "A target whose cells sit well below the other targets' on the same model points at edgekd, not at the "
    "model's margins. Found that way, and fixed (figures: int8 against float, before → after, same images):",
    "",
    "- **One int8 grid over a concatenation of unlike channels** (DenseNet on rpi4, whose full-int8 "
    "concatenation puts every input on its output's grid): the stem's channels span ±3 beside the growth "
    "convolutions' ±20, and the BatchNormalization after the concatenation multiplies them by up to 11. The "
    "`equalize` pass (`edgekd/quant/equalize.py`) multiplies each channel at the convolution that makes it "
    "and divides it out at every per-channel Mul that reads it, so they share one range; the float function "
    "is unchanged. densenet × rpi4: 15.8 → 24.9 dB, top-1 agreement 83.0 → 95.8 %; light DenseNet-121 "
    "(realistic) × rpi4 11.6 → 15.8 dB, 71 → 84 %, × onnx-cpu 16.6 → 17.6 dB, 84 → 90 %. Targets that "
    "quantize only the convolutions' inputs (openvino-cpu, jetson-xavier, ascend310) put no grid there and "
    "are unchanged.",
    "- **LayerNorm written out below opset 17** (the ViT and ConvNeXt exported at opsets 11 and 13): each "
    "primitive's output got a grid, so the mean and variance were rounded, where the opset-17 export's fused "
    "LayerNormalization got none. canonicalize now fuses the primitives back (raising the opset to 17 where "
    "the target's range allows). vit × onnx-cpu 22.3 → 28.3 dB, 93.8 → 97.4 %; × openvino-cpu 26.2 → "
    "33.2 dB, 95.0 → 97.8 %; convnext × onnx-cpu 29.9 → 34.9 dB, × openvino-cpu 30.8 → 36.2 dB: the opset "
    "11/13 rows now match opset 17's.",
    "",
]

# What the matrix found the runtimes computing differently from the graph, and what edgekd does about it.
RUNTIME_FINDINGS = [
    "## What the runtimes compute differently",
    "",
    "A refused verify names the layer where the runtime's own activations leave the reference's (read out of "
    "ONNX Runtime, OpenVINO and LiteRT at every Q/DQ pair of an int8 graph, at every node of a float one; "
    "`edgekd/runtime/divergence.py`), or says that the difference grew layer by layer. Found that way:",
    "",
    "- **OpenVINO 2026.4, int8 grouped 1×1 convolutions with more than 64 input channels per group (not a "
    "multiple of 64)**, on the Intel AVX-512-VNNI CPU of these runs (exact on an AMD EPYC, Zen 4): the CPU "
    "plugin's kernel comes out 50-73 output steps from the same Q/DQ graph in "
    "ONNX Runtime (68, 72, ..., 124, 132, ... per group; 34, 64, 128, depthwise, 3×3 and ungrouped are "
    "exact). Light ShuffleNet's stage 3 (272 channels in 4 groups) went from 47 dB to -2 dB vs the "
    "simulation at its first such layer. edgekd splits them into one convolution per group before "
    "conversion (`edgekd/backends/openvino/grouped_conv.py`; its test fails when OpenVINO fixes the kernel; "
    "`bench/openvino_grouped_conv.py` scans the widths and checks the rule against them).",
    "- **OpenVINO rounds an int8 average pool's output onto its input's grid**: where a convolution read the "
    "pool's output, the simulation averaged in float; the pair is now placed on the pool's output with its "
    "input's parameters (light Inception-v2: 33 → 39 dB vs the simulation at the convolution reading the "
    "pool, 23 → 26 dB at the last activation).",
    "- OpenVINO in fp32 computed ShuffleNetV2 wrongly after its channel shuffle became one Gather "
    "(`Backend.wrong_after`: OpenVINO keeps the exporter's Reshape → Transpose → Reshape).",
    "- `light/squeezenet` as shipped, fp32 on OpenVINO: its constant weights give 1000 equal logits of "
    "6.8e9; OpenVINO sums in another order (relative differences of 1e-6, thousands in absolute terms), "
    "so its softmax is near one-hot where ONNX Runtime's is uniform. The model is degenerate, not the "
    "artifact; it stays refused.",
    "",
]


def markdown(
    results: dict,
    targets: list[str],
    precisions: list[str],
    command: str,
    before: dict,
    training: str,
    pending: int = 0,
    context: dict[str, dict] | None = None,
) -> str:
    lines = [
        "# Model coverage",
        "",
        f"Generated by `make coverage` (`{command}`, bench/model_coverage.py; it resumes from its JSON).",
        "",
        "Each cell is one `edgekd compile` of the model for the target at the precision. **✓** = compiled and "
        "verify passed (the artifact in the target's own runtime against the QDQ simulation; Jetson and Ascend: "
        "the QDQ graph their build scripts take, in ONNX Runtime); then the artifact's **top-1 agreement** with "
        "the float model (classifiers), its **output SQNR** against the float model, both on held-out CIFAR-10 "
        "validation images, and the **compile seconds** (a shared two-core machine). **✓ᶠ** = compiled, but "
        f"below the fidelity target (top-1 < {100 * MIN_TOP1:.0f} % or SQNR < {MIN_SQNR_DB:.0f} dB). "
        "**✗** = refused, with the pass and its reason (all of them in full below).",
        "",
    ]
    lines += _totals_section(
        results,
        precisions,
        pending,
        "they were left by a run stopped by `--stop-after`, pointed at some targets, precisions or models, or a "
        "report written with `--report-only`; they come in the script's order (opset 17, the people-det teacher, "
        "the light models as shipped, opset 11 dynamic, the realistic light models, opset 13); `make coverage` "
        "resumes from its JSON.",
    )
    lines += _fidelity_by_weights(results)
    lines += _before_after(results, before)
    lines += [
        "",
        "## Models",
        "",
        "- `light/*`: the nine Caffe2 models inside the onnx wheel (`onnx/backend/test/data/light/`), as "
        "shipped: opset 9, initializers listed as inputs, Dropout, Sum, LRN, and **every weight generated by "
        "ConstantOfShape, i.e. one constant value per tensor**: each image gives the same output, so their "
        "fidelity columns are degenerate (an SQNR of ∞ or 0 dB, top-1 trivially 100 %). They test the import.",
        "- `light/* (realistic)`: the same graphs with Kaiming-normal weights in place of the generators and "
        "every Conv/Gemm output rescaled to unit deviation on real images (LSUV-style), so that fidelity is "
        "meaningful; each residual branch joins its skip at 0.2 of that scale, small as zero-init-residual "
        "training starts it (at unit "
        "scale a random BatchNorm network is chaotic: light ResNet-50 turned input noise at -40 dB into logits "
        "at 20 dB, no quantized copy of it could track float; at 0.2, 38 dB). Untrained, so top-1 agreement is "
        "measured on near-tied logits and is a harsh test; ResNet-50 still loses about 1 dB per block, and its "
        "simulation and ShuffleNet's stay 14-17 dB from float.",
        f"- the stock architectures (tests/conformance_models.py), {training} (the U-Net segmenter and the "
        "Ultralytics-style detector keep random weights with BatchNorm recalibrated), exported by torch at "
        "opset 11 with dynamic N/H/W and at opsets 13 and 17 static; 64×64 input (the Ultralytics-style "
        "detector: 320×320).",
        "- `people-det-teacher/320`, `/640`: the zoo detector `yolo-det-p2` trained on people-det "
        "(examples/people-det/teacher.pth; decoded boxes and scores, float decode), exported by edgekd at "
        "opset 17, calibrated on people-det training images and measured on its validation images (SQNR of "
        "boxes and scores together). It replaces the zoo `yolo` with random weights, whose QDQ simulation is "
        "too far from float to verify anything.",
        "- `cifar10-teacher/opset17`: the CIFAR-10 teacher of examples/cifar10 (ResNet-20 trained to convergence, "
        f"{100 * json.loads(TEACHER_RECORD.read_text())['val_top1']:.1f} % holdout top-1), its card's normalization "
        "in the graph, exported by edgekd at opset 17, 32×32: "
        "the one classifier here whose logits have a shipped model's margins.",
        "- `cifar10-teacher/nhwc`, `/uint8`, `/float16`: the same teacher in the input forms other exporters "
        "write, exported by torch at opset 17: channels last behind a Transpose (compiled with `--layout NHWC`), "
        "raw uint8 pixels read through a Cast (`--scale 1`), half precision (`model.half()`); each measured "
        "against its own float model on the same images, laid out for it. edgekd computes a half-precision "
        "model in float32, so even its fp32 artifacts differ from it by the model's own float16 rounding "
        "(66 dB, one top-1 of 500), and its int8 cells carry that beside the int8 noise.",
        "- torchvision's own model definitions (22 architectures, exported by torch 2.14 with its default dynamo "
        "exporter at opset 20 and with TorchScript at opset 17) have a matrix of their own, "
        "[torchvision-coverage.md](torchvision-coverage.md) (`make coverage-torchvision`).",
        "- the same stock classifiers trained longer (15 epochs on 2000 images per class: 59-81 % top-1), int8 "
        "top-1 agreement with float per target beside NNCF's: [classifier-fidelity.md](classifier-fidelity.md) "
        "(`make coverage-fidelity`).",
        "",
    ]
    for precision in precisions:
        lines += [f"## {precision}", ""] + _matrix(results, targets, precision) + [""]
    lines += _classifiers(results, context or {})
    lines += QUANTIZER_FINDINGS + RUNTIME_FINDINGS
    lines += ["## Refusals in full", ""] + _refusals(results) + [""]
    return "\n".join(lines)


def _sqnr_only(results: dict) -> dict:
    """The cells without top-1 agreement: with random weights a 1000-class model's best logits sit within
    hundredths of each other, so which one wins under int8 noise says nothing about the compiler."""
    out = {}
    for key, cell in results.items():
        cell = dict(cell)
        if cell.get("vs_float"):
            cell["vs_float"] = {k: v for k, v in cell["vs_float"].items() if k not in ("top1_agreement", "flips")}
        out[key] = cell
    return out


def _peer_sqnr(results: dict, peer: dict[str, dict]) -> list[str]:
    """edgekd's int8 against NNCF's on the same graphs: a low SQNR both share is the random model's, not
    either compiler's."""
    if not peer:
        return []
    lines = [
        "## Against a peer",
        "",
        "Output SQNR against the float model, int8, on the same images: edgekd per target, and NNCF's "
        "`nncf.quantize` on the same ONNX (its TorchScript export) with the same 64 calibration images, its QDQ "
        "graph run in ONNX Runtime.",
        "",
        "| model | edgekd onnx-cpu | edgekd openvino-cpu | edgekd rpi4 | NNCF |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, c in sorted(peer.items()):
        row = []
        for target in ("onnx-cpu", "openvino-cpu", "rpi4"):
            cell = results.get(f"{model}|{target}|int8", {})
            ok = cell.get("status") == "ok" and cell.get("vs_float")
            row.append(f"{cell['vs_float']['sqnr_db']:.1f} dB" if ok else "–")
        nncf = c.get("nncf")
        row.append("–" if nncf is None else nncf["error"] if "error" in nncf else f"{nncf['sqnr_db']:.1f} dB")
        lines.append(f"| {model.removeprefix('torchvision/').removesuffix('/torchscript')} | " + " | ".join(row) + " |")
    return lines + [""]


def torchvision_markdown(
    results: dict,
    targets: list[str],
    precisions: list[str],
    command: str,
    manifest: dict,
    pending: int = 0,
    peer: dict[str, dict] | None = None,
) -> str:
    """docs/torchvision-coverage.md: the matrix for torchvision's own definitions as torch exported them."""
    results = _sqnr_only({k: c for k, c in results.items() if k.startswith("torchvision/")})
    record = next(iter(manifest.values()), {})
    lines = [
        "# Model coverage: torchvision's models",
        "",
        f"Generated by `make coverage-torchvision` (`{command}`, after bench/torchvision_export.py in its own venv; "
        "it resumes from its JSON).",
        "",
        f"Every model here is torchvision {record.get('torchvision', '?')}'s own definition, built and exported "
        f"by torch {record.get('torch', '?')} as its users export it: `dynamo` is torch's default exporter "
        "(`torch.onnx.export(model, args)`, torch.export underneath, its default opset), `torchscript` is "
        "`dynamo=False` at opset 17. No pretrained weights are reachable here, so each model keeps torchvision's "
        "initialisation with its BatchNorm statistics recalibrated on 64 real images and the last BatchNorm of "
        "each residual branch at 0.2 (as zero-init-residual training starts it; at 1 a deep random residual "
        "network is chaotic), ConvNeXt's layer scale too (1e-6 at initialisation), and ViT's head, zero at "
        "initialisation, drawn like Swin's (std 0.02); ImageNet's mean/std is subtracted in the graph. Inputs "
        "are CIFAR-10 images resized to the model's size; calibration on 64 of them, fidelity on 100 held-out "
        "ones.",
        "",
        "Each cell is one `edgekd compile` for the target at the precision. **✓** = compiled and verify passed "
        "(the artifact in the target's own runtime against the QDQ simulation; Jetson and Ascend: the QDQ graph "
        "their build scripts take, in ONNX Runtime); then the artifact's **output SQNR against the float "
        "model** and the **compile seconds** (a shared two-core machine; without the speed check, which times "
        "fp32 against int8). **✓ᶠ** = compiled, SQNR below "
        f"{MIN_SQNR_DB:.0f} dB. **✗** = refused, with the pass and its reason (in full below). Top-1 agreement is "
        "not shown: with random weights the 1000 logits sit within hundredths of each other, and which wins "
        "under int8 noise says nothing about the compiler.",
        "",
    ]
    lines += _totals_section(results, precisions, pending)
    lines += [
        "",
        "## Models",
        "",
        "| model | exporter | opset | input | parameters |",
        "|---|---|---:|---|---:|",
    ]
    for name, r in sorted(manifest.items()):
        lines.append(
            f"| {name.split('/')[0]} | {r['exporter']} | {r['opset']} | {'×'.join(map(str, r['shape'][2:]))} "
            f"| {r['params'] / 1e6:.1f} M |"
        )
    lines.append("")
    for precision in precisions:
        lines += [f"## {precision}", ""] + _matrix(results, targets, precision) + [""]
    lines += _peer_sqnr(results, peer or {})
    lines += ["## Refusals in full", ""] + (_refusals(results) or ["None."]) + [""]
    return "\n".join(lines)


def _fidelity_table(results: dict, targets: list[str], context: dict[str, dict]) -> list[str]:
    """Per classifier, most confident first: the float model's own accuracy and confidence, then edgekd's int8 per
    target and the peer's, each as top-1 agreement with the float model · SQNR against it."""
    lines = [
        "| classifier | float top-1 (labels) | float mean top-1 probability | "
        + " | ".join(f"edgekd {t}" for t in targets)
        + " | int8 weights alone | NNCF |",
        "|---" + "|---:" * (len(targets) + 4) + "|",
    ]
    for model, c in sorted(context.items(), key=lambda kv: -kv[1]["confidence"]):
        row = []
        for t in targets:
            cell = results.get(f"{model}|{t}|int8")
            f = cell.get("vs_float") if cell and cell["status"] == "ok" else None
            row.append(
                "✗"
                if cell and cell["status"] != "ok"
                else "–"
                if not f
                else f"{'' if _meets(cell) else '⚠ '}{100 * f['top1_agreement']:.1f} % · {f['sqnr_db']:.0f} dB"
            )
        alone = (results.get(f"{model}|onnx-cpu|int8") or {}).get("weights_alone")
        row.append(f"{100 * alone['top1_agreement']:.1f} % · {alone['sqnr_db']:.0f} dB" if alone else "–")
        row.append(_peer_text(c, 0))
        accuracy = f"{100 * c['float_top1']:.1f} %" if "float_top1" in c else "–"
        lines.append(f"| {model.split(' ')[0]} | {accuracy} | {c['confidence']:.2f} | " + " | ".join(row) + " |")
    return lines


def _against_peer(results: dict, context: dict[str, dict]) -> list[str]:
    """edgekd's median int8 agreement over the targets against NNCF's, per classifier."""
    better = same = worse = 0
    for model, c in context.items():
        agree = _int8_agreements(results, model)
        peer = (c.get("nncf") or {}).get("top1_agreement")
        if not agree or peer is None:
            continue
        median = agree[len(agree) // 2]
        better, same, worse = better + (median > peer), same + (median == peer), worse + (median < peer)
    if not better + same + worse:
        return []
    return [
        f"edgekd's median int8 agreement over the five targets is above NNCF's on {better} of "
        f"{better + same + worse} classifiers, equal on {same}, below on {worse}."
    ]


def fidelity_markdown(
    results: dict,
    targets: list[str],
    precisions: list[str],
    command: str,
    training: str,
    pending: int = 0,
    context: dict[str, dict] | None = None,
) -> str:
    """docs/classifier-fidelity.md: int8 top-1 agreement with float of the stock classifiers trained longer,
    beside each float model's own accuracy and confidence and NNCF's int8 of the same graph."""
    results = {k: c for k, c in results.items() if "(trained longer)" in k.split("|")[0]}
    context = context or {}
    lines = [
        "# Classifier fidelity: the stock classifiers trained longer",
        "",
        f"Generated by `make coverage-fidelity` (`{command}`, bench/model_coverage.py; it resumes from its JSON).",
        "",
        "The stock architectures of [model-coverage.md](model-coverage.md) (tests/conformance_models.py: "
        "ResNet-18, MobileNetV3-Large, an EfficientNet-B0-style network, ShuffleNetV2, a ConvNeXt, SqueezeNet, "
        f"a DenseNet, a ViT-tiny), {training}, exported by torch at opset 17, 64×64 input. "
        "Top-1 agreement with the float model counts the images whose prediction int8 noise flips, and only "
        "images whose two best logits nearly tie can flip: briefly trained (as in that matrix) a model has many "
        "such images, and its agreement says little about the compiler. Trained longer, these reach 59-81 % "
        "top-1; a shipped model's margins are larger still (the CIFAR-10 teacher, ResNet-20 at 90 %, keeps "
        "99.4-99.8 % on every target in model-coverage.md). Fidelity on 500 held-out CIFAR-10 images (never "
        "trained on), calibration on 64 others. Where int8 falls short of the 99 % target, `--max-drop` with "
        "`--eval` images that have no labels returns layers to float until int8 agrees with float: what that "
        "buys and costs on these classifiers is in [agreement-budget.md](agreement-budget.md).",
        "",
        "Each cell is one `edgekd compile` of the model for the target at the precision. **✓** = compiled and "
        "verify passed (the artifact in the target's own runtime against the QDQ simulation; Jetson and Ascend: "
        "the QDQ graph their build scripts take, in ONNX Runtime); then the artifact's **top-1 agreement** with "
        "the float model, its **output SQNR** against it, and the **compile seconds**. **✓ᶠ** / ⚠ = below the "
        f"fidelity target (top-1 < {100 * MIN_TOP1:.0f} % or SQNR < {MIN_SQNR_DB:.0f} dB). **✗** = refused.",
        "",
    ]
    lines += _totals_section(results, precisions, pending)
    lines += [
        "",
        "## int8 against float, per classifier",
        "",
        "Most confident float model first: its own top-1 on the held-out images' labels and its mean top-1 "
        "softmax probability; edgekd's int8 artifact per target and NNCF's `nncf.quantize` on the same ONNX "
        "with the same calibration images (its QDQ graph in ONNX Runtime): top-1 agreement with the float "
        "model · output SQNR against it. **int8 weights alone**: edgekd's onnx-cpu QDQ graph with every "
        "activation's Q/DQ pair removed, the weights still per-channel int8: what the weights' rounding costs "
        "by itself, a floor no choice of activation ranges or placement lifts. rpi4's output is int8 (LiteRT full "
        "int8), so its logits are also rounded to 1/255 of their range, which lowers its SQNR more than its "
        "agreement.",
        "",
        *_fidelity_table(results, targets, context),
        "",
        *_against_peer(results, context),
        "",
    ]
    for precision in precisions:
        lines += [f"## {precision}", ""] + _matrix(results, targets, precision) + [""]
    lines += ["## Refusals in full", ""] + (_refusals(results) or ["None."]) + [""]
    return "\n".join(lines)

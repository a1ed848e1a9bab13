"""Huawei Ascend (CANN): the QDQ ONNX that ATC takes, its op table, and the exact ``atc`` command.

No Ascend toolchain or runtime is needed here. The artifact's runnable file is ``model.onnx`` (run in
ONNX Runtime for verify and bench); ``model.om`` is built on a machine with CANN by running
``atc_command.sh`` beside it. The operator mapping and ATC's limits are data
(``targets/ascend-ops.toml``), evaluated by :mod:`edgekd.backends.ascend.tables`.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd import __version__
from edgekd.backends.ascend.tables import build_table, unsupported
from edgekd.backends.base import EmitInput, EmitResult, Unsupported
from edgekd.backends.onnxruntime.backend import OnnxRuntimeBackend
from edgekd.backends.templates import render
from edgekd.errors import ConfigError

if TYPE_CHECKING:
    import onnx

    from edgekd.specs import TargetSpec

MODEL = "model.onnx"
SCRIPT = "atc_command.sh"
OM_STEM = "model"  # atc --output=model writes model.om


def shell_quote(arg: str) -> str:
    """Single-quoted for POSIX shells, always (a quote inside becomes '\\'')."""
    return "'" + arg.replace("'", "'\\''") + "'"


def atc_argv(spec: "TargetSpec", input_name: str, input_shape: tuple[int, ...], precision: str) -> list[str]:
    """The ``atc`` argv that turns model.onnx into model.om for ``spec``'s SoC."""
    a = spec.raw.get("ascend", {})
    soc = a.get("soc_version")
    if not soc:
        raise ConfigError(f"target {spec.name} has no [ascend] soc_version", 'add e.g. soc_version = "Ascend310"')
    if ":" in input_name or "," in input_name or ";" in input_name:
        raise ConfigError(
            f"input name {input_name!r} contains ':', ',' or ';', which atc's --input_shape cannot express",
            "rename the model's input (e.g. --input-name input when exporting)",
        )
    argv = [
        "atc",
        f"--model={MODEL}",
        f"--framework={a.get('framework', 5)}",
        f"--soc_version={soc}",
        f"--input_shape={input_name}:{','.join(str(int(d)) for d in input_shape)}",
        f"--input_format={a.get('input_format', 'NCHW')}",
        f"--output={OM_STEM}",
    ]
    mode = a.get("precision_mode", {}).get(precision)
    if mode:
        argv.append(f"--precision_mode={mode}")
    if a.get("log"):
        argv.append(f"--log={a['log']}")
    return argv


def atc_script(argv: list[str], spec: "TargetSpec", precision: str) -> str:
    """The script that runs ``argv`` beside model.onnx (templates/atc_command.sh); every argument quoted."""
    command = " ".join([argv[0], *(shell_quote(x) for x in argv[1:])])
    soc = spec.raw.get("ascend", {}).get("soc_version")
    return render(
        __package__,
        SCRIPT,
        SOC_VERSION=soc,
        TARGET=spec.name,
        PRECISION=precision,
        EDGEKD_VERSION=__version__,
        COMMAND=command,
    )


# ------------------------------------------------------------------------------- op table files

CSV_COLUMNS = (
    "node",
    "onnx_op",
    "ascend_op",
    "status",
    "reasons",
    "input_names",
    "input_shapes",
    "output_shapes",
    "onnx_dtypes",
    "ascend_dtype",
    "format",
    "c0",
    "ascend_input_shape",
    "scale_d",
    "offset_d",
    "scale_w",
    "offset_w",
    "out_scale",
    "out_offset",
    "data_tensor",
    "weight_tensor",
)
_JSON_CELLS = frozenset(
    {
        "reasons",
        "input_names",
        "input_shapes",
        "output_shapes",
        "onnx_dtypes",
        "ascend_input_shape",
        "scale_w",
        "offset_w",
    }
)


def _cell(row: dict[str, Any], col: str) -> str:
    value = row[col]
    if value is None:
        return ""
    if col in _JSON_CELLS or isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return repr(value) if isinstance(value, float) else str(value)


def _shape(s: list | None) -> str:
    return "?" if s is None else "×".join(str(d) for d in s) or "scalar"


def _num(x: float | int | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _scale_w_md(row: dict[str, Any]) -> str:
    s = row["scale_w"]
    if not s:
        return ""
    if len(s) == 1:
        return _num(s[0])
    return f"per-channel ×{len(s)} [{_num(min(s))} … {_num(max(s))}]"


def to_markdown(table: dict[str, Any]) -> str:
    conv = table["conventions"]
    opset = table["opset"]
    lines = [
        f"# Ascend op table: {table['target']} ({table['soc_version']}), precision {table['precision']}",
        "",
        f"- ONNX opset {opset['model']}, ATC range {opset['supported']}: {'ok' if opset['ok'] else opset['problem']}",
        f"- Rows: {len(table['rows'])} ({', '.join(f'{k} {v}' for k, v in table['summary'].items())}); "
        "Q/DQ nodes are folded into the quantization columns.",
        f"- Quantization (AMCT): {conv['quantization']}. {conv['sign']}.",
        f"- int8 on the NPU only for {', '.join(conv['int8_ops'] or [])}; other ops compute as the ascend dtype says.",
        f"- NC1HWC0 = {conv['nc1hwc0']}, C0 by dtype {conv['c0']}.",
        "",
        "| node | ONNX op | Ascend op | input shapes | output shapes | ONNX dtype | Ascend dtype | format | "
        "scale_d | offset_d | scale_w | offset_w | status | constraint |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        ascend = (r["ascend_op"] or "—") + ("" if r["ascend_op_verified"] else " (unverified)")
        fmt = r["format"] + (f" (C0={r['c0']})" if r["c0"] else "")
        offset_w = "" if r["offset_w"] is None else ("0" if not any(r["offset_w"]) else json.dumps(r["offset_w"]))
        cells = [
            r["node"],
            r["onnx_op"],
            ascend,
            ", ".join(_shape(s) for s in r["input_shapes"]),
            ", ".join(_shape(s) for s in r["output_shapes"]),
            ", ".join(d or "?" for d in r["onnx_dtypes"]["inputs"]),
            r["ascend_dtype"],
            fmt,
            _num(r["scale_d"]),
            "" if r["offset_d"] is None else str(r["offset_d"]),
            _scale_w_md(r),
            offset_w,
            r["status"],
            "; ".join(r["reasons"]),
        ]
        lines.append("| " + " | ".join(_md_escape(str(c)) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in table["rows"]:
        w.writerow([_cell(r, c) for c in CSV_COLUMNS])
    return buf.getvalue()


def write_table(table: dict[str, Any], outdir: Path) -> list[str]:
    """op_table.json / .csv / .md in ``outdir``; returns their names."""
    (outdir / "op_table.json").write_text(json.dumps(table, indent=1) + "\n")
    (outdir / "op_table.csv").write_text(to_csv(table))
    (outdir / "op_table.md").write_text(to_markdown(table))
    return ["op_table.json", "op_table.csv", "op_table.md"]


# ----------------------------------------------------------------------------------------- backend


class AscendBackend(OnnxRuntimeBackend):
    """Emits for the NPU; here the same ONNX runs in ONNX Runtime (main_file, session, io inherited)."""

    name = "ascend"
    runtime = "onnxruntime"  # the local stand-in; the NPU runs model.om, built by atc_command.sh
    local_stand_in = True
    packages = ("onnxruntime", "onnx")
    modules = ("onnxruntime", "onnx")
    activation_schemes = ("asymmetric-int8", "symmetric-int8")  # AMCT/ATC: int8 activations with an offset

    def unsupported(self, model: "onnx.ModelProto", spec: "TargetSpec") -> list[Unsupported]:
        return unsupported(model, spec)

    def toolchain_versions(self) -> dict[str, str]:
        out = super().toolchain_versions()
        out["atc"] = shutil.which("atc") or f"not on PATH (build the .om with {SCRIPT} on a machine with CANN)"
        return out

    def emit(self, inp: EmitInput) -> EmitResult:
        import onnx_ir as ir

        ir.save(inp.model, inp.outdir / MODEL)
        proto = ir.to_proto(inp.model)
        table = build_table(proto, inp.spec, inp.precision, inp.qparams, input_shape=inp.input_shape)
        tables = write_table(table, inp.outdir)
        argv = atc_argv(inp.spec, inp.model.graph.inputs[0].name, inp.input_shape, inp.precision)
        script = inp.outdir / SCRIPT
        script.write_text(atc_script(argv, inp.spec, inp.precision))
        script.chmod(0o755)
        return EmitResult([MODEL, *tables, SCRIPT], self._report(table, argv, tables))

    def _report(self, table: dict[str, Any], argv: list[str], tables: list[str]) -> dict[str, Any]:
        rows = table["rows"]

        def flagged(status: str) -> list[dict[str, Any]]:
            return [
                {"node": r["node"], "op": r["onnx_op"], "reasons": r["reasons"]} for r in rows if r["status"] == status
            ][:50]

        return {
            "executed_with": "onnxruntime (CPUExecutionProvider) on model.onnx; no Ascend runtime in this environment",
            "om_model": f"not built here: run {SCRIPT} on a machine with CANN (atc on PATH) to produce {OM_STEM}.om",
            "soc_version": table["soc_version"],
            "atc_command": " ".join([argv[0], *(shell_quote(x) for x in argv[1:])]),
            "op_table": {"files": tables, "rows": len(rows), **table["summary"]},
            "opset": table["opset"],
            "int8_layers_on_npu": sum(r["ascend_dtype"] == "int8" for r in rows),
            "constrained": flagged("constrained"),
            "unsupported": flagged("unsupported"),
            "fidelity_scope": (
                "verify compares ONNX Runtime on model.onnx with the QDQ simulation, i.e. the graph, "
                "not the NPU: ATC quantizes only the int8 layers the table marks and computes the "
                "rest in float16"
            ),
        }

    def main_file(self, files: list[str]) -> str:
        return MODEL if MODEL in files else super().main_file(files)

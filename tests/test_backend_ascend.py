"""The Ascend backend: QDQ ONNX + op table + atc command, checked without any Ascend toolchain."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import tomllib
from onnx import TensorProto, helper, numpy_helper

from backend_template import BackendTemplate
from edgekd import api
from edgekd.backends import get_backend
from edgekd.backends.ascend.backend import CSV_COLUMNS, atc_argv, atc_script
from edgekd.backends.ascend.tables import QDQ, node_names
from edgekd.errors import PassFailedError, UnsupportedOpsError
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.specs import load_target

ROOT = Path(__file__).resolve().parents[1]


def _rows(artifact: Path) -> list[dict]:
    return json.loads((artifact / "op_table.json").read_text())["rows"]


def _close(a, b) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def _stand_in_atc(bindir: Path) -> Path:
    """An `atc` that records its argv, one argument per line, NUL-free."""
    bindir.mkdir(parents=True, exist_ok=True)
    atc = bindir / "atc"
    atc.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ATC_ARGV_OUT"\n')
    atc.chmod(0o755)
    return atc


def _run_script(script: Path, bindir: Path, out: Path) -> list[str]:
    """Runs ``script`` with a stand-in ``atc`` first on PATH; returns the argv it received."""
    _stand_in_atc(bindir)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "ATC_ARGV_OUT": str(out)}
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True, timeout=30)
    return out.read_text().splitlines()


class TestAscendBackend(BackendTemplate):
    target = "ascend310"

    def per_channel_weight_tensors(self, artifact, manifest):
        return sum(1 for r in _rows(artifact) if r["scale_w"] and len(r["scale_w"]) > 1)

    def test_the_ascend_table_lists_every_node(self, compiled):
        out, manifest, _ = compiled
        model = onnx.load(str(out / manifest["artifact"]["model_file"]))
        expected = Counter(
            n for n, node in zip(node_names(model.graph.node), model.graph.node) if node.op_type not in QDQ
        )
        listed = Counter(r["node"] for r in _rows(out))
        assert listed == expected and max(listed.values()) == 1
        assert not any(r["onnx_op"] in QDQ for r in _rows(out))
        assert all(r["status"] in ("supported", "constrained", "unsupported") for r in _rows(out))

    def test_json_csv_and_markdown_agree(self, compiled):
        out, _, _ = compiled
        rows = _rows(out)
        with open(out / "op_table.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == CSV_COLUMNS
            csv_rows = list(reader)
        assert len(csv_rows) == len(rows)
        for r, c in zip(rows, csv_rows):
            assert (c["node"], c["onnx_op"], c["ascend_op"], c["status"]) == (
                r["node"],
                r["onnx_op"],
                r["ascend_op"],
                r["status"],
            )
            assert (
                json.loads(c["input_shapes"]) == r["input_shapes"]
                and json.loads(c["output_shapes"]) == r["output_shapes"]
            )
            assert json.loads(c["reasons"]) == r["reasons"] and c["format"] == r["format"]
            for key in ("scale_d", "out_scale"):
                assert (c[key] == "") == (r[key] is None) and (r[key] is None or float(c[key]) == r[key])
            assert (c["offset_d"] == "") == (r["offset_d"] is None) and (
                r["offset_d"] is None or int(c["offset_d"]) == r["offset_d"]
            )
            assert (c["scale_w"] == "") == (r["scale_w"] is None) and (
                r["scale_w"] is None or json.loads(c["scale_w"]) == r["scale_w"]
            )
        md = [
            line
            for line in (out / "op_table.md").read_text().splitlines()
            if line.startswith("| ") and "---" not in line
        ]
        header, body = md[0], md[1:]
        assert "scale_d" in header and "status" in header
        assert len(body) == len(rows)
        for r, line in zip(rows, body):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            assert cells[0] == r["node"] and cells[1] == r["onnx_op"] and cells[2].startswith(r["ascend_op"])
            assert cells[12] == r["status"] and cells[13] == "; ".join(r["reasons"])
            assert (cells[8] == "") == (r["scale_d"] is None)
            if r["scale_d"] is not None:
                assert math.isclose(float(cells[8]), r["scale_d"], rel_tol=1e-5) and int(cells[9]) == r["offset_d"]

    def test_amct_scale_and_offset_equal_our_qparams(self, compiled):
        out, manifest, _ = compiled
        qparams = manifest["quantization"]["tensors"]
        rows = _rows(out)
        data_rows = [r for r in rows if r["scale_d"] is not None]
        weight_rows = [r for r in rows if r["scale_w"] is not None]
        assert data_rows and weight_rows
        for r in data_rows:
            qp = qparams[r["data_tensor"]]
            assert _close(r["scale_d"], qp["scale"]) and r["offset_d"] == qp["zero_point"]  # offset_d = zero point
            assert -128 <= r["offset_d"] <= 127
        for r in weight_rows:
            qp = qparams[r["weight_tensor"]]
            scales = qp["scale"] if isinstance(qp["scale"], list) else [qp["scale"]]
            assert len(r["scale_w"]) == len(scales) and all(_close(a, b) for a, b in zip(r["scale_w"], scales))
            assert r["offset_w"] == [0] * len(scales)  # AMCT: weights symmetric, offset_w only 0
        # int8 on the NPU only where ATC quantizes: Conv/Gemm/MatMul with both data and weights quantized
        assert {r["onnx_op"] for r in rows if r["ascend_dtype"] == "int8"} <= {"Conv", "Gemm", "MatMul"}
        for r in rows:
            if r["format"] == "NC1HWC0":
                assert r["c0"] == (32 if r["ascend_dtype"] == "int8" else 16)

    def test_atc_command_passes_bash_n_and_its_arguments_survive(self, compiled, tmp_path):
        out, manifest, _ = compiled
        script = out / "atc_command.sh"
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
        argv = _run_script(script, tmp_path / "bin", tmp_path / "argv.txt")
        shape = ",".join(str(d) for d in manifest["inputs"][0]["shape"])
        assert argv[:7] == [
            "--model=model.onnx",
            "--framework=5",
            "--soc_version=Ascend310",
            f"--input_shape={manifest['inputs'][0]['name']}:{shape}",
            "--input_format=NCHW",
            "--output=model",
            "--precision_mode=force_fp16",
        ]
        report = manifest["backend_report"]
        assert "atc_command.sh" in report["om_model"] and "onnxruntime" in report["executed_with"]
        assert manifest["artifact"]["runtime"] == "onnxruntime"
        assert {f["path"] for f in manifest["files"]} >= {
            "model.onnx",
            "op_table.json",
            "op_table.csv",
            "op_table.md",
            "atc_command.sh",
        }


# --------------------------------------------------------------------- hand-built models, no compile


def _conv_model(path: Path, stride: int = 64, opset: int = 13, hw: int = 128) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [
        helper.make_node(
            "Conv", ["input", "w", "b"], ["c"], name="conv_s64", strides=[stride, stride], kernel_shape=[3, 3]
        ),
        helper.make_node("Relu", ["c"], ["output"], name="relu"),
    ]
    out_hw = (hw - 3) // stride + 1
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, out_hw, out_hw])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_conv_stride_64_is_unsupported_in_inspect(tmp_path):
    path = _conv_model(tmp_path / "s64.onnx")
    info = api.inspect(str(path), target="ascend310")
    assert info["target"] == "ascend310"
    assert info["unsupported"] == [{"node": "conv_s64", "op": "Conv", "reason": "Conv stride 64 outside [1, 63]"}]
    assert api.inspect(str(_conv_model(tmp_path / "s63.onnx", stride=63)), target="ascend310")["unsupported"] == []


def test_conv_stride_64_fails_the_compile_at_check_support(tmp_path):
    path = _conv_model(tmp_path / "s64.onnx")
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((4, 3, 128, 128)).astype(np.float32))
    out = tmp_path / "out"
    config = api.make_config(str(path), "ascend310", out, calib=calib)  # int8, the target's default
    with pytest.raises(PassFailedError) as e:
        api.compile(config)
    assert e.value.pass_name == "check-support" and "calibrate" not in e.value.ran_before
    assert isinstance(e.value.cause, UnsupportedOpsError)
    assert "Conv ×1: Conv stride 64 outside [1, 63] — conv_s64" in e.value.message
    assert not out.exists()


def test_opset_outside_atc_range_is_reported(tmp_path):
    path = _conv_model(tmp_path / "o21.onnx", stride=1, opset=21, hw=16)
    unsupported = api.inspect(str(path), target="ascend310")["unsupported"]
    assert {
        "node": "(model)",
        "op": "opset",
        "reason": "ONNX opset 21 outside supported range [11, 15] (ATC --framework=5)",
    } in unsupported
    # Conv's own page lists opsets 9-18
    assert any(
        u["node"] == "conv_s64" and "opset 21 outside its documented opsets [9, 18]" in u["reason"] for u in unsupported
    )
    spec = load_target("ascend310")
    assert get_backend("ascend").unsupported(onnx.load(str(_conv_model(tmp_path / "o13.onnx", 1, 13, 16))), spec) == []


def test_an_operator_outside_the_list_is_unsupported(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "x"], ["y"], name="ein", equation="ij,ij->ij")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    [u] = get_backend("ascend").unsupported(model, load_target("ascend310p"))
    assert (u.node, u.op) == ("ein", "Einsum") and "not in the Ascend ONNX operator list" in u.reason


@pytest.mark.parametrize(
    "precision, mode, dtype", [("fp16", "force_fp16", "float16"), ("fp32", "allow_fp32_to_fp16", "float32")]
)
def test_float_compile_for_310p(tmp_path, precision, mode, dtype):
    path = _conv_model(tmp_path / "f.onnx", stride=2, hw=32)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = api.compile(api.make_config(str(path), "ascend310p", out, precision=precision, verify_samples=4))
    rows = _rows(result.output)
    assert [r["node"] for r in rows] == ["conv_s64", "relu"]
    assert all(r["ascend_dtype"] == dtype and r["scale_d"] is None and r["status"] == "supported" for r in rows)
    assert rows[0]["ascend_op"] == "Conv2D" and rows[0]["format"] == "NC1HWC0" and rows[0]["c0"] == 16
    assert rows[0]["input_shapes"] == [[1, 3, 32, 32], [4, 3, 3, 3], [4]] and rows[0]["output_shapes"] == [
        [1, 4, 15, 15]
    ]
    assert rows[0]["ascend_input_shape"] == [1, 1, 32, 32, 16]
    argv = _run_script(result.output / "atc_command.sh", tmp_path / "bin", tmp_path / "argv.txt")
    assert "--soc_version=Ascend310P3" in argv and f"--precision_mode={mode}" in argv
    assert result.manifest["backend_report"]["int8_layers_on_npu"] == 0


def test_every_argument_is_quoted_and_survives_the_shell(tmp_path):
    spec = load_target("ascend310")
    argv = atc_argv(spec, "in'put $HOME `x` *", (1, 3, 8, 8), "int8")
    script = tmp_path / "atc_command.sh"
    script.write_text(atc_script(argv, spec, "int8"))
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    (tmp_path / "model.onnx").write_bytes(b"")
    assert _run_script(script, tmp_path / "bin", tmp_path / "argv.txt") == argv[1:]
    command = script.read_text().splitlines()[-1]
    assert command.startswith("atc '--model=model.onnx' ") and all(
        f"'{a}'" in command for a in argv[1:] if "'" not in a
    )


def test_every_fact_has_a_source():
    data = tomllib.loads((ROOT / "targets" / "ascend-ops.toml").read_text())
    assert "backend" not in data  # backend data, not a target spec
    for op, entry in data["ops"].items():
        assert entry.get("source"), op
        assert entry.get("ascend_op_verified", True) is False or entry.get("ascend_op_source"), op
        for c in entry.get("constraints", []):
            assert c.get("source") and c.get("text") and c["severity"] in ("error", "warn"), (op, c)
    q = data["quantization"]
    for key in (
        "record_source",
        "formula_source",
        "scheme_source",
        "ops_source",
        "min_input_channels_source",
        "per_channel_source",
    ):
        assert q[key].startswith("https://"), key
    for name in ("ascend310", "ascend310p"):
        spec = load_target(name)
        assert (
            spec.backend == "ascend"
            and spec.default_precision == "int8"
            and spec.activation_scheme == "asymmetric-int8"
        )
        assert spec.raw["onnx"]["sources"] and spec.raw["quantization"]["sources"] and spec.raw["ascend"]["atc_source"]
        assert spec.opset_range == (11, 15) and spec.passes == load_target("onnx-cpu").passes

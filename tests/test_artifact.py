"""The artifact contract: one directory, a manifest that says everything, a model that runs as is."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import numpy as np
import onnxruntime as ort
import torch

from conftest import CALIB, RESNET_SEED
from edgekd.artifact import verify_files
from edgekd.data.preprocess import Preprocess
from edgekd.data.samples import iter_batches
from edgekd.models import build_model


def test_directory_holds_model_labels_manifest_report(resnet_artifact):
    names = sorted(p.name for p in resnet_artifact.iterdir())
    assert names == ["labels.txt", "manifest.json", "model.onnx", "report.md"]
    assert resnet_artifact.joinpath("labels.txt").read_text().split() == [f"c{i}" for i in range(10)]


def test_manifest_has_every_field_of_the_contract(resnet_artifact):
    m = json.loads((resnet_artifact / "manifest.json").read_text())
    assert m["edgekd_version"] and datetime.fromisoformat(m["created"])
    assert m["target"]["name"] == "onnx-cpu" and len(m["target"]["spec_sha256"]) == 64
    for tool in ("python", "torch", "onnx", "onnxruntime", "numpy"):
        assert m["toolchain"][tool]
    (inp,) = m["inputs"]
    assert inp["name"] == "input" and inp["shape"] == [1, 3, 32, 32] and inp["dtype"] == "float32"
    assert inp["layout"] == "NCHW"
    pre = inp["preprocessing"]
    assert pre["size"] == [32, 32] and pre["mean"] == [0.49, 0.48, 0.45] and pre["std"] == [0.25, 0.24, 0.26]
    assert pre["channel_order"] == "RGB" and abs(pre["scale"] - 1 / 255) < 1e-12
    (out,) = m["outputs"]
    assert out["shape"] == [1, 10] and out["dtype"] == "float32" and "quantization" not in out
    assert m["labels"] == [f"c{i}" for i in range(10)]
    assert [p["name"] for p in m["passes"]] == ["export", "canonicalize", "fuse", "check-support", "emit", "verify"]
    assert m["status"] == "ok"
    assert all(p["seconds"] >= 0 for p in m["passes"])
    assert m["profile"]["params"] > 250_000 and m["profile"]["macs"] > 40_000_000
    assert m["fidelity"]["top1_agreement"] == 1.0 and m["fidelity"]["samples"] == 8
    assert m["fidelity"]["inputs"] == "calibration images"
    assert m["artifact"]["precision"] == "fp32" and m["artifact"]["runtime"] == "onnxruntime"
    assert m["config"]["version"] == 2 and m["config"]["target"] == "onnx-cpu"
    assert "calibration" in m and "accuracy" in m


def test_manifest_hashes_every_file(resnet_artifact):
    m = json.loads((resnet_artifact / "manifest.json").read_text())
    assert {f["path"] for f in m["files"]} == {"model.onnx", "labels.txt"}
    for f in m["files"]:
        data = (resnet_artifact / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
    assert verify_files(resnet_artifact, m) == []


def test_model_runs_unchanged_in_a_plain_onnxruntime_session(resnet_artifact):
    """The artifact needs nothing of edgekd: a plain session on real images gives the PyTorch model's outputs."""
    torch.manual_seed(RESNET_SEED)
    model = build_model("resnet20").eval()
    m = json.loads((resnet_artifact / "manifest.json").read_text())
    x = np.concatenate(list(iter_batches(CALIB, Preprocess(**_preprocess_args(m)), (1, 3, 32, 32), limit=8)))
    sess = ort.InferenceSession(str(resnet_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (8, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).all()


def _preprocess_args(manifest: dict) -> dict:
    pre = manifest["inputs"][0]["preprocessing"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}


def test_report_is_readable(resnet_artifact):
    report = (resnet_artifact / "report.md").read_text()
    for heading in ("## Model", "## Inputs and outputs", "## Passes", "## Fidelity", "## Files"):
        assert heading in report
    assert "calibration images" in report

"""The shared backend test: every backend subclasses ``BackendTemplate`` and fills in what differs.

Each zoo model is compiled to int8 for the backend's target; the artifact must load in its official
runtime, have the documented input/output dtypes, carry per-channel weights, and agree with the
QDQ simulation (the compile's own verify pass, re-checked here from the manifest).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgekd import api
from edgekd.backends import get_backend
from edgekd.passes.calibrate import CalibrationWarning

TEMPLATE_MODELS = ("mobilenetv2-cifar:0.5", "mobilenetv3-small-cifar:0.5", "yolo-det:0.25")


class BackendTemplate:
    target: str
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    compile_options: dict = {}

    def per_channel_weight_tensors(self, artifact: Path, manifest: dict) -> int:
        """How many weight tensors the artifact holds with one scale per output channel."""
        raise NotImplementedError

    @pytest.fixture(scope="class", params=TEMPLATE_MODELS)
    def compiled(self, request, zoo_models, tmp_path_factory):
        path, calib, shape = zoo_models[request.param]
        out = tmp_path_factory.mktemp(self.target) / request.param.replace(":", "_")
        config = api.make_config(
            str(path),
            self.target,
            out,
            input_shape=shape,
            precision="int8",
            calib=calib,
            skip=("sensitivity",),
            verify_samples=16,
            **self.compile_options,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            result = api.compile(config)
        return result.output, json.loads((result.output / "manifest.json").read_text()), calib

    def test_artifact_loads_and_runs_in_its_runtime(self, compiled):
        out, manifest, calib = compiled
        backend = get_backend(manifest["artifact"]["backend"])
        run = backend.session(out / manifest["artifact"]["model_file"])
        outputs = run(np.load(calib)[:1])
        assert len(outputs) == len(manifest["outputs"])
        assert all(np.isfinite(o).all() for o in outputs)

    def test_declared_dtypes(self, compiled):
        _, manifest, _ = compiled
        assert [i["dtype"] for i in manifest["inputs"]] == [self.input_dtype]
        assert {o["dtype"] for o in manifest["outputs"]} == {self.output_dtype}

    def test_weights_are_per_channel(self, compiled):
        out, manifest, _ = compiled
        assert self.per_channel_weight_tensors(out, manifest) > 0

    def test_agrees_with_the_simulation(self, compiled):
        _, manifest, _ = compiled
        fid = manifest["fidelity"]
        assert fid["reference"] == "QDQ simulation" and fid["samples"] == 16
        assert fid.get("decisive_disagreements", 0) == 0
        assert fid.get("max_output_steps", 0) <= 4 + 1e-3  # steps are computed in float
        assert manifest["status"] == "ok"

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd import api

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calibration" / "cifar10"


@pytest.fixture(scope="session")
def resnet_artifact(tmp_path_factory) -> Path:
    """A compiled resnet20 (random weights) with labels and calibration-image verification."""
    out = tmp_path_factory.mktemp("art") / "resnet20"
    config = api.make_config("resnet20", "onnx-cpu", out, input_shape=(1, 3, 32, 32),
                             mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                             labels=[f"c{i}" for i in range(10)], calib=CALIB, verify_samples=8)
    return api.compile(config).output

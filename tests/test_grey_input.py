"""Models that take one grey channel (MNIST-style, document and thermal models): images become their luma
with --channel-order GRAY; without it, a named error before any pass runs says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import CALIB
from edgekd import api
from edgekd.data.preprocess import Preprocess
from edgekd.errors import ConfigError, PassFailedError


def test_grey_preprocessing_is_the_luma_with_one_mean_and_std():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    pre = Preprocess(size=(1, 4), channel_order="GRAY", mean=(0.5,), std=(0.25,))
    x = pre.apply(rgb)
    assert x.shape == (1, 1, 4)  # NCHW without the batch axis: one channel
    luma = np.array([0.299 * 255, 0.587 * 255, 0.114 * 255, 0.299 * 10 + 0.587 * 20 + 0.114 * 30]) / 255
    np.testing.assert_allclose(x[0, 0], (luma - 0.5) / 0.25, rtol=1e-5)
    assert Preprocess(channel_order="GRAY").mean == (0.0,)  # the uniform default is the one channel's
    with pytest.raises(ConfigError, match="1 value"):
        Preprocess(channel_order="GRAY", mean=(0.4, 0.5, 0.6))


@pytest.fixture(scope="module")
def grey_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()
    path = tmp_path_factory.mktemp("grey") / "grey.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=13)
    return path


def _compile(path, target, out, **options):
    return api.compile(
        api.make_config(
            str(path), target, out, precision="int8", calib=CALIB, calib_samples=32, skip=("sensitivity",), **options
        )
    )


def test_a_grey_model_fed_rgb_images_is_refused_by_name(grey_onnx, tmp_path):
    with pytest.raises(PassFailedError, match="takes 1 channel") as e:
        _compile(grey_onnx, "onnx-cpu", tmp_path / "out")
    assert isinstance(e.value.cause, ConfigError) and "--channel-order GRAY" in e.value.cause.hint
    assert not (tmp_path / "out").exists()


def test_a_grey_model_calibrates_on_preprocessed_arrays_without_a_channel_order(grey_onnx, tmp_path):
    arrays = tmp_path / "grey.npy"
    np.save(arrays, np.random.default_rng(0).uniform(0, 1, (32, 1, 28, 28)).astype(np.float32))
    result = api.compile(api.make_config(str(grey_onnx), "onnx-cpu", tmp_path / "out", precision="int8", calib=arrays))
    assert result.manifest["status"] == "ok"


@pytest.mark.parametrize("target", ["onnx-cpu", "openvino-cpu", "rpi4"])
def test_a_grey_model_compiles_int8_with_channel_order_gray(grey_onnx, tmp_path, target):
    result = _compile(grey_onnx, target, tmp_path / "out", channel_order="GRAY", mean=(0.5,), std=(0.25,))
    m = result.manifest
    assert m["status"] == "ok"
    pre = m["inputs"][0]["preprocessing"]
    assert pre["channel_order"] == "GRAY" and list(pre["mean"]) == [0.5]


def test_a_four_channel_model_fed_images_is_told_to_give_arrays(tmp_path):
    path = tmp_path / "rgba.onnx"
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    torch.onnx.export(model, (torch.zeros(1, 4, 28, 28),), str(path), dynamo=False, opset_version=13)
    with pytest.raises(PassFailedError, match="takes 4 channels") as e:
        _compile(path, "onnx-cpu", tmp_path / "out")
    assert isinstance(e.value.cause, ConfigError) and ".npy" in e.value.cause.hint

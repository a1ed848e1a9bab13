"""verify past the step limit: kept only when the artifact is as close to float as the simulation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conformance_models import export, realistic_weights, yolo320
from conftest import ROOT
from edgekd import api
from edgekd.data.preprocess import Preprocess
from edgekd.data.samples import iter_batches
from edgekd.passes.verify import FidelityWarning, _as_close_to_float, float_distance

RNG = np.random.default_rng(0)


def _runs(outputs: list[np.ndarray]) -> list[list[np.ndarray]]:
    """One run per sample, each a list with one output."""
    return [[o[i : i + 1]] for o in outputs for i in range(len(o))]


def test_rounding_noise_of_the_artifact_is_accepted():
    floats = RNG.standard_normal((8, 100))
    simulation = floats + 0.1 * RNG.standard_normal(floats.shape)  # the quantization error, ~20 dB
    artifact = simulation + 0.03 * RNG.standard_normal(floats.shape)  # the kernels' own rounding on top
    figures = float_distance(_runs([artifact]), _runs([simulation]), _runs([floats]))
    assert figures["artifact_sqnr_db"][0] > figures["simulation_sqnr_db"][0] - 1.0
    assert _as_close_to_float(figures)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda sim: sim[:, ::-1],  # a wrong axis
        lambda sim: sim * 1.5,  # a wrong scale
        lambda sim: np.maximum(sim, 0),  # a ReLU the model does not have
    ],
)
def test_an_artifact_that_computes_something_else_is_refused(wrong):
    floats = RNG.standard_normal((8, 100))
    simulation = floats + 0.1 * RNG.standard_normal(floats.shape)
    figures = float_distance(_runs([wrong(simulation).copy()]), _runs([simulation]), _runs([floats]))
    assert not _as_close_to_float(figures), figures


def test_a_classifier_whose_top1_leaves_float_more_than_the_simulation_is_refused():
    floats = RNG.standard_normal((50, 10))
    simulation = floats + 0.05 * RNG.standard_normal(floats.shape)
    artifact = simulation.copy()
    artifact[:10] = artifact[:10, ::-1]  # ten samples' classes swapped: the logits' power is unchanged
    figures = float_distance(_runs([artifact]), _runs([simulation]), _runs([floats]))
    assert figures["samples"] == 50 and figures["artifact_top1_vs_float"] <= figures["simulation_top1_vs_float"] - 0.1
    assert not _as_close_to_float(figures)
    figures = float_distance(_runs([simulation]), _runs([simulation]), _runs([floats]))
    assert _as_close_to_float(figures)


def test_outputs_that_do_not_line_up_are_not_compared():
    a = _runs([np.zeros((2, 4))])
    assert float_distance(a, a, _runs([np.zeros((2, 5))])) is None


def test_deep_detector_on_integer_kernels_is_kept_with_its_figures(tmp_path):
    """The conformance YOLO at 320 for onnx-cpu: QLinear kernels round once per layer, ~60 layers deep;
    the artifact ends tens of output steps from the simulation yet as close to float as it."""
    shape = (1, 3, 320, 320)
    images = np.concatenate(
        list(iter_batches(ROOT / "calibration" / "cifar10", Preprocess(size=(320, 320)), shape, 32))
    )
    np.save(tmp_path / "calib.npy", images)
    torch.manual_seed(0)
    model = export(realistic_weights(yolo320(), images[:16]), tmp_path / "yolo.onnx", shape, 17, False)
    config = api.make_config(
        str(model), "onnx-cpu", tmp_path / "out", input_shape=shape, precision="int8",
        calib=tmp_path / "calib.npy", skip=("sensitivity", "speed-check"), verify_samples=8,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fidelity = api.compile(config).manifest["fidelity"]
    assert fidelity["max_output_steps"] > 4 and "vs_float" in fidelity
    assert _as_close_to_float(fidelity["vs_float"])
    assert any(issubclass(w.category, FidelityWarning) for w in seen)

"""An artifact's raw outputs for given inputs, computed on a device by the benchmark runner: how a
board is shown to compute what the host computes (same runner, same runtime, same samples)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgekd.artifact import read_manifest
from edgekd.bench.device import Device
from edgekd.bench.session import RUNTIME_PACKAGES, check_runner_exit, check_unchanged, remote_join, upload_artifact
from edgekd.errors import ConfigError


def device_outputs(artifact: Path, device: Device, samples: np.ndarray, timeout_s: float = 600.0) -> list[np.ndarray]:
    """Runs the artifact once per sample on ``device``; returns one array per model output, samples
    stacked on axis 0. ``samples`` are model inputs as the runtime takes them (its dtype and layout:
    an int8 NHWC TFLite model takes int8 NHWC), one per row of axis 0."""
    manifest = read_manifest(Path(artifact))
    check_unchanged(Path(artifact), manifest)
    runtime = manifest["artifact"]["runtime"]
    if runtime not in RUNTIME_PACKAGES:
        raise ConfigError(
            f"{artifact} runs on {runtime}, which edgekd's runner does not drive",
            f"runner runtimes: {', '.join(sorted(RUNTIME_PACKAGES))}",
        )
    with device, tempfile.TemporaryDirectory() as tmp:
        remote_model, remote_runner = upload_artifact(Path(artifact), manifest, device)
        np.save(Path(tmp) / "inputs.npy", np.ascontiguousarray(samples), allow_pickle=False)
        remote_inputs = device.upload(Path(tmp) / "inputs.npy", "inputs.npy")
        out = device.run(
            [
                device.python,
                remote_runner,
                remote_model,
                "--runtime",
                runtime,
                "--threads",
                "1",
                "--warmup",
                "0",
                "--iterations",
                "1",
                "--inputs",
                remote_inputs,
                "--save-outputs",
                "outputs.npz",
                "--out",
                "result.json",
            ],
            timeout=timeout_s,
        )
        check_runner_exit(out, runtime, device)
        local = Path(tmp) / "outputs.npz"
        device.fetch(remote_join(remote_runner, "outputs.npz"), local)
        with np.load(local, allow_pickle=False) as saved:
            return [saved[f"output{k}"] for k in range(len(saved.files))]

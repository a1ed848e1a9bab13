"""One benchmark of an artifact on a device: upload model and runner, run, fetch the result."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgekd.artifact import RESULTS_DIR, read_manifest, verify_files, write_json
from edgekd.backends import backend_class
from edgekd.bench.device import Device, RunOutput
from edgekd.bench.end_to_end import DEFAULT_END_TO_END, EndToEndSettings, prepare, runner_flags
from edgekd.errors import BenchmarkError, CorruptModelError, ToolchainMissingError

RUNNER = Path(__file__).with_name("runner.py")


RUNTIME_PACKAGES = {
    "onnxruntime": "onnxruntime",
    "litert": "ai-edge-litert (or tflite-runtime)",
    "openvino": "openvino",
}


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 2
    warmup: int = 10
    iterations: int = 100
    time_budget_s: float | None = None  # per timed loop (a detector has two: model-only, then end to end)
    timeout_s: float = 600.0
    # a detector is also timed from frame to detections; None: model-only (what a search compares)
    end_to_end: EndToEndSettings | None = DEFAULT_END_TO_END

    def __post_init__(self):
        from edgekd.validate import check_number

        check_number("--threads", self.threads, minimum=1, integer=True)
        check_number("--warmup", self.warmup, minimum=0, integer=True)
        check_number("--iterations", self.iterations, minimum=1, integer=True)
        check_number("--time-budget", self.time_budget_s, above=0, hint="seconds, e.g. 30")
        check_number("the runner timeout", self.timeout_s, above=0)


def run_benchmark(
    artifact: Path, device: Device, settings: BenchSettings, progress: Callable[[int, int], None] | None = None
) -> dict:
    manifest = read_manifest(artifact)
    check_results_writable(artifact)
    check_unchanged(artifact, manifest)
    model_file = manifest["artifact"]["model_file"]
    runtime = manifest["artifact"]["runtime"]

    def on_line(line: str) -> None:
        if line.startswith("edgekd-progress ") and progress:
            done, total = line.split()[1].split("/")
            progress(int(done), int(total))

    timed_by_backend = backend_class(manifest["artifact"]["backend"])().benchmark(
        artifact, manifest, device, settings, progress
    )
    if timed_by_backend is not None:
        result, started = timed_by_backend
        return _finish(result, device, manifest, model_file, started, settings)
    with tempfile.TemporaryDirectory() as tmp:
        extra = prepare(manifest, settings.end_to_end, Path(tmp))  # frames decoded before connecting: errors first
        with device:
            remote_model, remote_runner = upload_artifact(artifact, manifest, device)
            remote_extra = {name: device.upload(path, name) for name, path in extra.items()}
            argv = runner_argv(device.python, remote_runner, remote_model, runtime, settings)
            started = time.time()
            out = device.run(argv + runner_flags(remote_extra), timeout=settings.timeout_s, on_stderr_line=on_line)
            check_runner_exit(out, runtime, device)
            local = Path(tmp) / "result.json"
            device.fetch(remote_join(remote_runner, "result.json"), local)
            result = json.loads(local.read_text())
    return _finish(result, device, manifest, model_file, started, settings)


def runner_argv(python: str, runner: str, model: str, runtime: str, settings: BenchSettings) -> list[str]:
    argv = [python, runner, model, "--runtime", runtime, "--threads", str(settings.threads)]
    argv += ["--warmup", str(settings.warmup), "--iterations", str(settings.iterations), "--out", "result.json"]
    return argv + (["--time-budget", str(settings.time_budget_s)] if settings.time_budget_s else [])


def check_results_writable(artifact: Path) -> None:
    """Fails before the run, not after it, when the result cannot be stored in the artifact."""
    results = artifact / RESULTS_DIR
    try:
        results.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results, prefix=".write-check-"):
            pass
    except OSError as e:
        raise BenchmarkError(
            f"cannot store results in {results}: {e.strerror or e}",
            "make the artifact directory writable, or copy it somewhere writable and bench the copy",
        ) from e


def check_unchanged(artifact: Path, manifest: dict) -> None:
    changed = verify_files(artifact, manifest)
    if changed:
        raise CorruptModelError(
            f"files in {artifact} changed since compile: {', '.join(changed)}",
            "recompile; the manifest's sha256 no longer matches",
        )


def upload_artifact(artifact: Path, manifest: dict, device: Device) -> tuple[str, str]:
    """Every file of the artifact (some runtimes read siblings: OpenVINO's .xml needs its .bin) and the
    runner, into the device's run dir; returns the remote model and runner paths."""
    remote = {f["path"]: device.upload(artifact / f["path"], Path(f["path"]).name) for f in manifest["files"]}
    return remote[manifest["artifact"]["model_file"]], device.upload(RUNNER, "edgekd_runner.py")


def check_runner_exit(out: RunOutput, runtime: str, device: Device) -> None:
    if out.returncode == 4 and "runtime-missing" in out.stderr:
        raise ToolchainMissingError(
            f"{runtime} does not import on {device.name}: {out.stderr.strip()[-300:]}",
            f"install it on the device: pip install {RUNTIME_PACKAGES.get(runtime, runtime)}",
        )
    if out.returncode != 0:
        raise BenchmarkError(f"the runner failed on {device.name} (exit {out.returncode}): {out.stderr.strip()[-800:]}")


def _finish(
    result: dict, device: Device, manifest: dict, model_file: str, started: float, settings: BenchSettings
) -> dict:
    result["device"] = device.name
    result["artifact"] = {
        "target": manifest["target"]["name"],
        "model_file": model_file,
        "sha256": next(f["sha256"] for f in manifest["files"] if f["path"] == model_file),
    }
    result["started"] = datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")
    result["settings_requested"] = asdict(settings)
    return result


def remote_join(sibling: str, name: str) -> str:
    return str(Path(sibling).with_name(name))


def store_result(artifact: Path, result: dict) -> Path:
    results = artifact / RESULTS_DIR
    results.mkdir(exist_ok=True)
    stamp = result["started"].replace(":", "").replace("-", "")
    path = results / f"{stamp}-{result['device']}.json"
    k = 1
    while path.exists():
        path, k = results / f"{stamp}-{result['device']}-{k}.json", k + 1
    write_json(path, result)
    return path


def load_results(artifact: Path) -> list[dict]:
    d = artifact / RESULTS_DIR
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []

"""TensorRT artifacts on a Jetson: build the engine on the board (cached there), time it with trtexec.

Engines are never shipped: one built elsewhere may not load, or may be slow, on another board or
TensorRT release. The board keeps built engines under ``<workdir>/engines``, keyed by the artifact's
model hash, the TensorRT version and the SoC, so a second benchmark skips the (minutes-long) build.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

from edgekd.backends.tensorrt.trtexec import parse_trtexec, to_bench_latency
from edgekd.bench.device import Device, probe
from edgekd.errors import BenchmarkError, RemoteCommandError


def _file_safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:40]


def engine_key(model_sha256: str, tensorrt: str, soc: str) -> str:
    return f"{model_sha256[:16]}-trt{_file_safe(tensorrt)}-{_file_safe(soc)}"


def run_trt_benchmark(
    artifact: Path,
    manifest: dict,
    device: Device,
    settings,
    started_cb: Callable[[float], None],
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    spec = getattr(device, "spec", None)
    if spec is None or not spec.jetson:
        raise BenchmarkError(
            f"{manifest['target']['name']} artifacts are TensorRT engines built on a Jetson; "
            f"device {device.name} is not one",
            "benchmark on a device with jetson = true in the inventory",
        )
    model_file = manifest["artifact"]["model_file"]
    sha = next(f["sha256"] for f in manifest["files"] if f["path"] == model_file)
    with device:
        facts = probe(device)
        jet = facts.get("jetson") or {}
        trt = jet.get("tensorrt") or "unknown"
        soc = (jet.get("soc") or "unknown").split(",")[-1].strip("\x00 ")
        trtexec = jet.get("trtexec") or "trtexec"
        engines = f"{spec.workdir.rstrip('/')}/engines"
        engine = f"{engines}/{engine_key(sha, trt, soc)}.engine"
        cached = device.run(["test", "-f", engine], timeout=30).returncode == 0
        build_s = None
        if not cached:
            for f in manifest["files"]:
                device.upload(artifact / f["path"], Path(f["path"]).name)
            device.exec(["mkdir", "-p", "--", engines], timeout=30)
            script = device.upload(artifact / "build_engine.sh", "build_engine.sh")
            t = time.time()
            out = device.run(["bash", script, engine + ".part"], timeout=settings.timeout_s)
            if out.returncode != 0:
                raise RemoteCommandError(
                    f"{device.name}: engine build failed (exit {out.returncode}): "
                    f"{(out.stderr + out.stdout).strip()[-800:]}"
                )
            device.exec(["mv", "--", engine + ".part", engine], timeout=30)  # only whole engines enter the cache
            build_s = time.time() - t
        started = time.time()
        started_cb(started)
        out = device.run(
            [
                trtexec,
                f"--loadEngine={engine}",
                f"--iterations={settings.iterations}",
                f"--warmUp={max(0, settings.warmup) * 10}",
                "--duration=0",
                "--avgRuns=1",
            ],
            timeout=settings.timeout_s,
        )
        if out.returncode != 0:
            raise RemoteCommandError(
                f"{device.name}: trtexec failed (exit {out.returncode}): {(out.stderr + out.stdout).strip()[-800:]}"
            )
    summary = parse_trtexec(out.stdout + "\n" + out.stderr)
    if progress:
        progress(settings.iterations, settings.iterations)
    latency = to_bench_latency(summary)
    return {
        "schema": 1,
        "runtime": {"name": "tensorrt", "version": summary.tensorrt_version or trt},
        "settings": {"threads": 1, "warmup": settings.warmup, "iterations": settings.iterations, "inputs": "random"},
        "input": {"shape": manifest["inputs"][0]["shape"], "dtype": manifest["inputs"][0]["dtype"]},
        "latency": latency,
        "latencies_ms": [],
        "memory": {"peak_rss_mb": None},
        "host": {k: facts.get(k) for k in ("os", "cpu", "cores", "memory_mb", "python", "machine")} | {"jetson": jet},
        "engine": {"path": engine, "cached": cached, "build_s": build_s},
        "trtexec": {
            "gpu_compute_ms": summary.gpu_compute_ms,
            "variance_warning": summary.variance_warning,
            "format": summary.format,
        },
        "before": None,
        "after": None,
    }

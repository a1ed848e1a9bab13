"""The benchmark runner's statistics, the local device, and results stored in the artifact."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgekd import api
from edgekd.bench import runner
from edgekd.bench.session import RUNNER, BenchSettings
from edgekd.errors import CorruptModelError, UnknownNameError


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentiles_match_numpy(q):
    values = sorted(np.random.default_rng(q).exponential(3.0, size=257).tolist())
    assert runner.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)


def test_summary_statistics():
    s = runner.summarize([1.0, 2.0, 3.0, 4.0], batch=2)
    assert s["mean_ms"] == 2.5 and s["min_ms"] == 1.0 and s["max_ms"] == 4.0 and s["p50_ms"] == 2.5
    assert s["std_ms"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["throughput_fps"] == pytest.approx(2 * 1000 / 2.5)


def test_runner_is_self_contained_and_python38_compatible():
    src = RUNNER.read_text()
    imports = {line.split()[1].split(".")[0] for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"argparse", "json", "math", "os", "platform", "resource", "sys", "time"}
    assert "edgekd" not in imports
    ast.parse(src, feature_version=(3, 8))  # grammar only; the runner also avoids 3.9+ builtins generics


def test_runner_as_a_script(resnet_artifact, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            str(resnet_artifact / "model.onnx"),
            "--runtime",
            "onnxruntime",
            "--warmup",
            "2",
            "--iterations",
            "20",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "edgekd-progress 20/20" in proc.stderr
    r = json.loads(out.read_text())
    assert r["latency"]["iterations"] == 20 and len(r["latencies_ms"]) == 20
    lat = r["latency"]
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert r["memory"]["peak_rss_mb"] >= r["memory"]["rss_start_mb"] > 0
    assert r["runtime"]["name"] == "onnxruntime" and r["input"] == {"shape": [1, 3, 32, 32], "dtype": "float32"}


def test_runner_with_sample_inputs(resnet_artifact, tmp_path):
    samples = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", samples)
    out = tmp_path / "r.json"
    subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            str(resnet_artifact / "model.onnx"),
            "--runtime",
            "onnxruntime",
            "--warmup",
            "0",
            "--iterations",
            "5",
            "--inputs",
            str(tmp_path / "x.npy"),
            "--out",
            str(out),
        ],
        check=True,
    )
    assert json.loads(out.read_text())["settings"]["inputs"] == "samples"


@pytest.fixture
def art(tmp_path, resnet_artifact):
    """A private copy: benchmarking writes results into the artifact."""
    return shutil.copytree(resnet_artifact, tmp_path / "a")


def test_time_budget_stops_the_loop_early(art):
    r = api.bench(art, "local", BenchSettings(threads=1, warmup=1, iterations=100000, time_budget_s=0.3))
    assert 1 <= r["latency"]["iterations"] < 100000


def test_bench_stores_result_plot_and_report(art):
    ticks = []
    r = api.bench(
        art, "local", BenchSettings(threads=1, warmup=2, iterations=30), progress=lambda d, t: ticks.append((d, t))
    )
    assert ticks and ticks[-1] == (30, 30)
    stored = list((art / "results").glob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["latency"] == r["latency"]
    assert (art / r["plot"]).stat().st_size > 1000
    report = (art / "report.md").read_text()
    assert "## Latency" in report and "p99 ms" in report and r["plot"] in report
    assert r["artifact"]["target"] == "onnx-cpu" and r["device"] == "local"


def test_tampered_artifact_is_refused(art):
    with open(art / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CorruptModelError, match="model.onnx"):
        api.bench(art, "local", BenchSettings(iterations=1, warmup=0))


def test_unknown_device_lists_the_valid_ones(resnet_artifact):
    with pytest.raises(UnknownNameError) as e:
        api.bench(resnet_artifact, "pi4-lab")
    assert "local" in e.value.hint


def test_cli_bench_prints_the_latency_table(art):
    from click.testing import CliRunner

    from edgekd.cli import main

    res = CliRunner().invoke(main, ["bench", str(art), "--device", "local", "-n", "10", "--warmup", "1", "-q"])
    assert res.exit_code == 0, res.output
    header = res.output.splitlines()[0].split()
    assert header[:5] == ["device", "runtime", "threads", "iters", "p50"] and "fps" in header
    assert res.output.splitlines()[2].split()[:4] == ["local", "onnxruntime", "2", "10"]

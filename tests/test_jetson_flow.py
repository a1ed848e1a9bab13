"""The Jetson flow against the loopback board: the engine is built on the board with trtexec (a
stand-in that records its arguments and prints real recorded trtexec output), cached there by
model hash + TensorRT version + SoC, then timed and parsed."""

from __future__ import annotations

import json
import stat
import warnings
from pathlib import Path

import pytest

from edgekd import api
from edgekd.bench.session import BenchSettings
from edgekd.errors import BenchmarkError
from edgekd.passes.calibrate import CalibrationWarning

RECORDED = Path(__file__).parent / "data" / "trtexec"

STAND_IN = r"""#!/usr/bin/env python3
# A stand-in trtexec: records argv, "builds" by writing the engine file, "times" by printing a
# real trtexec log recorded from a board.
import json, sys
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
for a in sys.argv[1:]:
    if a.startswith("--saveEngine="):
        open(a.split("=", 1)[1], "wb").write(b"engine")
    if a.startswith("--loadEngine="):
        sys.stdout.write(open({recorded!r}).read())
"""


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def trt_artifact(zoo_models, tmp_path_factory):
    path, calib, shape = zoo_models["resnet20"]
    out = tmp_path_factory.mktemp("trt") / "xavier"
    config = api.make_config(
        str(path),
        "jetson-xavier",
        out,
        input_shape=shape,
        precision="int8",
        calib=calib,
        skip=("sensitivity",),
        verify_samples=4,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return api.compile(config).output


def recorded_log() -> Path:
    logs = sorted(p for p in RECORDED.glob("*.txt") if "summary" in p.name)
    if not logs:
        pytest.skip("no recorded trtexec summary output in tests/data/trtexec")
    return logs[-1]


@pytest.fixture
def jetson_board(tmp_path, ssh_board):
    bin_dir = tmp_path / "bin with space"
    bin_dir.mkdir()
    log = tmp_path / "trtexec-calls.jsonl"
    trtexec = bin_dir / "trtexec"
    trtexec.write_text(STAND_IN.format(log=str(log), recorded=str(recorded_log())))
    trtexec.chmod(trtexec.stat().st_mode | stat.S_IXUSR)
    inv = ssh_board.inventory(tmp_path / "devices.toml", jetson=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    return inv, log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_engine_is_built_on_the_board_then_cached(trt_artifact, jetson_board, tmp_path):
    import shutil

    art = shutil.copytree(trt_artifact, tmp_path / "art")
    inv, log = jetson_board
    first = api.bench(art, "board", BenchSettings(iterations=50, warmup=5), inventory=inv)
    build, timing = calls(log)
    assert "--int8" in build and "--fp16" in build
    onnx_arg = next(a for a in build if a.startswith("--onnx="))
    assert onnx_arg.endswith("/model.onnx")
    engine = next(a for a in build if a.startswith("--saveEngine=")).split("=", 1)[1]
    assert "/engines/" in engine and engine.endswith(".engine.part")
    assert timing[0] == f"--loadEngine={engine[: -len('.part')]}" and "--iterations=50" in timing
    assert first["engine"]["cached"] is False and first["runtime"]["name"] == "tensorrt"
    lat = first["latency"]
    assert lat["p50_ms"] > 0 and lat["throughput_fps"] > 0

    second = api.bench(art, "board", BenchSettings(iterations=50, warmup=5), inventory=inv)
    assert second["engine"]["cached"] is True
    assert [c for c in calls(log) if any(a.startswith("--saveEngine=") for a in c)] == [build]  # built once
    assert second["latency"] == lat  # same recorded output, same parse


def test_trt_result_prints_in_the_common_table(trt_artifact, jetson_board, tmp_path):
    import shutil

    from click.testing import CliRunner

    from edgekd.cli import main

    art = shutil.copytree(trt_artifact, tmp_path / "art")
    inv, _ = jetson_board
    r = CliRunner().invoke(main, ["bench", str(art), "-d", "board", "--inventory", str(inv), "-n", "20", "-q"])
    assert r.exit_code == 0, r.output
    row = r.output.splitlines()[2].split()
    assert row[:2] == ["board", "tensorrt"]


def test_trt_artifact_needs_a_jetson(trt_artifact, ssh_board, tmp_path):
    import shutil

    art = shutil.copytree(trt_artifact, tmp_path / "art")
    with pytest.raises(BenchmarkError, match="not one"):
        api.bench(art, "board", BenchSettings(iterations=5), inventory=ssh_board.inventory(tmp_path / "d.toml"))

"""Devices: the inventory, and benchmarks on a real OpenSSH server on loopback, faults included."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd import api
from edgekd.bench.inventory import load_inventory
from edgekd.bench.session import BenchSettings
from edgekd.cli import main
from edgekd.errors import (
    BenchmarkError,
    ConfigError,
    DeviceAuthError,
    DeviceConnectionLost,
    DeviceDiskFullError,
    DeviceUnreachableError,
    HostKeyError,
    RemoteCommandError,
    ToolchainMissingError,
    UnknownNameError,
)
from ssh_board import keygen, make_board

FAST = BenchSettings(threads=1, warmup=1, iterations=10)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No user ssh config, keys or edgekd state leak into the tests, and none leak out."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


@pytest.fixture
def art(tmp_path, resnet_artifact):
    return shutil.copytree(resnet_artifact, tmp_path / "art")


@pytest.fixture
def inv(tmp_path, ssh_board):
    return ssh_board.inventory(tmp_path / "devices.toml")


def remote_runs(board) -> list[Path]:
    return sorted((board.dir / "work").glob("edgekd-run-*"))


# --- inventory ---------------------------------------------------------------------------------


def test_shipped_example_inventory_parses():
    devices = load_inventory(Path(__file__).resolve().parents[1] / "devices" / "example.toml")
    assert {"local", "pi4-lab", "pi5-lab", "xavier-01"} <= set(devices)
    assert devices["xavier-01"].jetson and devices["pi4-lab"].threads == 4


def test_devices_cli_lists_local_and_inventory(inv):
    r = CliRunner().invoke(main, ["devices", "--inventory", str(inv)])
    assert r.exit_code == 0, r.output
    assert "local" in r.output and "board" in r.output and "127.0.0.1" in r.output


def test_unknown_device_names_the_known_ones(inv, art):
    with pytest.raises(UnknownNameError) as e:
        api.bench(art, "nosuch", FAST, inventory=inv)
    assert "board" in e.value.hint and "local" in e.value.hint


@pytest.mark.parametrize(
    "text,match",
    [
        ("[devices.x]\nport = 22\n", "lacks required key 'host'"),
        ("[devices.x]\nhost='a'\nspeed=1\n", "unknown key"),
        ("[devices.local]\nhost='a'\n", "built in"),
        ("nonsense", "TOML"),
        ("[devices.x]\nhost='a'\nport=70000\n", r"port must lie in \[1, 65535\]"),
        ("[devices.x]\nhost='a'\nport=0\n", "port must lie in"),
        ("[devices.x]\nhost='a'\nport='22'\n", "port must be int"),
        ("[devices.x]\nhost=''\n", "host must not be empty"),
        ("[devices.x]\nhost='a'\nthreads=0\n", "at least 1"),
        ("[devices.x]\nhost='a'\nenv={A=1}\n", "env must be str-map"),
        ("[devices.x]\nhost='a'\nruntimes='onnx'\n", "str-list"),
        ("devices = 3\n", "no \\[devices.NAME\\]"),
        ("[devices]\nx = 1\n", "must be a table"),
    ],
)
def test_bad_inventories_are_named_errors(tmp_path, text, match):
    p = tmp_path / "i.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_inventory(p)


# --- working board ------------------------------------------------------------------------------


def test_check_reports_what_the_board_has(inv):
    info = api.check_device("board", inventory=inv)
    assert info["cores"] >= 1 and info["memory_mb"] > 0 and info["python"].startswith("3.")
    assert info["runtimes"]["onnxruntime"] and info["os"] and info["cpu"]
    assert info["jetson"] is None


def test_remote_bench_prints_the_same_table_as_local(inv, art, ssh_board):
    local = CliRunner().invoke(
        main, ["bench", str(art), "-d", "local", "-n", "10", "--warmup", "1", "--threads", "1", "-q"]
    )
    remote = CliRunner().invoke(
        main,
        [
            "bench",
            str(art),
            "-d",
            "board",
            "--inventory",
            str(inv),
            "-n",
            "10",
            "--warmup",
            "1",
            "--threads",
            "1",
            "-q",
        ],
    )
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert local.output.splitlines()[0].split() == remote.output.splitlines()[0].split()  # same columns
    row = remote.output.splitlines()[2].split()
    assert row[:4] == ["board", "onnxruntime", "1", "10"]
    assert remote_runs(ssh_board) == []  # the per-run remote directory is gone


def test_remote_result_is_stored_with_device_facts(inv, art):
    r = api.bench(art, "board", FAST, inventory=inv)
    assert r["device"] == "board" and r["latency"]["iterations"] == 10
    assert r["host"]["cores"] >= 1 and "before" in r and "after" in r
    assert len(list((art / "results").glob("*-board.json"))) == 1


def test_progress_streams_from_the_board(inv, art):
    seen = []
    api.bench(
        art,
        "board",
        BenchSettings(threads=1, warmup=0, iterations=40),
        progress=lambda d, t: seen.append(d),
        inventory=inv,
    )
    assert len(seen) >= 4 and seen[-1] == 40 and seen == sorted(seen)


def test_hostile_strings_in_the_inventory_stay_quoted(tmp_path, ssh_board, art):
    workdir = ssh_board.dir / "work" / "a dir; touch PWNED $(touch PWNED2)"
    inv = ssh_board.inventory(tmp_path / "d.toml", workdir=str(workdir), env={"EDGEKD_X": "$(touch PWNED3)"})
    api.bench(art, "board", FAST, inventory=inv)
    for name in ("PWNED", "PWNED2", "PWNED3"):
        assert not list(ssh_board.dir.rglob(name)) and not Path(name).exists()


# --- faults -------------------------------------------------------------------------------------


def test_wrong_key_is_refused(tmp_path, ssh_board, art):
    keygen(tmp_path / "other")
    inv = ssh_board.inventory(tmp_path / "d.toml", key=str(tmp_path / "other"))
    with pytest.raises(DeviceAuthError) as e:
        api.bench(art, "board", FAST, inventory=inv)
    assert "authentication refused" in e.value.message and "authorized_keys" in e.value.hint


def test_closed_port(tmp_path, ssh_board, art):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        inv = ssh_board.inventory(tmp_path / "d.toml", port=port)
        t = time.time()
        with pytest.raises(DeviceUnreachableError, match="refused"):
            api.bench(art, "board", FAST, inventory=inv)
        assert time.time() - t < 10  # bounded retries


def test_host_that_never_answers_times_out(tmp_path, ssh_board, art):
    with socket.socket() as silent:  # accepts TCP, never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        inv = ssh_board.inventory(tmp_path / "d.toml", port=silent.getsockname()[1], connect_timeout=1)
        with pytest.raises(DeviceUnreachableError, match="timed out"):
            api.bench(art, "board", FAST, inventory=inv)


def test_unknown_host_key_is_refused_unless_accepted(tmp_path, ssh_board, art):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    inv = ssh_board.inventory(tmp_path / "d.toml", known_hosts=str(empty))
    with pytest.raises(HostKeyError) as e:
        api.bench(art, "board", FAST, inventory=inv)
    assert "--accept-new-host-key" in e.value.hint
    api.bench(art, "board", FAST, inventory=inv, accept_new_host_key=True)
    assert f"[127.0.0.1]:{ssh_board.port} ssh-ed25519" in empty.read_text()
    api.bench(art, "board", FAST, inventory=inv)  # verified from now on


def test_changed_host_key_is_refused(tmp_path, ssh_board, art):
    keygen(tmp_path / "impostor")
    wrong = tmp_path / "known_hosts"
    wrong.write_text(
        f"[127.0.0.1]:{ssh_board.port} " + " ".join((tmp_path / "impostor.pub").read_text().split()[:2]) + "\n"
    )
    before = wrong.read_text()
    inv = ssh_board.inventory(tmp_path / "d.toml", known_hosts=str(wrong))
    for accept in (False, True):  # OpenSSH's accept-new: a changed key is refused even with the flag
        with pytest.raises(HostKeyError) as e:
            api.bench(art, "board", FAST, inventory=inv, accept_new_host_key=accept)
        assert "CHANGED" in e.value.message
        assert "ssh-keygen -R" in e.value.hint and "--accept-new-host-key" not in e.value.hint
    assert wrong.read_text() == before  # nothing appended


def test_runtime_missing_on_the_board_says_what_to_install(tmp_path, ssh_board, art):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    inv = ssh_board.inventory(tmp_path / "d.toml", python=str(bare / "bin" / "python"))
    with pytest.raises(ToolchainMissingError) as e:
        api.bench(art, "board", FAST, inventory=inv)
    assert "onnxruntime" in e.value.message and "pip install onnxruntime" in e.value.hint


def test_remote_failure_carries_the_stderr_tail(inv, art):
    (art / "model.onnx").write_bytes(b"not a model")
    import json

    from edgekd.artifact import sha256_file, write_json

    m = json.loads((art / "manifest.json").read_text())
    for f in m["files"]:
        if f["path"] == "model.onnx":
            f["sha256"], f["bytes"] = sha256_file(art / "model.onnx"), 11
    write_json(art / "manifest.json", m)
    with pytest.raises(BenchmarkError) as e:
        api.bench(art, "board", FAST, inventory=inv)
    assert "InvalidProtobuf" in e.value.message or "Load model" in e.value.message


def test_command_timeout_stops_the_remote_run(inv, art, ssh_board):
    t = time.time()
    with pytest.raises(RemoteCommandError, match="ran past"):
        api.bench(art, "board", BenchSettings(threads=1, warmup=0, iterations=10_000_000, timeout_s=2), inventory=inv)
    assert time.time() - t < 30
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", "edgekd_runner.py"], capture_output=True, text=True).stdout.split()
    assert left == []  # timeout -k left nothing running
    assert remote_runs(ssh_board) == []


def test_link_dying_mid_run_is_named_and_cleaned_on_next_connect(tmp_path, art):
    board = make_board(tmp_path / "flaky")
    board.start()
    try:
        inv = board.inventory(tmp_path / "d.toml")

        def kill_when_running(progress_seen):
            progress_seen.wait(20)
            board.stop()

        started = threading.Event()
        killer = threading.Thread(target=kill_when_running, args=(started,))
        killer.start()
        with pytest.raises(DeviceConnectionLost) as e:
            api.bench(
                art,
                "board",
                BenchSettings(threads=1, warmup=0, iterations=2_000_000, timeout_s=120),
                progress=lambda d, t: started.set(),
                inventory=inv,
            )
        killer.join()
        assert "connection lost" in e.value.message
        assert len(remote_runs(board)) == 1  # left behind by the dead link...
        board.start()
        api.bench(art, "board", FAST, inventory=inv)
        assert remote_runs(board) == []  # ...and removed on the next connect
    finally:
        board.stop()


def test_disk_full_on_the_board(tmp_path, ssh_board, art):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here to fill a disk")
    try:
        inv = ssh_board.inventory(tmp_path / "d.toml", workdir=str(small))
        with pytest.raises(DeviceDiskFullError) as e:
            api.bench(art, "board", FAST, inventory=inv)
        assert "no space" in e.value.message
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_several_devices_at_once_print_one_table(inv, art):
    r = CliRunner().invoke(
        main,
        [
            "bench",
            str(art),
            "-d",
            "board,local",
            "--inventory",
            str(inv),
            "-n",
            "10",
            "--warmup",
            "1",
            "--threads",
            "1",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    devices = [line.split()[0] for line in r.output.splitlines()[2:]]
    assert sorted(devices) == ["board", "local"]


def test_one_failing_device_does_not_stop_the_others(tmp_path, inv, art):
    results = api.bench_many(art, ["board", "nosuch"], FAST, inventory=inv)
    assert results[0]["device"] == "board" and isinstance(results[1], UnknownNameError)


def test_history_and_compare(inv, art):
    api.bench(art, "local", FAST)
    api.bench(art, "board", FAST, inventory=inv)
    api.bench(art, "board", FAST, inventory=inv)
    from edgekd.bench import history

    assert len(history.runs(art)) == 3
    r = CliRunner().invoke(main, ["bench", str(art), "--compare"])
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.output.splitlines()[2:] if line.startswith("onnx-cpu")]
    assert sorted(row[1] for row in rows) == ["board", "local"]  # newest run per device
    assert (art / "results" / "compare.png").stat().st_size > 1000


@pytest.mark.parametrize("target,runtime", [("rpi4", "litert"), ("openvino-cpu", "openvino")])
def test_tflite_and_openvino_artifacts_run_on_the_board(tmp_path, zoo_models, inv, target, runtime):
    import warnings

    from edgekd.passes.calibrate import CalibrationWarning

    path, calib, shape = zoo_models["mobilenetv2-cifar:0.5"]
    config = api.make_config(
        str(path),
        target,
        tmp_path / target,
        input_shape=shape,
        precision="int8",
        calib=calib,
        skip=("sensitivity",),
        verify_samples=4,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        out = api.compile(config).output
    local = api.bench(out, "local", FAST)
    remote = api.bench(out, "board", FAST, inventory=inv)
    assert local["runtime"]["name"] == remote["runtime"]["name"] == runtime
    assert remote["latency"]["iterations"] == 10 and remote["input"] == local["input"]


def test_a_detector_runs_end_to_end_on_the_board(inv, tmp_path, detector_artifact, ssh_board):
    from PIL import Image

    from edgekd.bench.end_to_end import EndToEndSettings

    art = shutil.copytree(detector_artifact, tmp_path / "det")
    (tmp_path / "frames").mkdir()
    Image.new("RGB", (80, 48), (30, 120, 200)).save(tmp_path / "frames" / "one frame.png")
    e2e = EndToEndSettings(frames=str(tmp_path / "frames"))
    r = api.bench(art, "board", BenchSettings(threads=1, warmup=1, iterations=5, end_to_end=e2e), inventory=inv)
    assert r["device"] == "board" and r["end_to_end"]["frames"]["sizes"] == [[48, 80]]
    assert r["end_to_end"]["stages"]["total"]["iterations"] == 5 and r["end_to_end"]["stages"]["model"]["p50_ms"] > 0
    assert remote_runs(ssh_board) == []

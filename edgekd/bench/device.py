"""Where a benchmark runs. ``LocalDevice`` here; remote boards implement the same three calls."""

from __future__ import annotations

import abc
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekd.errors import BenchmarkError, RemoteCommandError

PROBE = Path(__file__).with_name("probe.py")


@dataclass
class RunOutput:
    returncode: int
    stdout: str
    stderr: str


class Device(abc.ABC):
    name: str
    python: str  # interpreter that runs the runner on the device

    @abc.abstractmethod
    def __enter__(self) -> "Device": ...

    @abc.abstractmethod
    def __exit__(self, *exc) -> None: ...

    @abc.abstractmethod
    def upload(self, local: Path, name: str) -> str:
        """Copies ``local`` into this run's work dir as ``name``; returns its path on the device."""

    @abc.abstractmethod
    def run(self, argv: list[str], timeout: float, on_stderr_line: Callable[[str], None] | None = None) -> RunOutput:
        """Runs ``argv`` (a list: never a shell string) in the work dir."""

    @abc.abstractmethod
    def fetch(self, remote: str, local: Path) -> None: ...


class LocalDevice(Device):
    """This machine, with a per-run temporary work dir; runs the runner with this Python."""

    def __init__(self, name: str = "local", python: str | None = None):
        self.name = name
        self.python = python or sys.executable
        self.workdir: Path | None = None

    def __enter__(self) -> "LocalDevice":
        self.workdir = Path(tempfile.mkdtemp(prefix="edgekd-bench-"))
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def upload(self, local: Path, name: str) -> str:
        dest = self.workdir / name
        shutil.copyfile(local, dest)
        return str(dest)

    def run(self, argv, timeout, on_stderr_line=None) -> RunOutput:
        import threading

        try:
            proc = subprocess.Popen(argv, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as e:
            raise BenchmarkError(f"cannot start {argv[0]}: {e}") from e
        err_lines: list[str] = []
        out: list[str] = []

        def pump_err():
            for line in proc.stderr:
                err_lines.append(line)
                if on_stderr_line:
                    on_stderr_line(line.rstrip("\n"))

        readers = [
            threading.Thread(target=pump_err, daemon=True),
            threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(
                f"benchmark on {self.name} ran past {timeout:.0f} s", "lower --iterations or raise the timeout"
            ) from None
        finally:  # Ctrl-C, SIGTERM or a timeout: the runner must not outlive us (its work dir goes next)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for t in readers:
                t.join(timeout=5)
        return RunOutput(proc.returncode, "".join(out), "".join(err_lines))

    def fetch(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)


def probe(device: Device) -> dict:
    """What the device reports about itself (OS, CPU, memory, Python, runtimes, Jetson facts), from the
    self-contained probe script run there."""
    import json

    remote = device.upload(PROBE, "edgekd_probe.py")
    out = device.run([device.python, remote], timeout=60)
    if out.returncode != 0:
        raise RemoteCommandError(
            f"{device.name}: the probe failed (exit {out.returncode}): {out.stderr.strip()[-600:]}"
        )
    return json.loads(out.stdout)

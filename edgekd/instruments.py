"""Instruments watch the pipeline from outside the passes: timing, IR dumps, progress."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from edgekd.errors import ConfigError, OutputWriteError
from edgekd.passes.base import Pass
from edgekd.state import CompileState, PassRecord


class Instrument:
    def before_pass(self, index: int, p: Pass, state: CompileState) -> None:
        pass

    def after_pass(self, index: int, p: Pass, state: CompileState, record: PassRecord) -> None:
        pass


class TimingInstrument(Instrument):
    def __init__(self):
        self._start = 0.0

    def before_pass(self, index, p, state):
        self._start = time.perf_counter()

    def after_pass(self, index, p, state, record):
        record.seconds = time.perf_counter() - self._start


class DumpIRInstrument(Instrument):
    """Writes the ONNX graph after every pass as ``DIR/NN_name.onnx`` (``EDGEKD_DUMP_IR=DIR``)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(
                f"EDGEKD_DUMP_IR={directory} is a file, not a folder",
                "point EDGEKD_DUMP_IR at a folder (it is created if missing)",
            )

    def after_pass(self, index, p, state, record):
        if state.onnx_model is None:
            return
        import onnx_ir as ir

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            ir.save(state.onnx_model, self.directory / f"{index + 1:02d}_{p.name}.onnx")
        except OSError as e:
            raise OutputWriteError.from_os_error(
                f"cannot write the IR dump into EDGEKD_DUMP_IR={self.directory}", e
            ) from e


class ProgressInstrument(Instrument):
    """Reports each pass as it starts and ends, through ``emit(line)``."""

    def __init__(self, total: int, emit: Callable[[str], None]):
        self.total, self.emit = total, emit

    def before_pass(self, index, p, state):
        self.emit(f"[{index + 1}/{self.total}] {p.name} ...")

    def after_pass(self, index, p, state, record):
        secs = f"{record.seconds:.2f} s" if record.seconds is not None else ""
        detail = ", ".join(f"{k}={v}" for k, v in record.metrics.items() if isinstance(v, (int, float, str)))
        self.emit(f"[{index + 1}/{self.total}] {p.name} done {secs}{'  ' + detail if detail else ''}")


def default_instruments() -> list[Instrument]:
    """Timing always; IR dumps when ``EDGEKD_DUMP_IR`` names a directory."""
    out: list[Instrument] = [TimingInstrument()]
    if os.environ.get("EDGEKD_DUMP_IR"):
        out.append(DumpIRInstrument(os.environ["EDGEKD_DUMP_IR"]))
    return out

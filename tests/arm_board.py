"""The emulated Raspberry Pi 4 of tools/arm-board.sh for the device tests: an aarch64 Debian chroot
(Python 3.11, LiteRT, numpy) run by qemu-user through binfmt_misc, with its own sshd on 127.0.0.1.

Built once by ``make test`` (network: debootstrap + PyPI) into ``$EDGEKD_ARM_BOARD`` (default
``.cache/arm-board``); here it is only started and stopped, which needs no network. A board already
running from that directory is reused and left running."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ssh_board import Board, free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "arm-board.sh"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def board_dir() -> Path:
    return Path(os.environ.get("EDGEKD_ARM_BOARD") or ROOT / ".cache" / "arm-board").resolve()


@dataclass
class ArmBoard:
    dir: Path  # the chroot; DIR/board holds keys, known_hosts, the sshd pid and log
    port: int
    owned: bool  # started here, so stopped here

    @property
    def meta(self) -> Path:
        return self.dir / "board"

    def host_path(self, board_path: str) -> Path:
        """Where a path on the board lies on this machine (the board is a chroot)."""
        return self.dir / board_path.lstrip("/")

    def inventory(self, path: Path, **overrides) -> Path:
        """An inventory with one device, ``board``, as a user would write it for a Pi reached by SSH."""
        fields = dict(
            user="root",
            python="python3",
            workdir="/tmp/edgekd",
            arch="aarch64",
            runtimes=["litert"],
            connect_timeout=30,
            keepalive_s=5,
            description="emulated Raspberry Pi 4 (tools/arm-board.sh)",
        )
        fields.update(overrides)
        return Board(self.meta, self.port, self.meta / "client", self.meta / "known_hosts").inventory(path, **fields)


def absent_reason() -> str | None:
    """Why the board cannot run here, or None. Only genuine absence: a built board that fails to
    start is a failure, not a skip."""
    d = board_dir()
    if os.geteuid() != 0:
        return "the emulated ARM board needs root (chroot, binfmt_misc); run the tests as root"
    if not ((d / "board" / ".rootfs-ok").exists() and (d / "board" / ".litert-ok").exists()):
        return (
            f"the emulated ARM board is not built in {d}; `make test` builds it (once, needs the network), "
            f"or: tools/arm-board.sh build {d}"
        )
    if not Path("/usr/bin/qemu-aarch64-static").exists():
        return "qemu-user-static is not installed (tools/arm-board.sh build installs it)"
    if not Path("/proc/sys/fs/binfmt_misc").is_dir():
        return "this kernel has no binfmt_misc, so aarch64 binaries cannot run here"
    return None


def _running_port(d: Path) -> int | None:
    pid, port = d / "board" / "pid", d / "board" / "port"
    if not (pid.exists() and port.exists()):
        return None
    try:
        alive = b"sshd" in Path(f"/proc/{int(pid.read_text())}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return int(port.read_text()) if alive else None


def start() -> ArmBoard:
    """Starts the board's sshd on a free port, or reuses a running one; RuntimeError with the
    script's output when it does not come up."""
    d = board_dir()
    port = _running_port(d)
    if port is not None:
        return ArmBoard(d, port, owned=False)
    port = free_port()
    r = subprocess.run([str(SCRIPT), "start", str(d), str(port)], capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        raise RuntimeError(f"tools/arm-board.sh start failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return ArmBoard(d, port, owned=True)


def binfmt_refused() -> bool:
    """Whether the kernel lacks an enabled qemu-aarch64 handler (absence, not a board failure)."""
    try:
        text = BINFMT.read_text()
    except OSError:
        return True
    return not text.startswith("enabled")


def stop(board: ArmBoard) -> None:
    if board.owned:
        subprocess.run([str(SCRIPT), "stop", str(board.dir)], capture_output=True, text=True, timeout=60)

"""A real OpenSSH server on 127.0.0.1 for the device tests: throwaway host and client keys, a free
port, started in ~50 ms with ``sshd -D -e -f CFG`` (no systemd) and stopped by PID."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class Board:
    dir: Path
    port: int
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "sshd.log", "ab"),
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        """Stops the listener and every session it forked (a link dying mid-run)."""
        if self.proc is None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_sessions(self.dir)
        self.proc.wait()
        self.proc = None

    def inventory(self, path: Path, **overrides) -> Path:
        """An inventory with one device, ``board``, reaching this server."""
        fields = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": getpass.getuser(),
            "key": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "python": sys.executable,
            "workdir": str(self.dir / "work"),
            "runtimes": ["onnxruntime", "litert", "openvino"],
            "connect_timeout": 5,
            "keepalive_s": 1,
        }
        fields.update(overrides)
        lines = ["[devices.board]"]
        for k, v in fields.items():
            if isinstance(v, str):
                lines.append(f"{k} = {v!r}".replace("'", '"'))
            elif isinstance(v, list):
                lines.append(f"{k} = [{', '.join(repr(x).replace(chr(39), chr(34)) for x in v)}]")
            elif isinstance(v, dict):
                lines.append(f"{k} = {{ {', '.join(f'{a} = {b!r}'.replace(chr(39), chr(34)) for a, b in v.items())} }}")
            else:
                lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
        path.write_text("\n".join(lines) + "\n")
        return path


def descendants(pid: int) -> list[int]:
    """Every process forked below ``pid`` (sshd forks one process per connection, then per session)."""
    out = []
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        out += [int(child), *descendants(int(child))]
    return out


def kill_sessions(directory: Path) -> None:
    """Session processes forked by sshd carry no config path; find them by the run dir they work in."""
    out = subprocess.run(["pgrep", "-f", str(directory / "work")], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def make_board(directory: Path) -> Board:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "work").mkdir(exist_ok=True)
    keygen(directory / "host_key")
    keygen(directory / "client_key")
    (directory / "authorized_keys").write_text((directory / "client_key.pub").read_text())
    os.chmod(directory / "authorized_keys", 0o600)
    port = free_port()
    (directory / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {directory / "host_key"}
AuthorizedKeysFile {directory / "authorized_keys"}
PidFile {directory / "sshd.pid"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
MaxStartups 100
MaxSessions 50
""")
    host_pub = (directory / "host_key.pub").read_text().split()
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return Board(directory, port, directory / "client_key", directory / "known_hosts")


def sshd_available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh-keygen") is not None

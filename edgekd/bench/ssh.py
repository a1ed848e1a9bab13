"""A board reached over SSH (asyncssh), behind the same synchronous Device interface as LocalDevice.

Every remote command is built from a list with ``shlex.join``: no inventory string reaches a shell
unquoted. Host keys are verified against known_hosts unless the caller explicitly accepts a new one.
Each run works in its own remote directory, removed at the end; a directory left by a run whose link
died is removed on the next connect to that device.
"""

from __future__ import annotations

import asyncio
import errno
import json
import shlex
import time
import uuid
from pathlib import Path
from typing import Callable

from edgekd.bench.device import Device, RunOutput
from edgekd.bench.inventory import DeviceSpec
from edgekd.errors import (
    DeviceAuthError,
    DeviceConnectionLost,
    DeviceDiskFullError,
    DeviceUnreachableError,
    HostKeyError,
    InputNotFoundError,
    RemoteCommandError,
)

CONNECT_RETRIES = 2  # transient failures only: refused/timed-out connects, not auth or host-key errors


def pending_ledger() -> Path:
    return Path.home() / ".cache" / "edgekd" / "pending-remote-dirs.json"


def _ledger_update(device: str, path: str, add: bool) -> None:
    ledger = pending_ledger()
    data = json.loads(ledger.read_text()) if ledger.exists() else {}
    dirs = set(data.get(device, []))
    (dirs.add if add else dirs.discard)(path)
    data[device] = sorted(dirs)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    tmp = ledger.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(ledger)


def _ledger_pending(device: str) -> list[str]:
    ledger = pending_ledger()
    return json.loads(ledger.read_text()).get(device, []) if ledger.exists() else []


class SSHDevice(Device):
    def __init__(self, spec: DeviceSpec, accept_new_host_key: bool = False, command_timeout: float = 600.0):
        self.spec, self.name, self.python = spec, spec.name, spec.python
        self.accept_new_host_key = accept_new_host_key
        self.command_timeout = command_timeout
        self.loop = asyncio.new_event_loop()
        self.conn = None
        self.rundir: str | None = None

    # -- connection -----------------------------------------------------------------------------
    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def _known_hosts(self) -> str:
        return str(Path(self.spec.known_hosts or "~/.ssh/known_hosts").expanduser())

    def _host_label(self) -> str:
        """The host as known_hosts writes it: ``[host]:port`` off port 22."""
        return self.spec.host if not self.spec.port or self.spec.port == 22 else f"[{self.spec.host}]:{self.spec.port}"

    def _known_keys(self, known: str) -> int:
        """How many keys (and CA keys) known_hosts holds for this host; 0 when it does not know it."""
        import asyncssh

        if not Path(known).exists():
            return 0
        try:
            entries = asyncssh.read_known_hosts(known)
        except (ValueError, OSError) as e:
            raise HostKeyError(f"{self.name}: cannot read {known}: {e}", f"fix or move {known}") from e
        host_keys, ca_keys, *_ = entries.match(self.spec.host, "", self.spec.port or 22)
        return len(host_keys) + len(ca_keys)

    async def _connect(self, known: str, trust_on_first_use: bool):
        import asyncssh

        kwargs = dict(
            port=self.spec.port,
            username=self.spec.user,
            connect_timeout=self.spec.connect_timeout,
            keepalive_interval=self.spec.keepalive_s,
            keepalive_count_max=3,
        )
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if self.spec.key:
            kwargs["client_keys"] = [str(Path(self.spec.key).expanduser())]
        # OpenSSH's accept-new: only a host known_hosts has no key for is trusted on first use; a
        # known host is always verified, so a changed key is refused.
        kwargs["known_hosts"] = None if trust_on_first_use else (known if Path(known).exists() else ())
        conn = await asyncssh.connect(self.spec.host, **kwargs)
        if trust_on_first_use:
            self._record_host_key(conn, known)
        return conn

    def _record_host_key(self, conn, known: str) -> None:
        key = conn.get_server_host_key()
        line = f"{self._host_label()} {key.export_public_key().decode().strip()}\n"
        path = Path(known)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line)

    def _host_key_error(self, known: str, known_keys: int, where: str, e: Exception) -> HostKeyError:
        if known_keys:
            return HostKeyError(
                f"{self.name} ({where}): the host key CHANGED: it matches none of the {known_keys} key(s) "
                f"{known} holds for {self._host_label()} ({e}). Someone may be intercepting the connection, "
                "or the board was reinstalled",
                f"verify the board's new key out of band; if it is right, remove the old one with "
                f"`ssh-keygen -R {shlex.quote(self._host_label())} -f {shlex.quote(known)}` and connect again",
            )
        return HostKeyError(
            f"{self.name} ({where}): host key not verified: {known} has no key for {self._host_label()}"
        )

    def connect(self) -> None:
        import asyncssh

        where = f"{self.spec.host}:{self.spec.port or 22}"
        if self.spec.key and not Path(self.spec.key).expanduser().is_file():
            raise InputNotFoundError(
                f"{self.name}: the SSH key {self.spec.key} does not exist",
                f"fix key = ... for {self.name} in {self.spec.source or 'the inventory'}, "
                "or remove it to use ssh-agent / ~/.ssh defaults",
            )
        known = self._known_hosts()
        known_keys = self._known_keys(known)
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                self.conn = self._run(self._connect(known, self.accept_new_host_key and not known_keys))
                return
            except asyncssh.HostKeyNotVerifiable as e:
                raise self._host_key_error(known, known_keys, where, e) from e
            except asyncssh.PermissionDenied as e:
                raise DeviceAuthError(
                    f"{self.name} ({where}): authentication refused for user {self.spec.user or '(default)'}: {e}"
                ) from e
            except (ConnectionRefusedError, asyncio.TimeoutError, TimeoutError, OSError, asyncssh.DisconnectError) as e:
                if attempt == CONNECT_RETRIES:
                    what = (
                        "timed out"
                        if isinstance(e, (asyncio.TimeoutError, TimeoutError))
                        else "refused (nothing listens on that port)"
                        if isinstance(e, ConnectionRefusedError)
                        else str(e)
                    )
                    raise DeviceUnreachableError(
                        f"{self.name} ({where}): connection {what} after {CONNECT_RETRIES + 1} attempts"
                    ) from e
                time.sleep(0.5 * (attempt + 1))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            try:
                self._run(self.conn.wait_closed())
            except Exception:
                pass
            self.conn = None

    # -- Device ---------------------------------------------------------------------------------
    def __enter__(self) -> "SSHDevice":
        self.connect()
        for stale in _ledger_pending(self.name):
            self.exec(["rm", "-rf", "--", stale], timeout=60)
            _ledger_update(self.name, stale, add=False)
        rundir = f"{self.spec.workdir.rstrip('/')}/edgekd-run-{uuid.uuid4().hex[:12]}"
        _ledger_update(self.name, rundir, add=True)
        self.exec(["mkdir", "-p", "--", rundir], timeout=60)
        self.rundir = rundir
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.conn is not None and self.rundir:
                self.exec(["rm", "-rf", "--", self.rundir], timeout=60)
                _ledger_update(self.name, self.rundir, add=False)
        except Exception:
            pass  # the ledger keeps it; the next connect removes it
        finally:
            self.close()
            self.loop.close()

    def upload(self, local: Path, name: str) -> str:
        import asyncssh

        remote = f"{self.rundir}/{name}"

        async def put():
            async with self.conn.start_sftp_client() as sftp:
                await sftp.put(str(local), remote)

        try:
            self._run(put())
        except (asyncssh.SFTPFailure, asyncssh.SFTPError, OSError) as e:
            if "space" in str(e).lower() or getattr(e, "errno", None) == errno.ENOSPC or self._no_room_for(local):
                raise DeviceDiskFullError(
                    f"{self.name}: no space left in {self.spec.workdir} while uploading {name}"
                ) from e
            if isinstance(e, asyncssh.SFTPConnectionLost):
                raise DeviceConnectionLost(f"{self.name}: connection lost while uploading {name}") from e
            raise RemoteCommandError(f"{self.name}: upload of {name} to {remote} failed: {e}") from e
        except asyncssh.Error as e:
            raise DeviceConnectionLost(f"{self.name}: connection lost while uploading {name}: {e}") from e
        return remote

    def _no_room_for(self, local: Path) -> bool:
        """SFTP v3 reports a full disk as a bare "Failure": ask df how much room the run dir has."""
        try:
            out = self.exec(["df", "-Pk", "--", self.rundir], timeout=30).stdout.splitlines()
            available_kb = int(out[-1].split()[3])
        except Exception:
            return False
        return available_kb * 1024 < local.stat().st_size + 64 * 1024

    def fetch(self, remote: str, local: Path) -> None:
        import asyncssh

        async def get():
            async with self.conn.start_sftp_client() as sftp:
                await sftp.get(remote, str(local))

        try:
            self._run(get())
        except asyncssh.SFTPError as e:
            raise RemoteCommandError(f"{self.name}: cannot fetch {remote}: {e}") from e
        except asyncssh.Error as e:
            raise DeviceConnectionLost(f"{self.name}: connection lost while fetching {remote}: {e}") from e

    def command(self, argv: list[str], timeout: float) -> str:
        """The shell line for ``argv``: every word quoted, in the run dir, under ``timeout -k``."""
        env = [f"{k}={v}" for k, v in self.spec.env]
        words = ["timeout", "-k", "5", str(int(timeout))] + (["env", *env] if env else []) + list(argv)
        cd = f"cd {shlex.quote(self.rundir)} && " if self.rundir else ""
        return cd + shlex.join(words)

    def exec(self, argv: list[str], timeout: float) -> RunOutput:
        """Runs a short command; a non-zero exit is an error carrying its stderr tail."""
        out = self.run(argv, timeout)
        if out.returncode != 0:
            raise RemoteCommandError(
                f"{self.name}: `{shlex.join(argv)}` exited {out.returncode}: "
                f"{out.stderr.strip()[-600:] or out.stdout.strip()[-600:]}"
            )
        return out

    def run(self, argv: list[str], timeout: float, on_stderr_line: Callable[[str], None] | None = None) -> RunOutput:
        import asyncssh

        line = self.command(argv, timeout)

        async def go():
            proc = await self.conn.create_process(line)
            err_lines: list[str] = []

            async def pump_err():
                async for line in proc.stderr:
                    err_lines.append(line)
                    if on_stderr_line:
                        on_stderr_line(line.rstrip("\n"))

            out_task = asyncio.ensure_future(proc.stdout.read())
            try:
                await pump_err()
                stdout = await out_task
            finally:
                if not out_task.done():
                    out_task.cancel()
                elif not out_task.cancelled():
                    out_task.exception()  # retrieved here, so a dropped link is reported once, by us
            completed = await proc.wait()
            if completed.exit_status in (None, -1) or completed.exit_signal is not None:
                await asyncio.sleep(0.2)  # let a dropped link be noticed before judging the exit
                if self.conn.is_closed() or completed.exit_status in (None, -1):
                    raise asyncssh.ConnectionLost("the channel closed without an exit status")
            return RunOutput(completed.exit_status if completed.exit_status >= 0 else 255, stdout, "".join(err_lines))

        try:
            out = self._run(asyncio.wait_for(go(), timeout + 30))
        except asyncio.TimeoutError as e:
            raise RemoteCommandError(f"{self.name}: `{argv[0]}` did not finish within {timeout:.0f} s") from e
        except (
            asyncssh.ConnectionLost,
            asyncssh.DisconnectError,
            asyncssh.ChannelOpenError,
            BrokenPipeError,
            ConnectionResetError,
        ) as e:
            raise DeviceConnectionLost(f"{self.name}: connection lost while running `{argv[0]}`: {e}") from e
        if out.returncode == 124:
            raise RemoteCommandError(f"{self.name}: `{argv[0]}` ran past {timeout:.0f} s and was stopped (timeout -k)")
        if "No space left on device" in out.stderr:
            raise DeviceDiskFullError(f"{self.name}: no space left on the device: {out.stderr.strip()[-300:]}")
        return out

"""Writing an artifact directory atomically: built in a temporary sibling, renamed into place only when
complete. A compile killed outright (SIGKILL, power loss) leaves its sibling behind; the next compile to
the same output removes it once its process is gone, and says so."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from edgekd.errors import OutputWriteError
from edgekd.outputs import check_artifact_output

MARKER = ".edgekd-partial"  # inside every temporary sibling: the process that writes it
NAME_MAX = 255
_TMP, _OLD = "edgekd-tmp", "edgekd-old"


def _stem(name: str) -> str:
    """The output's name in sibling names, shortened (with a hash) so that a sibling stays within NAME_MAX."""
    room = NAME_MAX - len(f"..{_TMP}-{os.getpid()}-") - 16  # mkdtemp's random part and margin
    if len(name) <= room:
        return name
    return f"{name[: room - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def stale_siblings(out: Path) -> list[Path]:
    """Temporary siblings of ``out`` left by edgekd processes that no longer run."""
    stale = []
    if not out.parent.is_dir():
        return stale
    for kind in (_TMP, _OLD):
        for p in out.parent.glob(f".{_stem(out.name)}.{kind}-*"):
            try:
                pid = int((p / MARKER).read_text().strip())
            except (OSError, ValueError):
                continue  # not ours (no marker), or still being set up
            if not _alive(pid):
                stale.append(p)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ArtifactWriter:
    """``with ArtifactWriter(out, force, inputs) as tmp:`` build into ``tmp``; on success it becomes ``out``.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and ``out``,
    if it existed, is left exactly as it was. What may be replaced is decided by ``edgekd.outputs``;
    a symlinked ``out`` is written where it points, so the link stays. ``removed`` lists the stale
    siblings of killed compiles that were cleaned up on entry.
    """

    def __init__(self, out: str | Path, force: bool = False, inputs=()):
        self.requested = Path(out)
        self.force, self.inputs = force, tuple(inputs)
        self.out = check_artifact_output(self.requested, force, self.inputs)
        self.tmp: Path | None = None
        self.removed: list[Path] = []

    def _sibling(self, kind: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f".{_stem(self.out.name)}.{kind}-{os.getpid()}-", dir=self.out.parent))
        (path / MARKER).write_text(str(os.getpid()))
        return path

    def __enter__(self) -> Path:
        self.out = check_artifact_output(self.requested, self.force, self.inputs)
        # Parent folders this writer creates, outermost first; removed again (when empty) on failure.
        self._made_parents = [p for p in reversed(self.out.parents) if not p.exists()]
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            for stale in stale_siblings(self.out):
                shutil.rmtree(stale, ignore_errors=True)
                self.removed.append(stale)
            self.tmp = self._sibling(_TMP)
            os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; an artifact follows the umask
        except OSError as e:
            self._discard()
            raise OutputWriteError.from_os_error(f"cannot create the artifact beside {self.out}", e) from e
        return self.tmp

    def _discard(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for p in reversed(self._made_parents):
            try:
                p.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            if issubclass(exc_type, OSError) and not isinstance(exc, OutputWriteError):
                raise OutputWriteError.from_os_error(f"writing the artifact {self.out} failed", exc) from exc
            return False
        old = None
        try:
            check_artifact_output(self.requested, self.force, self.inputs)  # someone may have created it meanwhile
            (self.tmp / MARKER).unlink()
            if self.out.exists():
                old = self._sibling(_OLD)
                shutil.rmtree(old)
                os.rename(self.out, old)
            os.rename(self.tmp, self.out)
        except BaseException as e:
            if old is not None and old.exists() and not self.out.exists():
                os.rename(old, self.out)
            self._discard()
            if isinstance(e, OSError):
                raise OutputWriteError.from_os_error(f"moving the artifact into {self.out} failed", e) from e
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False

"""Every error edgekd raises on purpose, each with a hint that says what to do.

The CLI prints ``message`` and ``hint`` and exits with ``exit_code``; the API raises them as is.
"""

from __future__ import annotations


class EdgekdError(Exception):
    """Base of all edgekd errors."""

    exit_code = 2
    default_hint = ""

    def __init__(self, message: str, hint: str | None = None, output=None):
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        self.output = output  # a failing pass's record of what it found, kept in a --keep-failed manifest

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class InputNotFoundError(EdgekdError):
    default_hint = "check the path; relative paths are taken from the current directory"


class UnknownNameError(EdgekdError):
    """A name (target, pass, model, option value) that is not one of the known ones."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...], hint: str | None = None):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(
            f"unknown {kind} {name!r}",
            hint or f"valid: {', '.join(self.valid) if self.valid else '(none)'}",
        )


class UnknownTargetError(UnknownNameError):
    def __init__(self, name: str, valid: list[str]):
        super().__init__(
            "target",
            name,
            valid,
            hint=f"valid targets: {', '.join(sorted(valid))}; or pass the path of a target spec .toml",
        )


class ConfigError(EdgekdError):
    default_hint = "see `edgekd compile --help` and the README for the accepted values"


class CorruptModelError(EdgekdError):
    default_hint = (
        "re-export the model; edgekd reads TorchScript .pt, torch.export .pt2, ONNX .onnx, or a factory plus state_dict"
    )


class PickleRefusedError(EdgekdError):
    default_hint = (
        "loading a pickled module runs code from the file; save a TorchScript (torch.jit.script/trace) "
        "or a state_dict with a factory instead, or pass --allow-pickle if you trust the file"
    )


class FactoryError(EdgekdError):
    default_hint = "write it as package.module:function (a zoo name like resnet20 or mobilenetv2:0.5 also works)"


class InputShapeError(EdgekdError):
    default_hint = "pass --input-shape N,C,H,W matching what the model was trained on"


class OutputExistsError(EdgekdError):
    default_hint = "choose another -o directory or pass --force to replace it"


class OutputRefusedError(EdgekdError):
    """An output path edgekd will not write over, even with --force: it holds something of the user's."""

    default_hint = "choose a new path for -o"


class ArtifactError(EdgekdError):
    """An artifact directory whose manifest is broken or incomplete."""

    default_hint = "recompile it with `edgekd compile`; an artifact's files must not be edited by hand"


class ToolchainMissingError(EdgekdError):
    exit_code = 3


class PreconditionError(EdgekdError):
    default_hint = "run the passes it requires first, or leave --passes unset to get the target's default pipeline"


def filesystem_hint(error: BaseException) -> str | None:
    """What to do about an OSError the user's machine caused (full disk, read-only, permissions, long
    names); None for one that is not theirs."""
    import errno

    if not isinstance(error, OSError):
        return None
    return {
        errno.ENOSPC: "free space on that filesystem (or write elsewhere) and run again",
        errno.EDQUOT: "your disk quota is spent: free space (or write elsewhere) and run again",
        errno.EROFS: "that filesystem is read-only: write to another place",
        errno.EACCES: "you may not write there: fix its permissions or write to another place",
        errno.EPERM: "you may not write there: fix its permissions or write to another place",
        errno.ENAMETOOLONG: "the file name is too long for this filesystem: choose a shorter name",
        errno.ENOTDIR: "a path component is a file, not a folder: check the path",
    }.get(error.errno)


class OutputWriteError(EdgekdError):
    """Writing the artifact (or a result) failed on the user's filesystem."""

    default_hint = "check that the output folder is writable and has free space"

    @classmethod
    def from_os_error(cls, what: str, error: OSError) -> "OutputWriteError":
        where = f" ({error.filename})" if error.filename else ""
        return cls(f"{what}: {error.strerror or error}{where}", filesystem_hint(error))


class PassFailedError(EdgekdError):
    def __init__(self, pass_name: str, ran_before: list[str], cause: BaseException):
        self.pass_name, self.ran_before, self.cause = pass_name, ran_before, cause
        before = ", ".join(ran_before) if ran_before else "none"
        if isinstance(cause, OSError) and filesystem_hint(cause):
            inner = f"{cause.strerror}" + (f" ({cause.filename})" if cause.filename else "")
        else:
            inner = cause.message if isinstance(cause, EdgekdError) else f"{type(cause).__name__}: {cause}"
        hint = (
            cause.hint
            if isinstance(cause, EdgekdError) and cause.hint
            else filesystem_hint(cause)
            or ("set EDGEKD_DUMP_IR=DIR to save the model after each pass, and report the error with it")
        )
        super().__init__(f"pass {pass_name!r} failed (passes that ran before it: {before}): {inner}", hint)


class FidelityError(EdgekdError):
    """The artifact computes something other than its reference."""

    default_hint = "--keep-failed keeps the artifact and the manifest with the fidelity figures"


class BenchmarkError(EdgekdError):
    default_hint = "run the same command with -v to see the runner's output"


class DataError(EdgekdError):
    default_hint = "point at an image folder (with or without class subfolders) or a .npy/.npz array"


class DetectionDataError(DataError):
    default_hint = (
        "a YOLO dataset is a data.yaml (path, train, val, names) with images/ and labels/ folders side by "
        "side; a COCO dataset is one annotation .json (images, annotations, categories) and its image folder"
    )


class AccuracyBudgetError(EdgekdError):
    default_hint = "raise --max-drop, calibrate on more or better samples (--calib-method), or use --precision fp32"


class SearchError(EdgekdError):
    """A search over precisions or students found nothing to ship (every candidate failed, or none fits)."""

    default_hint = "see the candidates table above; loosen --max-drop or --latency-budget, or add candidates"


class OpsetConversionError(EdgekdError):
    """The model's opset is outside the target's range and ONNX's version converter cannot move it."""

    default_hint = "re-export the model at an opset inside the target's range (`edgekd targets --explain T` shows it)"


class UnsupportedOpsError(EdgekdError):
    default_hint = "run `edgekd inspect MODEL --target T` for the full list; change the model or pick another target"


class DeviceError(EdgekdError):
    """A device could not be used; subclasses say why."""

    default_hint = "run `edgekd devices check NAME` to see what the device reports"


class DeviceUnreachableError(DeviceError):
    default_hint = "check the host and port in the inventory, that the board is on, and that sshd runs on it"


class DeviceAuthError(DeviceError):
    default_hint = (
        "check user and key in the inventory (or ~/.ssh/config); the key's public half must be in the board's "
        "authorized_keys"
    )


class HostKeyError(DeviceError):
    default_hint = (
        "the board's host key is not in known_hosts (or changed); verify it, then connect once with "
        "--accept-new-host-key to record it"
    )


class DeviceConnectionLost(DeviceError):
    default_hint = "the link dropped mid-run; the run's remote directory is removed on the next connect — run again"


class RemoteCommandError(DeviceError):
    default_hint = "the command's stderr tail is above; fix the board's environment and run again"


class DeviceDiskFullError(DeviceError):
    default_hint = "free space in the device's workdir (or point workdir elsewhere in the inventory)"


class TrtexecParseError(EdgekdError):
    """trtexec's output holds no complete performance summary; the message ends with the output's last lines."""

    default_hint = (
        "trtexec failed or its output was cut off: run the same trtexec command on the board "
        "(add --verbose) and read why"
    )


class TrainingDivergedError(EdgekdError):
    default_hint = (
        "the loss became NaN/Inf; lower the learning rate, set a loss clip (e.g. 0.3), "
        "and resume from the last good checkpoint in the output's checkpoints folder"
    )


class DistributedStateError(EdgekdError):
    """Data-parallel workers disagree (their weights drifted apart)."""


class QATError(EdgekdError):
    """Quantization-aware training cannot run this graph (an operator it has no torch kernel for, outputs that
    are not classifier logits)."""

    default_hint = "compile without --qat-epochs (post-training quantization), or with a classifier graph QAT can run"

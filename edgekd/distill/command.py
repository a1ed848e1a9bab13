"""The body of ``edgekd distill``: teacher + student name + data → the student's weights on disk, its JSON
record and training curves beside them; data-parallel under torchrun, the first worker writes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from edgekd.errors import ConfigError
from edgekd.outputs import check_file_output


def is_distill_record(path: Path) -> bool:
    """The JSON record `edgekd distill` writes beside a student's weights."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"student", "teacher_sha256"} <= data.keys()


def check_outputs(output: Path, force: bool, inputs: list[Path | None]) -> None:
    """Refuses, before any training, an -o that is an input or a file edgekd did not write."""
    record = output.with_suffix(".json")
    if output.suffix == ".json":
        raise ConfigError(
            f"-o {output} ends in .json, the name of the record written beside the weights",
            "name the weights file .pt, e.g. -o student.pt",
        )
    for path in (output, record):
        check_file_output(path, force, lambda _: is_distill_record(record), inputs)


def distill_to_file(
    resolved,
    student: str,
    data: Path,
    output: Path,
    cfg,
    progress: Callable | None = None,
    init: Path | None = None,
    replay: Path | None = None,
    replay_size: int = 5000,
) -> dict:
    """Trains ``student`` from the resolved teacher (edgekd.frontend.ResolvedModel) and writes the files.

    Incremental update: ``init`` is the student's current weights and ``replay`` a replay-buffer file (.npz,
    created with ``replay_size`` samples if missing); earlier samples are mixed into every step and the new
    data join the buffer, which is written back."""
    from edgekd.distill.distributed import join
    from edgekd.distill.onnx_teacher import OnnxTeacher
    from edgekd.distill.replay import ReplayBuffer
    from edgekd.distill.student import distill_student
    from edgekd.ir.profile import profile_onnx
    from edgekd.models.profile import profile

    loaded, inp = resolved.loaded, resolved.input
    shape = tuple(inp.shape)
    if loaded.kind == "onnx":
        teacher, teacher_profile = OnnxTeacher(loaded.onnx_proto), profile_onnx(loaded.onnx_proto)
    else:
        teacher, teacher_profile = loaded.torch_module.eval(), profile(loaded.torch_module, shape)
    world = join()
    buffer = None
    if replay is not None:
        buffer = ReplayBuffer.load(replay, cfg.seed) if replay.exists() else ReplayBuffer(replay_size, cfg.seed)
    net, record = distill_student(
        teacher,
        teacher_profile,
        student,
        data,
        inp.preprocess,
        shape,
        cfg,
        output.with_name(output.name + ".training") if world.is_main else None,
        progress,
        init,
        buffer,
    )
    metrics = {
        **asdict(record),
        "teacher": loaded.source,
        "teacher_sha256": loaded.sha256,
        "workers": world.size,
        "input": {"shape": list(shape), "mean": list(inp.preprocess.mean), "std": list(inp.preprocess.std)},
    }
    if world.is_main:
        _write(net, metrics, output)
        if buffer is not None:
            buffer.save(replay)
    world.barrier()
    return metrics


def _write(net, metrics: dict, output: Path) -> None:
    import torch

    from edgekd.artifact import write_json

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
    tmp.replace(output)
    write_json(output.with_suffix(".json"), metrics)

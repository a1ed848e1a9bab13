"""Teacher (PyTorch, or ONNX run in ONNX Runtime) → a smaller student from the zoo, trained by knowledge
distillation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from edgekd.config import CompileConfig
from edgekd.errors import ConfigError
from edgekd.passes.base import Pass, PassResult
from edgekd.runtime import torch_reference
from edgekd.specs import TargetSpec
from edgekd.state import ONNX_MODEL, TORCH_MODEL, CompileState, PassOutput

if TYPE_CHECKING:
    from edgekd.distill.student import DistillRecord
    from edgekd.distill.trainer import TrainConfig


@dataclass(frozen=True)
class DistillOutput(PassOutput):
    section = "distill"

    record: "DistillRecord"

    def to_manifest(self) -> dict:
        return asdict(self.record)


def require_data(config: CompileConfig, pass_name: str) -> None:
    if config.training.data is None:
        raise ConfigError(
            f"pass {pass_name!r} trains and needs training images",
            "pass --data DIR (an image folder, with class subfolders for labelled training or flat for "
            "label-free KD)"
            + ("; or --epochs 0 for one-shot magnitude pruning without fine-tuning" if pass_name == "sparsify" else ""),
        )


def train_config(config: CompileConfig, pass_name: str, **defaults):
    """The pass's TrainConfig: its defaults, then the user's options, checkpoints beside the output."""
    from edgekd.distill.options import checkpoint_root
    from edgekd.distill.options import train_config as from_options

    t = config.training
    fixed = {
        "epochs": t.epochs,
        "seed": config.seed,
        "resume": t.resume,
        "checkpoint_dir": checkpoint_root(config.output) / pass_name,
        **defaults,
    }
    return from_options(t.options, **fixed)


class DistillPass(Pass):
    name = "distill"
    requires = frozenset()  # a PyTorch teacher, or an ONNX one run in ONNX Runtime
    provides = frozenset({TORCH_MODEL})
    removes = frozenset({ONNX_MODEL})  # what is compiled from here on is the student

    def __init__(self, student: str, data, train: TrainConfig | None = None):
        from edgekd.distill.trainer import TrainConfig

        self.student, self.data = student, data
        self.train = train or TrainConfig()

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "DistillPass":
        require_data(config, cls.name)
        return cls(config.training.student, config.training.data, train_config(config, cls.name))

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return config.training.student is not None and bool({TORCH_MODEL, ONNX_MODEL} & facts)

    def run(self, state: CompileState) -> PassResult:
        from edgekd.distill.student import distill_student, epoch_reporter
        from edgekd.models.profile import profile

        shape = tuple(state.input.shape)
        if state.torch_model is not None:
            teacher = state.torch_model.eval()
            teacher_profile = profile(teacher, shape)
        else:
            import onnx_ir as ir

            from edgekd.distill.onnx_teacher import OnnxTeacher
            from edgekd.ir.profile import profile_onnx

            proto = ir.to_proto(state.onnx_model)
            teacher, teacher_profile = OnnxTeacher(proto), profile_onnx(proto)
        student, record = distill_student(
            teacher,
            teacher_profile,
            self.student,
            self.data,
            state.input.preprocess,
            shape,
            self.train,
            state.workdir / "training",
            epoch_reporter(state.emit, "distill"),
        )
        state.torch_model, state.onnx_model = student, None
        state.reference = state.float_reference = torch_reference(student)
        state.reference_name = f"distilled student {self.student} (PyTorch)"
        return PassResult(state, changed=True, output=DistillOutput(record))

"""Teacher nn.Module → a smaller student from the zoo, trained by knowledge distillation."""

from __future__ import annotations

from edgekd.models.reference import torch_reference
from edgekd.config import CompileConfig
from edgekd.errors import ConfigError
from edgekd.passes.base import Pass, PassResult
from edgekd.specs import TargetSpec
from edgekd.state import TORCH_MODEL, CompileState


def require_data(config: CompileConfig, pass_name: str) -> None:
    if config.data is None:
        raise ConfigError(f"pass {pass_name!r} trains and needs training images",
                          "pass --data DIR (an image folder, with class subfolders for labelled training or flat for "
                          "label-free KD)" + ("; or --epochs 0 for one-shot magnitude pruning without fine-tuning"
                                              if pass_name == "sparsify" else ""))


def train_config(config: CompileConfig, **overrides):
    from edgekd.distill.trainer import TrainConfig

    return TrainConfig(epochs=config.epochs, seed=config.seed, **overrides)


class DistillPass(Pass):
    name = "distill"
    requires = frozenset({TORCH_MODEL})
    provides = frozenset({TORCH_MODEL})

    def __init__(self, student: str, data, epochs: int = 10, seed: int = 0, train_overrides: dict | None = None):
        self.student, self.data, self.epochs, self.seed = student, data, epochs, seed
        self.train_overrides = dict(train_overrides or {})

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "DistillPass":
        require_data(config, cls.name)
        return cls(config.student, config.data, config.epochs, config.seed)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, initial_facts: set[str]) -> bool:
        return config.student is not None and TORCH_MODEL in initial_facts

    def run(self, state: CompileState) -> PassResult:
        import torch

        from edgekd.distill.trainer import TrainConfig, train_kd
        from edgekd.models.profile import profile
        from edgekd.models.zoo import build_model

        teacher = state.torch_model.eval()
        shape = tuple(state.input.shape)
        with torch.no_grad():
            t_out = teacher(torch.zeros(shape))
        if not isinstance(t_out, torch.Tensor) or t_out.dim() != 2:
            raise ConfigError("distillation needs a teacher with one logits output of shape [N, classes]",
                              "distil a classifier, or drop --student")
        student = build_model(self.student, num_classes=t_out.shape[1])
        with torch.no_grad():
            s_out = student.eval()(torch.zeros(shape))
        if tuple(s_out.shape) != tuple(t_out.shape):
            raise ConfigError(f"student {self.student!r} gives outputs of shape {tuple(s_out.shape)}, "
                              f"the teacher {tuple(t_out.shape)}", "pick a student for the same input size and classes")
        cfg = TrainConfig(**{"epochs": self.epochs, "seed": self.seed,
                             "checkpoint_dir": state.workdir / "training" / "checkpoints", **self.train_overrides})
        result = train_kd(teacher, student, self.data, state.input.preprocess, cfg, out_dir=state.workdir / "training")
        student.eval()
        tp, sp = profile(teacher, shape), profile(student, shape)
        state.torch_model = student
        state.reference = state.float_reference = torch_reference(student)
        state.reference_name = f"distilled student {self.student} (PyTorch)"
        metrics = {"student": self.student, "teacher_params": tp.params, "student_params": sp.params,
                   "teacher_macs": tp.macs, "student_macs": sp.macs, "teacher_val_top1": result.teacher_acc,
                   "student_val_top1": result.history[-1]["val_top1"] if result.history else None,
                   "best_val_top1": result.best_acc, "epochs": result.epochs_run,
                   "seconds": round(result.seconds, 3), "kept_samples": result.kept, "total_samples": result.total,
                   "final_train_loss": result.history[-1]["train_loss"] if result.history else None}
        state.metrics["distill"] = metrics
        return PassResult(state, changed=True, metrics=metrics)

"""Weight sparsity on the torch model: KD fine-tune against the dense model with a cubic ramp, or
one-shot magnitude pruning when epochs is 0."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from edgekd.config import CompileConfig
from edgekd.distill.schedules import Schedule
from edgekd.errors import ConfigError
from edgekd.passes.base import Pass, PassResult
from edgekd.passes.distill import require_data, train_config
from edgekd.runtime import torch_reference
from edgekd.specs import TargetSpec
from edgekd.state import TORCH_MODEL, CompileState, PassOutput

if TYPE_CHECKING:
    from edgekd.distill.trainer import TrainConfig


def gzip_bytes(model) -> int:
    """gzip'd size of the float weights: where unstructured zeros show up as a smaller download."""
    import gzip
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(gzip.compress(buf.getvalue(), 6))


@dataclass(frozen=True)
class SparsityOutput(PassOutput):
    section = "sparsity"

    sparsity: float
    pattern: str
    scope: str
    epochs: int
    weights_gzip_bytes_dense: int
    # the honest size gain: what the zeros save once compressed (no CPU runtime here runs sparse kernels)
    weights_gzip_bytes_sparse: int
    per_layer: dict
    val_top1: float | None = None  # KD fine-tune only
    teacher_val_top1: float | None = None
    seconds: float | None = None

    def to_manifest(self) -> dict:
        fine_tuned = ("val_top1", "teacher_val_top1", "seconds")
        return {k: v for k, v in asdict(self).items() if self.epochs > 0 or k not in fine_tuned}


class SparsifyPass(Pass):
    name = "sparsify"
    requires = frozenset({TORCH_MODEL})
    provides = frozenset({TORCH_MODEL})

    def __init__(
        self,
        sparsity: float,
        pattern: str = "unstructured",
        scope: str = "layer",
        data=None,
        epochs: int = 0,
        seed: int = 0,
        train: TrainConfig | None = None,
    ):
        if pattern not in ("unstructured", "2:4"):
            raise ConfigError(f"sparsity pattern must be unstructured or 2:4, got {pattern!r}")
        if not 0 <= sparsity < 1:
            raise ConfigError(f"sparsity must lie in [0, 1), got {sparsity}")
        self.sparsity, self.pattern, self.scope = sparsity, pattern, scope
        self.data, self.epochs, self.seed = data, epochs, seed
        self.train = train

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "SparsifyPass":
        t = config.training
        if t.epochs > 0:
            require_data(config, cls.name)
        # a KD fine-tune against the dense model: a low learning rate and a mild, constant temperature
        train = train_config(
            config,
            cls.name,
            lr=0.01,
            temperature=Schedule("constant", 2.0),
            sparsity=t.sparsity,
            pattern=t.sparsity_pattern,
        )
        return cls(t.sparsity, t.sparsity_pattern, train.scope, t.data, t.epochs, config.seed, train)

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        return config.training.sparsity is not None and TORCH_MODEL in facts

    def run(self, state: CompileState) -> PassResult:
        from edgekd.distill.student import epoch_reporter
        from edgekd.distill.trainer import TrainConfig, train_kd
        from edgekd.sparsity.masks import apply_masks, global_masks, magnitude_mask, nm_mask, prunable, sparsity_report

        model = state.torch_model
        dense_bytes = gzip_bytes(model)
        trained = {}
        if self.epochs > 0:
            teacher = copy.deepcopy(model).eval()
            cfg = self.train or TrainConfig(
                epochs=self.epochs,
                seed=self.seed,
                sparsity=self.sparsity,
                pattern=self.pattern,
                scope=self.scope,
                lr=0.01,
                temperature=Schedule("constant", 2.0),
            )
            result = train_kd(
                teacher,
                model,
                self.data,
                state.input.preprocess,
                cfg,
                out_dir=state.workdir / "training-sparsify",
                progress=epoch_reporter(state.emit, "sparsify"),
            )
            trained = {
                "val_top1": result.best_acc,
                "teacher_val_top1": result.teacher_acc,
                "seconds": round(result.seconds, 3),
            }
        else:
            layers = prunable(model)
            if self.pattern == "2:4":
                layers = {n: m for n, m in layers.items() if m.weight.shape[1] % 4 == 0}
                masks = {n: nm_mask(m.weight.detach()) for n, m in layers.items()}
            elif self.scope == "global":
                masks = global_masks({n: m.weight.detach() for n, m in layers.items()}, self.sparsity)
            else:
                masks = {n: magnitude_mask(m.weight.detach(), self.sparsity) for n, m in layers.items()}
            apply_masks(layers, masks)
        model.eval()
        output = SparsityOutput(
            self.sparsity,
            self.pattern,
            self.scope,
            self.epochs,
            dense_bytes,
            gzip_bytes(model),
            sparsity_report(model),
            **trained,
        )
        state.reference = state.float_reference = torch_reference(model)
        return PassResult(state, changed=True, output=output)

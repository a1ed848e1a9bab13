"""Distillation losses, each a plain function or small module on tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hinton_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over the batch (Hinton et al. 2015).

    The T² keeps the soft-target gradients on the same scale as the hard-label ones when T changes.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * t * t


def decoupled_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float | torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): α·TCKD + β·NCKD, each · T², averaged over the batch.

    TCKD is the KL divergence between the binary (target class, all others) probabilities of teacher and
    student; NCKD the one between their distributions over the non-target classes alone. Hinton KD is
    TCKD + (1 − p_t)·NCKD per sample (p_t: the teacher's target probability), so the teacher's confident
    samples all but switch off NCKD, the "dark knowledge"; DKD weighs it by a constant β instead.
    ``target`` holds the class per sample (the labels, or the teacher's top-1 without them).
    """
    t = temperature
    gt = F.one_hot(target, student_logits.shape[-1]).to(torch.bool)
    p_s = F.softmax(student_logits / t, dim=-1)
    p_t = F.softmax(teacher_logits / t, dim=-1)
    b_s = torch.stack([(p_s * gt).sum(-1), (p_s * ~gt).sum(-1)], dim=-1).clamp_min(1e-12)
    b_t = torch.stack([(p_t * gt).sum(-1), (p_t * ~gt).sum(-1)], dim=-1).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(-1).mean()
    masked = -1e9  # the target class leaves the non-target softmax (finite: no inf − inf in the KL)
    log_q_s = F.log_softmax((student_logits / t).masked_fill(gt, masked), dim=-1)
    log_q_t = F.log_softmax((teacher_logits / t).masked_fill(gt, masked), dim=-1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).masked_fill(gt, 0.0).sum(-1).mean()
    return (alpha * tckd + beta * nckd) * t * t


def kd_with_labels(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float | torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """α·KD + (1 − α)·CE(labels); KD alone when there are no labels (label-free distillation)."""
    kd = hinton_kd(student_logits, teacher_logits, temperature)
    if labels is None:
        return kd
    return alpha * kd + (1 - alpha) * F.cross_entropy(student_logits, labels)


class FeatureHint(nn.Module):
    """Hint loss between a student and a teacher feature map of the same spatial size (FitNets).

    A learned 1×1 conv adapts the student's channels to the teacher's when they differ.
    """

    def __init__(self, student_channels: int, teacher_channels: int, kind: str = "mse"):
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"feature loss must be mse or cosine, got {kind!r}")
        self.kind = kind
        self.adapter = (
            nn.Identity()
            if student_channels == teacher_channels
            else nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = self.adapter(student)
        if s.shape != teacher.shape:
            raise ValueError(
                f"paired features differ in shape: student {tuple(s.shape)} vs teacher {tuple(teacher.shape)}"
            )
        if self.kind == "mse":
            return F.mse_loss(s, teacher)
        return (1 - F.cosine_similarity(s.flatten(1), teacher.flatten(1), dim=1)).mean()


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention (Zagoruyko & Komodakis 2017): mean over channels of f², flattened, L2-normalised."""
    a = features.pow(2).mean(dim=1).flatten(1)
    return F.normalize(a, p=2, dim=1)


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between normalised attention maps, averaged over the batch."""
    return (attention_map(student) - attention_map(teacher)).pow(2).sum(dim=1).mean()


def clip_term(loss: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Scales a term down so its value is at most ``clip``; the gradient keeps its direction."""
    if clip is None or loss.detach() <= clip:
        return loss
    return loss * (clip / loss.detach())


def compensation_weights(
    terms: dict[str, torch.Tensor], params: list[torch.Tensor], base: dict[str, float], lo: float = 0.5, hi: float = 2.0
) -> dict[str, float]:
    """Loss-weight compensation: each term's weight × (mean gradient norm / its gradient norm), clamped
    to [lo, hi], so no term dominates the update just because its gradients are larger."""
    norms = {}
    for name, loss in terms.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        norms[name] = torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.tensor(0.0))).item()
    live = [n for n in norms.values() if n > 0]
    mean = sum(live) / len(live) if live else 0.0
    return {name: base[name] * (min(hi, max(lo, mean / n)) if n > 0 and mean > 0 else 1.0) for name, n in norms.items()}

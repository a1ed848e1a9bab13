"""Activation quantizers for quantization-aware training: one per Q/DQ pair the plan places.

A quantizer holds a range [lo, hi] and fake-quantizes with the scale and zero point the quantize pass
would derive from it (``edgekd.quant.fakequant.range_qparams``), so a trained range is written into the
QDQ graph unchanged. Two ways to move the range while training:

* ``learn`` (LSQ-style): lo and hi are parameters trained by the task gradient through the
  straight-through estimator (the LSQ gradient of a step size). Ranges differ in width by orders of
  magnitude and their gradients as much (the logits' range sees the loss directly), so each range's
  gradient is divided by its running RMS (as Adam does) and expressed in units of the range's width:
  every range then moves by about the same fraction of itself per step, whatever the weights' learning
  rate. An end at zero (a ReLU output's minimum) stays there: a tensor that is never negative needs
  no negative codes.
* ``ema``: lo and hi follow a moving average of each training batch's min and max, as the EMA
  calibration observer does (torch.ao's ``MovingAverageMinMaxObserver`` in QAT).

Fixed-range outputs (sigmoid, softmax) keep the parameters integer runtimes require.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.quant.fakequant import fake_quantize, range_qparams
from edgekd.quant.qparams import ActivationScheme, QParams, QScheme, resolve_scheme

RANGE_MODES = ("learn", "ema")
_RMS_DECAY = 0.99  # running mean of squared range gradients over about 100 steps
# A normalized gradient has size ~1 even when it is only rounding noise, so a range would move by the
# learning rate times its width every step; weights move about 20× less (|grad| / |w| ≈ 0.05 at a
# calibrated start on CIFAR-10 ResNets). This rate brings ranges to the weights' pace: at 10× it, ResNet-20's
# holdout top-1 fell a point in one epoch of QAT at lr 0.002.
RANGE_RATE = 0.1
_EPS = 1e-12


class _RelativeGrad(torch.autograd.Function):
    """Identity forward; backward, the gradient divided by its running RMS and times ``width``."""

    @staticmethod
    def forward(ctx, end, mean_square, steps, width):
        ctx.state = (mean_square, steps, width)  # running statistics: updated here, not saved versions
        return end.view_as(end)

    @staticmethod
    def backward(ctx, grad):
        mean_square, steps, width = ctx.state
        with torch.no_grad():
            steps += 1
            mean_square.mul_(_RMS_DECAY).add_((1 - _RMS_DECAY) * grad.double() ** 2)
            rms = torch.sqrt(mean_square / (1 - _RMS_DECAY**steps))  # bias-corrected, as Adam's
        return (grad / (rms + _EPS) * width * RANGE_RATE).to(grad.dtype), None, None, None


class RangeQuantizer(nn.Module):
    """One activation tensor's range, learned or EMA-updated, and its fake quantization."""

    def __init__(
        self, lo: float, hi: float, scheme: ActivationScheme, mode: str = "learn", averaging_constant: float = 0.01
    ):
        super().__init__()
        if mode not in RANGE_MODES:
            raise ConfigError(f"unknown range mode {mode!r}", f"use one of {', '.join(RANGE_MODES)}")
        self.policy, self.mode, self.averaging_constant = scheme, mode, averaging_constant
        # float64, as the observers keep ranges: at the start of training the quantizers compute exactly the
        # post-training qparams
        for name, value in (("lo", lo), ("hi", hi)):
            tensor = torch.tensor(float(value), dtype=torch.float64)
            if mode == "learn" and value != 0.0:
                setattr(self, name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        if mode == "learn":
            self.register_buffer("grad_mean_square", torch.zeros(2, dtype=torch.float64))
            self.register_buffer("grad_steps", torch.zeros(2, dtype=torch.float64))

    @property
    def scheme(self) -> QScheme:
        """The grid's scheme for the range as it is now: the one the quantize pass will write for that range
        (a scheme chosen by the range, e.g. by sign, follows the range as it trains)."""
        if isinstance(self.policy, QScheme):  # one scheme for every range: no read of the range needed
            return self.policy
        return resolve_scheme(self.policy, float(self.lo.detach()), float(self.hi.detach()))

    def qparams_tensors(self, scheme: QScheme | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) as float32 tensors; in training, with the relative gradient on learned ends."""
        scheme = scheme or self.scheme
        lo, hi = self.lo, self.hi
        if self.training and (lo.requires_grad or hi.requires_grad):
            width = (hi - lo).detach().abs().clamp_min(_EPS)
            ends = []
            for i, end in enumerate((lo, hi)):
                ends.append(
                    _RelativeGrad.apply(end, self.grad_mean_square[i], self.grad_steps[i], width)
                    if end.requires_grad
                    else end
                )
            lo, hi = ends
        return range_qparams(lo, hi, scheme)

    def observe(self, x: torch.Tensor) -> None:
        """EMA mode, training: move the range toward this batch's min and max."""
        if self.mode != "ema" or not self.training or x.numel() == 0:
            return
        with torch.no_grad():
            c = self.averaging_constant
            self.lo.copy_(self.lo + c * (x.min().double() - self.lo))
            self.hi.copy_(self.hi + c * (x.max().double() - self.hi))

    def forward(self, x: torch.Tensor, observe: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(x on the grid, the scale used) — the scale also sets a following layer's int32 bias scale."""
        if observe:
            self.observe(x)
        scheme = self.scheme  # once a step: a by-sign scheme reads the range off the tensors
        scale, zero_point = self.qparams_tensors(scheme)
        return fake_quantize(x, scale, zero_point, scheme), scale

    def no_weight_decay(self) -> list[nn.Parameter]:
        """Ranges are not weights: decay would shrink them toward zero (read by the trainer)."""
        return [p for p in (self.lo, self.hi) if isinstance(p, nn.Parameter)]

    def range(self) -> tuple[float, float]:
        return float(self.lo.detach()), float(self.hi.detach())

    def extra_repr(self) -> str:
        lo, hi = self.range()
        return f"mode={self.mode}, range=[{lo:.4g}, {hi:.4g}], scheme={self.scheme.dtype}"


class FixedQuantizer(nn.Module):
    """Parameters that never move: outputs whose range the function fixes (sigmoid, softmax)."""

    def __init__(self, qp: QParams):
        super().__init__()
        if qp.axis is not None:
            raise ConfigError("an activation is quantized per tensor", f"got per-channel qparams on axis {qp.axis}")
        self.scheme = qp.scheme
        self.register_buffer("scale", torch.tensor(np.float32(qp.scale)), persistent=False)
        self.register_buffer("zero_point", torch.tensor(float(qp.zero_point), dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, observe: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        return fake_quantize(x, self.scale, self.zero_point, self.scheme), self.scale

"""Fake quantization on torch tensors: the arithmetic of ``edgekd.quant.qparams``, with gradients.

The forward pass is ONNX QuantizeLinear → DequantizeLinear bit for bit, as ``qparams.fake_quantize``
computes it: float32 divide, round half to even, add the zero point, saturate to the dtype's full
range, subtract the zero point, multiply by the float32 scale. Scale and zero point come from a range
exactly as ``qparams_from_range`` computes them (float64, the scale rounded to float32 and never below
``SCALE_EPS``), so what trains is what the quantize pass will write.

The backward pass is the straight-through estimator: rounding passes gradients unchanged and
saturated values pass none, which gives a range the LSQ gradient (Esser et al., "Learned Step Size
Quantization", 2020).
"""

from __future__ import annotations

import torch

from edgekd.quant.qparams import SCALE_EPS, WEIGHT_INT8, QScheme

_INT32 = (-(2**31), 2**31 - 1)


class _RoundSTE(torch.autograd.Function):
    """torch.round (half to even, as np.rint and ONNX) forward; identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def dtype_limits(scheme: QScheme) -> tuple[int, int]:
    """The dtype's full range: QuantizeLinear saturates there even for a narrow-range scheme."""
    return (-128, 127) if scheme.dtype == "int8" else (0, 255)


def range_qparams(lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scale, float32 zero point) covering [lo, hi], as ``qparams_from_range`` computes them;
    differentiable in ``lo`` and ``hi`` (the zero point's rounding passes straight through)."""
    lo64 = torch.clamp(lo.double(), max=0.0)
    hi64 = torch.clamp(hi.double(), min=0.0)
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        scale = torch.clamp(torch.maximum(-lo64, hi64) / ((qmax - qmin) / 2), min=SCALE_EPS).float()
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((hi64 - lo64) / (qmax - qmin), min=SCALE_EPS).float()
    zero_point = torch.clamp(round_ste(qmin - lo64 / scale.double()), qmin, qmax).float()
    return scale, zero_point


class _FakeQuantize(torch.autograd.Function):
    """QuantizeLinear → DequantizeLinear in one step, with the straight-through gradients written out (a few
    elementwise passes backward instead of autograd through six ops): inside the range d/dx = 1,
    d/dscale = round(x/s) − x/s, d/dzero_point = 0; saturated, d/dx = 0, d/dscale = q − zp, d/dzero_point = −s."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, low: int, high: int):
        v = x / scale
        q = torch.round(v)
        range_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        rounding = q - v if range_grads else None
        q += zero_point
        inside = (q >= low).logical_and_(q <= high)
        q.clamp_(low, high).sub_(zero_point)  # q − zp: the centred code
        out = q * scale
        if range_grads:
            ctx.save_for_backward(inside, torch.where(inside, rounding, q), scale, zero_point)
        else:
            ctx.save_for_backward(inside)
        return out

    @staticmethod
    def backward(ctx, grad):
        inside = ctx.saved_tensors[0]
        grad_x = torch.where(inside, grad, 0.0)
        grad_scale = grad_zp = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, d_scale, scale, zero_point = ctx.saved_tensors
            if ctx.needs_input_grad[1]:
                grad_scale = (
                    torch.dot(grad.reshape(-1), d_scale.reshape(-1)).reshape(scale.shape)
                    if scale.dim() == 0
                    else (grad * d_scale).sum_to_size(scale.shape)
                )
            if ctx.needs_input_grad[2]:
                outside = (
                    grad.sum() - grad_x.sum()
                    if zero_point.dim() == 0
                    else (grad - grad_x).sum_to_size(zero_point.shape)
                )
                grad_zp = -outside * scale
        return (grad_x if ctx.needs_input_grad[0] else None), grad_scale, grad_zp, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear in float32; ``scale``/``zero_point`` broadcast against ``x``."""
    low, high = dtype_limits(scheme)
    return _FakeQuantize.apply(x, scale, zero_point, low, high)


def _channel_shape(ndim: int, axis: int, channels: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def weight_scale(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel symmetric int8 [-127, 127] scales, as ``qparams.weight_qparams`` computes them."""
    axis = axis % w.ndim
    others = [d for d in range(w.ndim) if d != axis]
    amax = w.detach().abs().amax(dim=others) if others else w.detach().abs()
    qmax, qmin = WEIGHT_INT8.qmax, WEIGHT_INT8.qmin
    return torch.clamp(amax.double() / ((qmax - qmin) / 2), min=SCALE_EPS).float()


def fake_quantize_weight(w: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the weight on its int8 grid, its per-channel scales); the scales follow the weight and pass no gradient."""
    scale = weight_scale(w, axis)
    shaped = scale.reshape(_channel_shape(w.ndim, axis % w.ndim, scale.numel()))
    return fake_quantize(w, shaped, torch.zeros_like(shaped), WEIGHT_INT8), scale


def fake_quantize_bias(b: torch.Tensor, input_scale: torch.Tensor, weight_scales: torch.Tensor) -> torch.Tensor:
    """int32 bias with scale = input scale × weight scale (float32 product), as ``qparams.quantize_bias``;
    the division in float64, as there."""
    bias_scale = (input_scale.detach().float() * weight_scales.detach().float()).expand_as(b)
    q = torch.clamp(round_ste(b.double() / bias_scale.double()), *_INT32)
    return q.float() * bias_scale

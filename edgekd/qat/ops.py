"""ONNX operators as torch functions, for running (and training) a fused ONNX graph in torch.

Each entry takes the node's description at build time, checks the attributes it supports (an
unsupported form is a QATError naming the node, before any training), and returns the function the
forward pass calls on the node's input tensors. The arithmetic follows ONNX Runtime's where the order
of float operations is fixed by the operator's definition (HardSigmoid, HardSwish).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.errors import QATError

Kernel = Callable[[Sequence["torch.Tensor | None"]], list[torch.Tensor]]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    op_type: str
    attrs: dict[str, Any]
    consts: tuple[np.ndarray | None, ...]  # each input's constant value, None for computed ones
    outputs: int
    shapes: tuple[tuple[int, ...] | None, ...] = ()  # each input's static shape in the graph (batch 1)

    def const(self, index: int, what: str) -> np.ndarray | None:
        """A constant input (None when the optional input is absent); a computed one is refused."""
        if not self.has_input(index):
            return None
        value = self.consts[index]
        if value is None:
            raise QATError(
                f"node {self.name!r} ({self.op_type}) computes its {what} at run time; QAT needs it constant"
            )
        return value

    def has_input(self, index: int) -> bool:
        return index < len(self.consts) and self.consts[index] is not ABSENT

    def fail(self, what: str) -> QATError:
        return QATError(f"node {self.name!r} ({self.op_type}): {what} is not supported in QAT")


ABSENT = np.zeros(0)  # marks an optional input left out (an empty name in ONNX)


def _pads(spec: NodeSpec, spatial: int) -> tuple[list[int], list[int] | None]:
    """(symmetric padding per spatial dim, or F.pad's list when begin and end differ)."""
    if spec.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise spec.fail(f"auto_pad={spec.attrs['auto_pad']}")
    pads = list(spec.attrs.get("pads", [0] * (2 * spatial)))
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return begin, None
    flat = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        flat += [b, e]
    return [0] * spatial, flat


def conv(spec: NodeSpec) -> Kernel:
    w = spec.const(1, "weight")
    if w is None or w.ndim not in (3, 4):
        raise spec.fail("a Conv that is not 1-D or 2-D with a constant weight")
    spatial = w.ndim - 2
    padding, explicit = _pads(spec, spatial)
    fn = F.conv2d if spatial == 2 else F.conv1d
    stride = list(spec.attrs.get("strides", [1] * spatial))
    dilation = list(spec.attrs.get("dilations", [1] * spatial))
    groups = int(spec.attrs.get("group", 1))

    def run(args):
        x = F.pad(args[0], explicit) if explicit else args[0]
        bias = args[2] if len(args) > 2 else None
        return [fn(x, args[1], bias, stride, padding, dilation, groups)]

    return run


def gemm(spec: NodeSpec) -> Kernel:
    alpha, beta = float(spec.attrs.get("alpha", 1.0)), float(spec.attrs.get("beta", 1.0))
    trans_a, trans_b = int(spec.attrs.get("transA", 0)), int(spec.attrs.get("transB", 0))

    def run(args):
        a, b = args[0], args[1]
        a = a.t() if trans_a else a
        y = F.linear(a, b) if trans_b else a @ b
        y = y * alpha if alpha != 1.0 else y
        c = args[2] if len(args) > 2 else None
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return [y]

    return run


def clip(spec: NodeSpec) -> Kernel:
    lo = spec.const(1, "min") if spec.has_input(1) else spec.attrs.get("min")
    hi = spec.const(2, "max") if spec.has_input(2) else spec.attrs.get("max")
    lo = None if lo is None else float(np.asarray(lo))
    hi = None if hi is None else float(np.asarray(hi))
    return lambda args: [torch.clamp(args[0], lo, hi)]


def hard_sigmoid(spec: NodeSpec) -> Kernel:
    alpha = float(np.float32(spec.attrs.get("alpha", 0.2)))
    beta = float(np.float32(spec.attrs.get("beta", 0.5)))
    return lambda args: [torch.clamp(args[0] * alpha + beta, 0.0, 1.0)]


def hard_swish(spec: NodeSpec) -> Kernel:
    sixth = float(np.float32(1.0 / 6.0))  # ONNX: x · HardSigmoid(x) with alpha 1/6, beta 0.5
    return lambda args: [args[0] * torch.clamp(args[0] * sixth + 0.5, 0.0, 1.0)]


def pool(kind: str) -> Callable[[NodeSpec], Kernel]:
    def make(spec: NodeSpec) -> Kernel:
        kernel = list(spec.attrs["kernel_shape"])
        if len(kernel) != 2:
            raise spec.fail(f"a {len(kernel)}-D pool")
        padding, explicit = _pads(spec, 2)
        stride = list(spec.attrs.get("strides", [1, 1]))
        ceil = bool(spec.attrs.get("ceil_mode", 0))
        if kind == "max":
            dilation = list(spec.attrs.get("dilations", [1, 1]))
            if spec.outputs > 1:
                raise spec.fail("MaxPool indices")

            def run(args):
                x = F.pad(args[0], explicit, value=float("-inf")) if explicit else args[0]
                return [F.max_pool2d(x, kernel, stride, padding, dilation, ceil)]

            return run
        include = bool(spec.attrs.get("count_include_pad", 0))
        if explicit:
            raise spec.fail("asymmetric AveragePool padding")
        return lambda args: [F.avg_pool2d(args[0], kernel, stride, padding, ceil, include)]

    return make


def reshape(spec: NodeSpec) -> Kernel:
    shape = [int(s) for s in spec.const(1, "shape")]
    allow_zero = int(spec.attrs.get("allowzero", 0))
    bound = spec.shapes[0] if spec.shapes else None
    if bound is not None:  # the shape this Reshape writes in the graph, bound to batch 1
        target = [bound[i] if s == 0 and not allow_zero else s for i, s in enumerate(shape)]
        if -1 in target:
            target[target.index(-1)] = int(np.prod(bound)) // -int(np.prod(target))

    def run(args):
        x = args[0]
        if bound is None:  # no static shape: the leading dimension is taken for the batch
            out = [x.shape[i] if s == 0 and not allow_zero else s for i, s in enumerate(shape)]
            if out and out[0] == 1 and x.dim() and x.shape[0] != 1:
                out[0] = x.shape[0]
            return [x.reshape(out)]
        # A batch of B samples is B graphs' values one after another (the batch is the outermost axis of
        # every tensor), so the output's leading dimension grows B times, whatever that dimension holds
        # (ViT's attention folds the heads into it: [12, 197, 64] at batch 1).
        batch = x.numel() // max(int(np.prod(bound)), 1)
        return [x.reshape([target[0] * batch, *target[1:]])]

    return run


def flatten(spec: NodeSpec) -> Kernel:
    axis = int(spec.attrs.get("axis", 1))

    def run(args):
        x = args[0]
        a = axis % x.dim() if x.dim() else 0
        return [x.reshape(int(np.prod(x.shape[:a])), -1)]

    return run


def _axes(spec: NodeSpec, index: int) -> list[int] | None:
    if spec.has_input(index):
        return [int(a) for a in spec.const(index, "axes")]
    axes = spec.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def squeeze(spec: NodeSpec) -> Kernel:
    axes = _axes(spec, 1)
    return lambda args: [args[0].squeeze(tuple(axes)) if axes is not None else args[0].squeeze()]


def unsqueeze(spec: NodeSpec) -> Kernel:
    axes = _axes(spec, 1)

    def run(args):
        x = args[0]
        for a in sorted(a % (x.dim() + len(axes)) for a in axes):
            x = x.unsqueeze(a)
        return [x]

    return run


def split(spec: NodeSpec) -> Kernel:
    axis = int(spec.attrs.get("axis", 0))
    sizes = spec.const(1, "split sizes") if spec.has_input(1) else spec.attrs.get("split")

    def run(args):
        x = args[0]
        if sizes is not None:
            return list(torch.split(x, [int(s) for s in sizes], dim=axis))
        return list(torch.tensor_split(x, spec.outputs, dim=axis))

    return run


def slice_(spec: NodeSpec) -> Kernel:
    starts, ends = spec.const(1, "starts"), spec.const(2, "ends")
    axes = spec.const(3, "axes") if spec.has_input(3) else np.arange(len(starts))
    steps = spec.const(4, "steps") if spec.has_input(4) else np.ones(len(starts), np.int64)
    if np.any(np.asarray(steps) <= 0):
        raise spec.fail("a Slice with a non-positive step")

    def run(args):
        x = args[0]
        index = [slice(None)] * x.dim()
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            n = x.shape[int(a)]
            index[int(a)] = slice(max(-n, min(int(s), n)), max(-n, min(int(e), n)), int(st))
        return [x[tuple(index)]]

    return run


def resize(spec: NodeSpec) -> Kernel:
    mode = spec.attrs.get("mode", "nearest")
    transform = spec.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest = spec.attrs.get("nearest_mode", "round_prefer_floor")
    scales = spec.const(2, "scales") if spec.has_input(2) else None
    if scales is not None and scales.size == 0:
        scales = None
    sizes = spec.const(3, "sizes") if spec.has_input(3) else None
    if mode != "nearest" or transform != "asymmetric" or nearest != "floor":
        raise spec.fail(
            f"Resize mode={mode}, coordinate_transformation_mode={transform}, nearest_mode={nearest} "
            "(QAT runs nearest/asymmetric/floor, what torch's Upsample exports)"
        )

    def run(args):
        x = args[0]
        if sizes is not None:
            return [F.interpolate(x, size=[int(s) for s in sizes[2:]], mode="nearest")]
        return [F.interpolate(x, scale_factor=[float(s) for s in scales[2:]], mode="nearest")]

    return run


def pad(spec: NodeSpec) -> Kernel:
    if spec.attrs.get("mode", "constant") != "constant":
        raise spec.fail(f"Pad mode {spec.attrs['mode']}")
    pads = [int(p) for p in spec.const(1, "pads")]
    value = float(spec.const(2, "constant value")) if spec.has_input(2) else 0.0
    rank = len(pads) // 2
    flat = []
    for b, e in zip(reversed(pads[:rank]), reversed(pads[rank:]), strict=True):
        flat += [b, e]
    return lambda args: [F.pad(args[0], flat, value=value)]


def softmax(spec: NodeSpec) -> Kernel:
    axis = int(spec.attrs.get("axis", -1))
    return lambda args: [torch.softmax(args[0], dim=axis)]


def batch_norm(spec: NodeSpec) -> Kernel:
    """A BatchNormalization the fuse pass could not fold stays frozen, as the deployment graph runs it."""
    eps = float(spec.attrs.get("epsilon", 1e-5))
    return lambda args: [F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0, eps)]


def transpose(spec: NodeSpec) -> Kernel:
    perm = [int(p) for p in spec.attrs["perm"]] if "perm" in spec.attrs else None
    return lambda args: [args[0].permute(*(perm or reversed(range(args[0].dim()))))]


def layer_norm(spec: NodeSpec) -> Kernel:
    """Normalizes over the axes from ``axis`` on, then Scale and B broadcast over them (ONNX opset 17)."""
    if spec.outputs > 1:
        raise spec.fail("LayerNormalization's Mean and InvStdDev outputs")
    axis = int(spec.attrs.get("axis", -1))
    eps = float(spec.attrs.get("epsilon", 1e-5))

    def run(args):
        x = args[0]
        dims = tuple(range(axis % x.dim(), x.dim()))
        centred = x - x.mean(dim=dims, keepdim=True)
        y = centred / torch.sqrt((centred * centred).mean(dim=dims, keepdim=True) + eps) * args[1]
        return [y + args[2] if len(args) > 2 and args[2] is not None else y]

    return run


def gelu(spec: NodeSpec) -> Kernel:
    approximate = spec.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise spec.fail(f"Gelu approximate={approximate}")
    return lambda args: [F.gelu(args[0], approximate=approximate)]


def gather(spec: NodeSpec) -> Kernel:
    """Gather with constant indices (a token, a channel permutation); indices computed at run time are refused."""
    indices = np.asarray(spec.const(1, "indices")).astype(np.int64)
    axis = int(spec.attrs.get("axis", 0))

    def run(args):
        x = args[0]
        a = axis % x.dim()
        flat = torch.from_numpy(indices.reshape(-1) % x.shape[a]).to(x.device)
        picked = x.index_select(a, flat)
        return [picked.reshape(*x.shape[:a], *indices.shape, *x.shape[a + 1 :])]

    return run


def expand(spec: NodeSpec) -> Kernel:
    shape = [int(s) for s in spec.const(1, "shape")]
    return lambda args: [args[0].expand(torch.broadcast_shapes(args[0].shape, tuple(shape)))]


def concat(spec: NodeSpec) -> Kernel:
    axis = int(spec.attrs["axis"])

    def run(args):
        parts = list(args)
        rank = parts[0].dim()
        batch = max(p.shape[0] for p in parts) if rank else 1
        if rank and axis % rank != 0:
            # the graph is bound to batch 1: a constant joined to the data (ViT's class token) follows its batch
            parts = [p.expand(batch, *p.shape[1:]) if p.shape[0] == 1 else p for p in parts]
        return [torch.cat(parts, dim=axis)]

    return run


def cast(spec: NodeSpec) -> Kernel:
    to = int(spec.attrs["to"])
    if to not in (1, 10, 11, 16):  # FLOAT, FLOAT16, DOUBLE, BFLOAT16: values stay float
        raise spec.fail(f"a Cast to ONNX type {to} (QAT runs float tensors)")
    return lambda args: [args[0]]


def reduce(fn: Callable[..., torch.Tensor]) -> Callable[[NodeSpec], Kernel]:
    def make(spec: NodeSpec) -> Kernel:
        axes = _axes(spec, 1)
        keep = bool(spec.attrs.get("keepdims", 1))
        if not axes and spec.attrs.get("noop_with_empty_axes", 0):
            return lambda args: [args[0]]

        def run(args):
            x = args[0]
            return [fn(x, tuple(axes) if axes else tuple(range(x.dim())), keep)]

        return run

    return make


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[NodeSpec], Kernel]:
    def run(args):
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return [out]

    return lambda spec: run


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    # A LayerNorm variance rounded to zero on its int8 grid gives 1/sqrt(0) = inf, which the next Q/DQ clamps to
    # its top code; sqrt's gradient at zero is infinite, though, and times the clamp's zero gradient is NaN. From
    # the smallest normal float up, the reciprocal stays finite, clamps the same, and every gradient is a number.
    return torch.sqrt(torch.clamp_min(x, torch.finfo(x.dtype).tiny))


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[NodeSpec], Kernel]:
    return lambda spec: lambda args: [fn(args[0])]


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[NodeSpec], Kernel]:
    return lambda spec: lambda args: [fn(args[0], args[1])]


OPS: dict[str, Callable[[NodeSpec], Kernel]] = {
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": _binary(torch.matmul),
    "Relu": _unary(F.relu),
    "Clip": clip,
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "Softmax": softmax,
    "LeakyRelu": lambda spec: lambda args: [F.leaky_relu(args[0], float(spec.attrs.get("alpha", 0.01)))],
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "AveragePool": pool("average"),
    "MaxPool": pool("max"),
    "ReduceMean": reduce(lambda x, dims, keep: x.mean(dim=dims, keepdim=keep)),
    "ReduceSum": reduce(lambda x, dims, keep: x.sum(dim=dims, keepdim=keep)),
    "ReduceMax": reduce(lambda x, dims, keep: x.amax(dim=dims, keepdim=keep)),
    "ReduceMin": reduce(lambda x, dims, keep: x.amin(dim=dims, keepdim=keep)),
    "Flatten": flatten,
    "Reshape": reshape,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Transpose": transpose,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Resize": resize,
    "Pad": pad,
    "Identity": _unary(lambda x: x),
    "Cast": cast,
    "Sqrt": _unary(_sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Erf": _unary(torch.erf),
    "Gelu": gelu,
    "Pow": _binary(torch.pow),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "LayerNormalization": layer_norm,
    "Gather": gather,
    "Expand": expand,
    "Einsum": lambda spec: lambda args: [torch.einsum(spec.attrs["equation"], *args)],
    "Where": lambda spec: lambda args: [torch.where(args[0].bool(), args[1], args[2])],
    "BatchNormalization": batch_norm,
}


def kernel(spec: NodeSpec) -> Kernel:
    make = OPS.get(spec.op_type)
    if make is None:
        raise QATError(
            f"node {spec.name!r}: QAT has no torch kernel for {spec.op_type}",
            f"QAT runs {', '.join(sorted(OPS))}; compile without --qat-epochs (post-training "
            "quantization), or export the model with those ops",
        )
    return make(spec)

"""The fused ONNX graph as a trainable torch module, fake-quantized exactly where the QDQ quantizer will
put Q/DQ.

Training the deployment graph itself, not the source module, is what makes QAT follow the target:
BatchNorm is already folded (the weights that train are the folded ones the artifact ships), every
ONNX tensor is a value here under its own name, and the quantization plan (``plan_quantization`` on
this very graph, with the target's placement and the layers kept in float) says which readers of a
tensor see it fake-quantized, exactly as ``apply_plan`` rewires them to a DequantizeLinear. Weights
are per-channel symmetric int8, a Conv/Gemm bias is int32 at input scale × weight scale when its
input is quantized, as ``apply_plan`` writes them. After training, the weights go back into the graph
(``write_weights``) and the ranges into a fixed-range calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from edgekd.ir.graph import const_array
from edgekd.qat.ops import ABSENT, Kernel, NodeSpec, kernel
from edgekd.quant.activation_quant import FixedQuantizer, RangeQuantizer
from edgekd.quant.fakequant import fake_quantize_bias, fake_quantize_weight
from edgekd.quant.placement import QuantPlan
from edgekd.quant.qparams import ActivationScheme, QParams

TRAINED_OPS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}  # inputs that train when constant
BIAS_QUANTIZED = frozenset({"Conv", "Gemm"})  # as edgekd.quant.qdq._quantize_bias


@dataclass(frozen=True)
class SiteRanges:
    """Where the quantizers start: the calibrated range of each observed tensor, the fixed parameters of
    fixed-range outputs, the activation scheme and how ranges move while training."""

    scheme: ActivationScheme
    ranges: dict[str, tuple[float, float]]
    fixed: dict[str, QParams]
    mode: str = "learn"  # learn | ema


@dataclass(frozen=True)
class _Step:
    name: str
    op_type: str
    kernel: Kernel
    inputs: tuple[tuple[str, str | None], ...]  # (kind, key): absent | param | const | value
    outputs: tuple[str, ...]
    weight_axis: int | None  # per-channel axis of a quantized weight (input 1)
    quantize_bias: bool


def _static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def _attributes(node: ir.Node) -> dict:
    return {k: a.value for k, a in node.attributes.items()}


class QuantGraph(nn.Module):
    """Runs ``model``'s graph; with a ``plan`` and ``sites``, fake-quantized as the plan places Q/DQ."""

    def __init__(self, model: ir.Model, plan: QuantPlan | None = None, sites: SiteRanges | None = None):
        super().__init__()
        if (plan is None) != (sites is None):
            raise ValueError("a plan needs its site ranges, and site ranges a plan")
        graph = model.graph
        self.input_names = [v.name for v in graph.inputs if not v.is_initializer()]
        self.output_names = [v.name for v in graph.outputs]
        self.params = nn.ParameterDict()
        self.quantizers = nn.ModuleDict()
        self.param_names: dict[str, str] = {}  # parameter key → initializer name
        self._consts: dict[str, str] = {}  # value name → buffer name
        self._reads: dict[tuple[str, int], str] = {}  # (node, input index) → tensor read fake-quantized
        self._quantizer_of: dict[str, str] = {}  # tensor → quantizer key
        self._observed: set[str] = set()  # tensors whose quantizer observes them (EMA), not a same_as copy
        self._output_sites: set[str] = set()
        self._roots: dict[str, str] = {}  # quantizer key → the tensor whose range it holds
        weights: dict[str, int] = {}
        if plan is not None:
            self._place_quantizers(plan, sites)
            weights = {w.node: w.axis for w in plan.weights if w.input_index == 1}
        self._steps = [self._step(graph, node, weights) for node in graph if not self._is_constant(node)]
        self._one_at_a_time: bool | None = None  # decided by the first batch of two or more

    # ------------------------------------------------------------------ construction

    def _place_quantizers(self, plan: QuantPlan, sites: SiteRanges) -> None:
        """One quantizer per range (a grid-preserving copy reads its source's), for the tensors that get a Q/DQ
        pair: the plan lists readers or the graph output for them, and the range has parameters."""
        roots: dict[str, str] = {}
        for name, site in plan.activations.items():
            root = site.same_as or name
            read = site.consumers or site.to_graph_output
            if not read or (root not in sites.fixed and root not in sites.ranges):
                continue  # the quantize pass inserts no pair here either
            if root not in roots:
                roots[root] = f"a{len(roots)}"
                self.quantizers[roots[root]] = (
                    FixedQuantizer(sites.fixed[root])
                    if root in sites.fixed
                    else RangeQuantizer(*sites.ranges[root], sites.scheme, sites.mode)
                )
                self._roots[roots[root]] = root
            self._quantizer_of[name] = roots[root]
            if site.same_as is None:
                self._observed.add(name)
            for consumer in site.consumers:
                self._reads[consumer] = name
            if site.to_graph_output:
                self._output_sites.add(name)

    @staticmethod
    def _is_constant(node: ir.Node) -> bool:
        return node.op_type == "Constant" and all(const_array(o) is not None for o in node.outputs)

    def _input_ref(self, graph: ir.Graph, node: ir.Node, index: int, value: ir.Value | None):
        if value is None or value.name == "":
            return ("absent", None), ABSENT
        array = const_array(value)
        if array is None:
            return ("value", value.name), None
        trainable = (
            index in TRAINED_OPS.get(node.op_type, ())
            and array.dtype == np.float32
            and value.name in graph.initializers
        )
        if trainable:
            key = next((k for k, n in self.param_names.items() if n == value.name), None)
            if key is None:
                key = f"p{len(self.param_names)}"
                self.params[key] = nn.Parameter(torch.from_numpy(array.copy()))
                self.param_names[key] = value.name
            return ("param", key), array
        if value.name not in self._consts:
            self._consts[value.name] = f"c{len(self._consts)}"
            self.register_buffer(self._consts[value.name], torch.from_numpy(np.array(array)), persistent=False)
        return ("const", self._consts[value.name]), array

    def _step(self, graph: ir.Graph, node: ir.Node, weights: dict[str, int]) -> _Step:
        refs, consts = ((), ())
        if node.inputs:
            refs, consts = zip(*(self._input_ref(graph, node, i, v) for i, v in enumerate(node.inputs)), strict=True)
        shapes = tuple(_static_shape(v) for v in node.inputs)
        spec = NodeSpec(node.name, node.op_type, _attributes(node), tuple(consts), len(node.outputs), shapes)
        axis = weights.get(node.name)
        bias = (
            axis is not None
            and node.op_type in BIAS_QUANTIZED
            and len(refs) > 2
            and refs[2][0] == "param"
            and consts[2].ndim == 1
            and (node.name, 0) in self._reads
        )
        return _Step(
            node.name, node.op_type, kernel(spec), tuple(refs), tuple(o.name for o in node.outputs), axis, bias
        )

    # ------------------------------------------------------------------ running

    def _value(self, ref: tuple[str, str | None], env: dict[str, torch.Tensor]):
        kind, key = ref
        if kind == "absent":
            return None
        if kind == "param":
            return self.params[key]
        if kind == "const":
            return getattr(self, key)
        return env[key]

    def forward(self, *inputs: torch.Tensor):
        """The graph on a batch. Its shapes are bound to one sample, and a batch runs through them as one
        only where the batch stays the outermost axis of every tensor; an export that moves it inward (torch's
        nn.MultiheadAttention works on [tokens, batch, dim]) runs one sample at a time, as the first batch
        shows."""
        if inputs[0].shape[0] > 1 and self._one_at_a_time is None:
            self._one_at_a_time = not self._batches_faithfully(inputs)
        if not self._one_at_a_time or inputs[0].shape[0] == 1:
            return self._run(inputs)
        runs = [self._run(tuple(x[i : i + 1] for x in inputs)) for i in range(inputs[0].shape[0])]
        if isinstance(runs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*runs, strict=True))
        return torch.cat(runs)

    def _batches_faithfully(self, inputs: tuple[torch.Tensor, ...]) -> bool:
        """Whether two samples in one batch give what each gives alone (no range observes the probe)."""
        pair = tuple(x[:2].detach() for x in inputs)
        with torch.no_grad():
            try:
                together = self._run(pair, observe=False)
            except RuntimeError:  # a shape bound to one sample refuses two
                return False
            alone = [self._run(tuple(x[i : i + 1] for x in pair), observe=False) for i in range(2)]
        together = together if isinstance(together, tuple) else (together,)
        alone = [a if isinstance(a, tuple) else (a,) for a in alone]
        return all(
            t.shape == torch.cat(parts).shape and torch.allclose(t, torch.cat(parts), rtol=1e-4, atol=1e-5)
            for t, parts in zip(together, zip(*alone, strict=True), strict=True)
        )

    def _run(self, inputs: tuple[torch.Tensor, ...], observe: bool = True):
        env = dict(zip(self.input_names, inputs, strict=True))
        done: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def quantized(tensor: str) -> tuple[torch.Tensor, torch.Tensor]:
            if tensor not in done:  # one Q/DQ pair per tensor, read by every consumer the plan lists
                watch = observe and tensor in self._observed
                done[tensor] = self.quantizers[self._quantizer_of[tensor]](env[tensor], watch)
            return done[tensor]

        for step in self._steps:
            args, input_scale = [], None
            for index, ref in enumerate(step.inputs):
                value = self._value(ref, env)
                tensor = self._reads.get((step.name, index))
                if tensor is not None:
                    value, scale = quantized(tensor)
                    input_scale = scale if index == 0 else input_scale
                args.append(value)
            if step.weight_axis is not None:
                args[1], weight_scales = fake_quantize_weight(args[1], step.weight_axis)
                if step.quantize_bias and input_scale is not None:
                    args[2] = fake_quantize_bias(args[2], input_scale, weight_scales)
            env.update(zip(step.outputs, step.kernel(args), strict=True))
        outputs = [quantized(n)[0] if n in self._output_sites else env[n] for n in self.output_names]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # ------------------------------------------------------------------ results

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The current range of every tensor whose quantizer moves (learned or EMA), by the tensor that the
        calibration observed (a grid-preserving copy shares its source's range)."""
        return {self._roots[k]: q.range() for k, q in self.quantizers.items() if isinstance(q, RangeQuantizer)}

    def site_counts(self) -> dict[str, int]:
        kinds = [type(q).__name__ for q in self.quantizers.values()]
        return {
            "activations_trained": kinds.count("RangeQuantizer"),
            "activations_fixed": kinds.count("FixedQuantizer"),
            "weights": sum(s.weight_axis is not None for s in self._steps),
            "biases_int32": sum(s.quantize_bias for s in self._steps),
        }

    def write_weights(self, model: ir.Model) -> int:
        """Puts the trained weights into ``model``'s initializers (the graph this module was built from);
        returns how many tensors changed."""
        changed = 0
        for key, name in self.param_names.items():
            array = self.params[key].detach().cpu().numpy().astype(np.float32)
            value = model.graph.initializers[name]
            if not np.array_equal(const_array(value), array):
                changed += 1
            value.const_value = ir.Tensor(array, name=name)
        return changed

"""Building and running quantized copies of a float graph: the simulation, per-layer sensitivity."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

import numpy as np
import onnx_ir as ir

from edgekd.metrics import sqnr_db
from edgekd.quant.placement import QuantPlan
from edgekd.quant.qdq import apply_plan
from edgekd.quant.qparams import QParams
from edgekd.runtime import onnx_run_fn, ort_session, simulation_fn


def clone(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def quantized_copy(model: ir.Model, plan: QuantPlan, act_qparams: dict[str, QParams]) -> ir.Model:
    copy = clone(model)
    apply_plan(copy, plan, act_qparams)
    return copy


def only_layer(plan: QuantPlan, layer: str) -> QuantPlan:
    """The part of ``plan`` that quantizes one node: its weights (a weighted layer) and its data inputs."""
    acts = {}
    for name, site in plan.activations.items():
        readers = tuple(c for c in site.consumers if c[0] == layer)
        if readers:
            acts[name] = replace(site, consumers=readers, to_graph_output=False, same_as=None)
    return QuantPlan(plan.placement, acts, [w for w in plan.weights if w.node == layer], plan.keep_float)


def flatten(outputs: Iterable[list[np.ndarray]]) -> np.ndarray:
    """Every output of every batch, as one flat vector."""
    return np.concatenate([o.ravel() for batch in outputs for o in batch])


def unweighted_readers(plan: QuantPlan) -> list[str]:
    """Nodes without weights that read a quantized activation (element-wise ops, pools, concatenations), in
    graph order: what stays int8 when every weighted layer is in float."""
    weighted = {w.node for w in plan.weights}
    readers = [c[0] for site in plan.activations.values() for c in site.consumers] + sorted(plan.hoisted_for)
    return [n for n in dict.fromkeys(readers) if n not in weighted]


def layer_sensitivity(
    model: ir.Model,
    plan: QuantPlan,
    act_qparams: dict[str, QParams],
    batches: list[np.ndarray],
    progress: Callable[[int, int], None] | None = None,
    layers: list[str] | None = None,
) -> dict[str, float]:
    """Per weighted layer (or per node of ``layers``): output SQNR when only it is quantized. Lower = more
    sensitive."""
    float_run = onnx_run_fn(ort_session(ir.to_proto(model).SerializeToString()))
    reference = flatten(float_run(x) for x in batches)
    layers = [w.node for w in plan.weights] if layers is None else layers
    out = {}
    for i, layer in enumerate(layers):
        sim = simulation_fn(quantized_copy(model, only_layer(plan, layer), act_qparams))
        out[layer] = sqnr_db(reference, flatten(sim(x) for x in batches))
        if progress:
            progress(i + 1, len(layers))
    return out

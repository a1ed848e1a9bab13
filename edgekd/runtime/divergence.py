"""Where an artifact departs from its QDQ simulation.

Verify compares outputs only; when they disagree, the question is which layer the runtime computes
differently. Both run on the same input with every quantized activation read out (the runtime's own
integer tensors where it keeps them, dequantized), and each activation's SQNR against the simulation is
set against that of the activations it is computed from: per-layer rounding loses a few dB per layer,
a layer the runtime computes differently loses tens at once (OpenVINO's int8 kernel for wide grouped
1×1 convolutions: 47 dB on its input, -2 dB on its output). A float artifact is read the same way at
every node output, against the source model (OpenVINO's fp32 channel-shuffle Gather: exact on its input).
A layer that loses tens of dB at once may still compute its function: one that amplifies small differences
(a reciprocal square root of a variance one step off, where TFLite's int8 MEAN rounds differently) is run
again in the simulation on the artifact's own inputs, and is no departure when that explains its output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from edgekd.metrics import sqnr_db

# A drop smaller than this between an activation and those it is computed from is rounding.
DEPARTURE_DB = 15.0
# At or above this SQNR vs the simulation, the values are the same up to float summation order.
EXACT_DB = 60.0


@dataclass(frozen=True)
class Site:
    """One Q/DQ pair on an activation: the float tensor it quantizes and the pair's two outputs."""

    tensor: str
    quantized: str
    dequantized: str
    scale: np.ndarray
    zero_point: np.ndarray
    integer: bool = True  # False: a tensor of a float graph, read as it is (its three names are one)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.integer:
            return q
        return (q.astype(np.float32) - self.zero_point.astype(np.float32)) * self.scale


@dataclass(frozen=True)
class Departure:
    site: str  # the activation where the artifact is far from the simulation
    nodes: tuple[str, ...]  # the nodes that compute it from the activations before it
    ops: tuple[str, ...]
    upstream_db: float  # the artifact's SQNR vs the simulation on those activations (worst)
    db: float  # and on this one

    @property
    def drop(self) -> float:
        return min(self.upstream_db, EXACT_DB) - min(self.db, EXACT_DB)

    def describe(self, reference: str = "the simulation") -> str:
        steps = ", ".join(f"{n} ({op})" for n, op in zip(self.nodes, self.ops))
        before = "exact" if self.upstream_db >= EXACT_DB else f"{self.upstream_db:.1f} dB"
        return f"{steps}: SQNR vs {reference} {before} on its inputs, {self.db:.1f} dB at {self.site!r}"


TapFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # input → {site tensor: dequantized values}


def activation_sites(model: onnx.ModelProto) -> list[Site]:
    """The activation Q/DQ pairs (QuantizeLinear → DequantizeLinear of a computed tensor), in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    sites = []
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits or len(q.input) < 2 or q.input[1] not in inits:
            continue
        dq = next((r for r in readers.get(q.output[0], []) if r.op_type == "DequantizeLinear"), None)
        if dq is None:
            continue
        zero = numpy_helper.to_array(inits[q.input[2]]) if len(q.input) > 2 and q.input[2] in inits else np.zeros(())
        scale = numpy_helper.to_array(inits[q.input[1]])
        if scale.ndim:  # per-channel activations: broadcast over NCHW
            scale, zero = (a.reshape(-1, *([1] * 2)) for a in (scale, zero))
        sites.append(Site(q.input[0], q.output[0], dq.output[0], scale.astype(np.float32), zero))
    return sites


# Ops whose outputs are shapes, indices or constants, not values a runtime computes from the input.
NOT_VALUES = frozenset({"Constant", "ConstantOfShape", "Shape", "Size", "Range", "NonZero"})


def float_sites(model: onnx.ModelProto) -> list[Site]:
    """Every value a float graph computes (each node's first output), in graph order; the tensors that turn
    out not to hold floats are dropped when the reference runs (``simulate_sites``)."""
    one, zero = np.ones((), np.float32), np.zeros((), np.float32)
    return [
        Site(n.output[0], n.output[0], n.output[0], one, zero, integer=False)
        for n in model.graph.node
        if n.op_type not in NOT_VALUES and n.output and n.output[0]
    ]


def simulate_sites(model: onnx.ModelProto, sites: list[Site], x: np.ndarray) -> dict[str, np.ndarray]:
    """The simulation's dequantized value at every site (ONNX Runtime, graph optimizations off); a float
    graph's sites that hold no floats (shapes, indices) are left out."""
    from edgekd.runtime.onnx import ort_session

    tapped = with_outputs(model, [s.dequantized for s in sites])
    sess = ort_session(tapped.SerializeToString(), optimize=False)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))
    return {s.tensor: values[s.dequantized] for s in sites if np.issubdtype(values[s.dequantized].dtype, np.floating)}


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns ``names`` (types left to the runtime's inference)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def sqnr_by_site(artifact: dict[str, np.ndarray], simulation: dict[str, np.ndarray]) -> dict[str, float]:
    """Per site read from the artifact, its SQNR vs the simulation (dB), in the sites' order. A runtime may
    hold a tensor in its own layout of the same values (a classifier as a 1×1 convolution: [1, C, 1, 1])."""
    return {
        t: sqnr_db(simulation[t].astype(np.float64), a.reshape(simulation[t].shape).astype(np.float64))
        for t, a in artifact.items()
        if t in simulation and a.size == simulation[t].size
    }


def departures(model: onnx.ModelProto, sites: list[Site], db: dict[str, float]) -> list[Departure]:
    """Every site whose SQNR vs the simulation (``db``) falls ``DEPARTURE_DB`` below that of the sites it is
    computed from, largest drop first."""
    producer = {o: n for n in model.graph.node for o in n.output}
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    site_of = {s.dequantized: s.tensor for s in sites}  # a dequantized tensor → its site's float tensor
    found = []
    for tensor, value in db.items():
        nodes, upstream = _computed_from(tensor, producer, site_of)
        if any(u not in db for u in upstream):
            continue  # a site the runtime keeps no tensor for: nothing to compare against
        nodes.sort(key=lambda n: order[id(n)])
        worst = min((db[u] for u in upstream), default=math.inf)
        names = tuple(n.name or n.output[0] for n in nodes)
        found.append(Departure(tensor, names, tuple(n.op_type for n in nodes), worst, value))
    return sorted((d for d in found if d.drop >= DEPARTURE_DB), key=lambda d: -d.drop)


def amplified(
    model: onnx.ModelProto,
    sites: list[Site],
    departure: Departure,
    artifact: dict[str, np.ndarray],
    simulation: dict[str, np.ndarray],
) -> bool:
    """Whether ``departure``'s layers, run in the simulation on the values the artifact holds at their inputs,
    give what the artifact holds at their output (``DEPARTURE_DB`` closer than the simulation's own value is):
    the layer computes its function, and its drop only amplifies what its inputs already carried."""
    from edgekd.runtime.onnx import ort_session

    by_tensor = {s.tensor: s for s in sites}
    producer = {o: n for n in model.graph.node for o in n.output}
    _, upstream = _computed_from(departure.site, producer, {s.dequantized: s.tensor for s in sites})
    if not upstream or any(u not in artifact or u not in simulation for u in upstream):
        return False
    feed = {by_tensor[u].dequantized: artifact[u].reshape(simulation[u].shape) for u in upstream}
    site = by_tensor[departure.site]
    try:
        sess = ort_session(_layer(model, producer, feed, site.dequantized).SerializeToString(), optimize=False)
        (again,) = sess.run(None, feed)
    except Exception:  # a layer that cannot be run on its own stays a departure
        return False
    held = artifact[departure.site].reshape(again.shape).astype(np.float64)
    return sqnr_db(again.astype(np.float64), held) >= departure.db + DEPARTURE_DB


def _layer(model: onnx.ModelProto, producer: dict, inputs: dict[str, np.ndarray], output: str) -> onnx.ModelProto:
    """The nodes that compute ``output`` from ``inputs`` (and constants), as a model of their own."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes, used, stack = {}, set(), [output]
    while stack:
        name = stack.pop()
        if name in inputs or name in used:
            continue
        used.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(i for i in node.input if i)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    graph = onnx.helper.make_graph(
        sorted(nodes.values(), key=lambda n: order[id(n)]),
        "layer",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, a.shape) for n, a in inputs.items()],
        [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [inits[n] for n in used if n in inits],
    )
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _computed_from(tensor: str, producer: dict, site_of: dict[str, str]) -> tuple[list, set[str]]:
    """The nodes between ``tensor`` and the quantized activations (or graph inputs) it is computed from,
    and those activations."""
    nodes, upstream, stack, seen = [], set(), [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in site_of and name != tensor:
            upstream.add(site_of[name])
            continue
        node = producer.get(name)
        if node is None or node.op_type == "DequantizeLinear" and name not in site_of:
            continue  # a graph input, or dequantized weights
        nodes.append(node)
        stack.extend(i for i in node.input if i)
    return nodes, upstream

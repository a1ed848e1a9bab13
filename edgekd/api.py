"""What the CLI and users call: compile, bench, inspect, list_targets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


from edgekd.artifact import MANIFEST, ArtifactWriter, write_json
from edgekd.backends import get_backend
from edgekd.bench import history
from edgekd.bench.device import LocalDevice
from edgekd.bench.inventory import get_device_spec, load_inventory
from edgekd.bench.session import BenchSettings, run_benchmark, store_result
from edgekd.config import CompileConfig, InputSpec
from edgekd.data.preprocess import Preprocess
from edgekd.distill.options import checkpoint_root, remove_checkpoints
from edgekd.errors import FidelityError, InputShapeError, PassFailedError
from edgekd.instruments import Instrument, ProgressInstrument, default_instruments
from edgekd.ir.profile import profile_onnx
from edgekd.manifest import build_manifest
from edgekd.model_config import read_model_card
from edgekd.models.load import LoadedModel, load_model
from edgekd.runtime import torch_reference
from edgekd.outputs import check_file_output
from edgekd.pipeline import build_pipeline, run_pipeline
from edgekd.report import plot_latencies, write_report
from edgekd.specs import builtin_targets, load_target, parse_spec
from edgekd.state import ONNX_MODEL, TORCH_MODEL, CompileState


@dataclass(frozen=True)
class CompileResult:
    output: Path
    manifest: dict[str, Any]


def model_input(model: str, *, input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, scale: float | None = None, channel_order: str | None = None,
                layout: str | None = None, input_name: str | None = None, labels: Sequence[str] | None = None,
                weights: str | Path | None = None) -> tuple[str, Path | None, InputSpec, tuple[str, ...] | None]:
    """(model source, weights, input spec, labels) from a model (file, factory, zoo name, or model card .toml)
    and overrides; explicit arguments win over the model card's values."""
    card_input: dict[str, Any] = {}
    card_labels = None
    if str(model).endswith(".toml"):
        card = read_model_card(model)
        model, card_input, card_labels = card.source, card.input, card.labels
        weights = weights if weights is not None else card.weights
    shape = tuple(input_shape) if input_shape is not None else (tuple(card_input["shape"]) if "shape" in card_input else None)
    layout = layout or card_input.get("layout", "NCHW")
    pre_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in card_input.items()
                  if k in ("mean", "std", "scale", "channel_order", "resize")}
    pre_kwargs.update({k: v for k, v in (("mean", tuple(mean) if mean else None), ("std", tuple(std) if std else None),
                                         ("scale", scale), ("channel_order", channel_order)) if v is not None})
    if shape is not None:
        if len(shape) != 4:
            raise InputShapeError(f"input shape {shape} is not 4-D", "image models take N,C,H,W (or N,H,W,C with --layout NHWC)")
        pre_kwargs["size"] = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    pre = Preprocess(layout=layout, **pre_kwargs)
    inp = InputSpec(name=input_name or card_input.get("name", "input"), shape=shape, preprocess=pre)
    return (str(model), Path(weights) if weights is not None else None, inp,
            tuple(labels) if labels else card_labels)


def make_config(model: str, target: str, output: str | Path, *, input_shape: Sequence[int] | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, scale: float | None = None,
                channel_order: str | None = None, layout: str | None = None, input_name: str | None = None,
                labels: Sequence[str] | None = None, weights: str | Path | None = None, **options) -> CompileConfig:
    """A CompileConfig from a model (file, factory, zoo name, or model card .toml) and overrides."""
    source, weights, inp, labels = model_input(model, input_shape=input_shape, mean=mean, std=std, scale=scale,
                                               channel_order=channel_order, layout=layout, input_name=input_name,
                                               labels=labels, weights=weights)
    return CompileConfig(model=source, target=target, output=Path(output), input=inp, labels=labels, weights=weights,
                         **options)


def load_input_model(source: str, weights: Path | None, allow_pickle: bool, inp: InputSpec):
    """(loaded model, its input spec with the shape checked or read from the ONNX graph)."""
    loaded = load_model(source, weights, allow_pickle)
    if loaded.kind == "onnx":
        return loaded, _onnx_input(loaded, inp)
    _probe_torch_input(loaded.torch_module, inp)
    return loaded, inp


def distill(model: str, student: str, data: str | Path, output: str | Path, *, epochs: int = 10, seed: int = 0,
            resume: bool = False, train_options: dict | None = None, allow_pickle: bool = False,
            init: str | Path | None = None, replay: str | Path | None = None, replay_size: int = 5000,
            force: bool = False, progress: Callable | None = None, **input_args) -> dict:
    """Trains ``student`` (a zoo name or factory) from the teacher ``model`` and writes its state_dict to
    ``output`` (.pt), a JSON record beside it, and the training curves into ``<output>.training/``. Under
    ``torchrun`` every worker trains its share of each batch (DistributedDataParallel) and the first one writes.

    Incremental update: ``init`` is the student's current weights and ``replay`` a replay-buffer file (.npz,
    created with ``replay_size`` samples if missing); earlier samples are mixed into every step and the new
    data join the buffer, which is written back."""
    import torch

    from edgekd.distill.distributed import join
    from edgekd.distill.onnx_teacher import OnnxTeacher
    from edgekd.distill.options import train_config
    from edgekd.distill.replay import ReplayBuffer
    from edgekd.distill.student import distill_student
    from edgekd.models.profile import profile

    output = Path(output)
    source, weights, inp, _ = model_input(model, **input_args)
    inputs = [Path(source), weights, Path(data), Path(init) if init else None]
    for path in (output, output.with_suffix(".json")):
        check_file_output(path, force, lambda _: is_distill_record(output.with_suffix(".json")), inputs)
    loaded, inp = load_input_model(source, weights, allow_pickle, inp)
    shape = tuple(inp.shape)
    if loaded.kind == "onnx":
        teacher, teacher_profile = OnnxTeacher(loaded.onnx_proto), profile_onnx(loaded.onnx_proto)
    else:
        teacher, teacher_profile = loaded.torch_module.eval(), profile(loaded.torch_module, shape)
    cfg = train_config(train_options or {}, epochs=epochs, seed=seed, resume=resume,
                       checkpoint_dir=output.with_name(output.name + ".checkpoints"))
    world = join()
    buffer = None
    if replay is not None:
        buffer = ReplayBuffer.load(replay, seed) if Path(replay).exists() else ReplayBuffer(replay_size, seed)
    net, metrics = distill_student(teacher, teacher_profile, student, data, inp.preprocess, shape, cfg,
                                   output.with_name(output.name + ".training") if world.is_main else None, progress,
                                   Path(init) if init is not None else None, buffer)
    metrics.update({"teacher": loaded.source, "teacher_sha256": loaded.sha256, "workers": world.size,
                    "input": {"shape": list(shape), "mean": list(inp.preprocess.mean), "std": list(inp.preprocess.std)}})
    if world.is_main:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
        tmp.replace(output)
        write_json(output.with_suffix(".json"), metrics)
        if buffer is not None:
            buffer.save(Path(replay))
    world.barrier()
    return metrics


def is_distill_record(path: Path) -> bool:
    """The JSON record `edgekd distill` writes beside a student's weights."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"student", "teacher_sha256"} <= data.keys()


def _onnx_input(loaded: LoadedModel, inp: InputSpec) -> InputSpec:
    graph_inputs = [i for i in loaded.onnx_proto.graph.input
                    if i.name not in {t.name for t in loaded.onnx_proto.graph.initializer}]
    if len(graph_inputs) != 1:
        raise InputShapeError(f"the model has {len(graph_inputs)} inputs; edgekd compiles single-input image models")
    gi = graph_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in gi.type.tensor_type.shape.dim]
    if inp.shape is not None:
        if len(dims) != len(inp.shape) or any(d is not None and d != s for d, s in zip(dims, inp.shape)):
            raise InputShapeError(f"--input-shape {tuple(inp.shape)} does not match the model's input "
                                  f"{gi.name!r} of shape {tuple(d or '?' for d in dims)}")
        shape = tuple(inp.shape)
    elif all(d is not None for d in dims[1:]):
        shape = (dims[0] or 1, *dims[1:])
    else:
        raise InputShapeError(f"the model's input {gi.name!r} has unknown dimensions {tuple(d or '?' for d in dims)}")
    pre = inp.preprocess
    size = (shape[2], shape[3]) if pre.layout == "NCHW" else (shape[1], shape[2])
    return dataclasses.replace(inp, name=gi.name, shape=shape, preprocess=dataclasses.replace(pre, size=size))


def _probe_torch_input(module, inp: InputSpec) -> None:
    import torch

    if inp.shape is None:
        raise InputShapeError("a PyTorch model needs its input shape", "pass --input-shape 1,3,H,W or set [input] shape in a model card")
    with torch.no_grad():
        try:
            module.eval()(torch.zeros(inp.shape))
        except Exception as e:  # RuntimeError from torch ops; AssertionError from a torch.export program's shape guards
            first = (str(e).splitlines() or [""])[0][:300]
            raise InputShapeError(f"the model does not accept input shape {tuple(inp.shape)}: "
                                  f"{type(e).__name__}: {first}") from e


def compile(config: CompileConfig, progress: Callable[[str], None] | None = None,
            instruments: Sequence[Instrument] | None = None) -> CompileResult:
    """Runs the target's pipeline on the model and writes the artifact directory atomically."""
    from edgekd.runtime import onnx_run_fn, ort_session
    import onnx_ir as ir

    spec = load_target(config.target)
    writer = ArtifactWriter(config.output, config.force, config.input_paths())
    loaded, inp = load_input_model(config.model, config.weights, config.allow_pickle, config.input)
    if loaded.kind == "onnx":
        reference = onnx_run_fn(ort_session(loaded.onnx_proto.SerializeToString()))
        facts, ref_name = {ONNX_MODEL}, "source ONNX model in ONNX Runtime"
    else:
        reference = torch_reference(loaded.torch_module)
        facts, ref_name = {TORCH_MODEL}, "PyTorch model"
    passes = build_pipeline(spec, config, facts)
    backend = get_backend(spec.backend)
    ins = list(default_instruments() if instruments is None else instruments)
    if progress:
        ins.append(ProgressInstrument(len(passes), progress))
    with writer as workdir:
        state = CompileState(spec=spec, config=config, input=inp, workdir=workdir,
                             torch_model=loaded.torch_module,
                             onnx_model=ir.from_proto(loaded.onnx_proto) if loaded.onnx_proto is not None else None,
                             reference=reference, reference_name=ref_name, float_reference=reference, labels=config.labels, facts=set(facts),
                             emit=progress)
        state.metrics["source"] = {"model": loaded.source, "kind": loaded.kind, "sha256": loaded.sha256,
                                   "weights": str(config.weights) if config.weights else None}
        failure = None
        try:
            state = run_pipeline(state, passes, ins)
        except PassFailedError as e:
            if not (config.keep_failed and isinstance(e.cause, FidelityError) and state.artifact_files):
                raise
            failure = e  # keep what was emitted, marked as failed, for inspection
        if state.onnx_model is not None:
            state.metrics["profile"] = profile_onnx(ir.to_proto(state.onnx_model)).to_dict()
        extra = []
        if state.labels:
            (workdir / "labels.txt").write_text("\n".join(state.labels) + "\n")
            extra.append("labels.txt")
        manifest = build_manifest(state, backend, extra)
        manifest["status"] = "ok" if failure is None else f"failed: {failure.message}"
        write_json(workdir / MANIFEST, manifest)
        write_report(workdir)
    if failure is not None:
        raise failure
    remove_checkpoints(checkpoint_root(config.output))  # only an unfinished compile resumes
    out = Path(config.output).absolute()
    if config.bench:
        bench(out, config.bench, BenchSettings(threads=spec.bench.threads, warmup=spec.bench.warmup,
                                                 iterations=spec.bench.iterations))
    return CompileResult(out, manifest)


def resolve_device(name: str, inventory: str | Path | None = None, accept_new_host_key: bool = False):
    spec = get_device_spec(name, inventory)
    if spec.is_local:
        return LocalDevice(name)
    from edgekd.bench.ssh import SSHDevice

    return SSHDevice(spec, accept_new_host_key=accept_new_host_key)


def bench(artifact: str | Path, device: str = "local", settings: BenchSettings | None = None,
          progress: Callable[[int, int], None] | None = None, inventory: str | Path | None = None,
          accept_new_host_key: bool = False) -> dict:
    """Benchmarks a compiled artifact on a device; stores the result and a plot in the artifact."""
    artifact = Path(artifact)
    dev = resolve_device(device, inventory, accept_new_host_key)
    result = run_benchmark(artifact, dev, settings or BenchSettings(), progress)
    path = store_result(artifact, result)
    if result.get("latencies_ms"):
        result["plot"] = str(plot_latencies(result, path.with_suffix(".png")).relative_to(artifact))
    write_json(path, result)
    history.append(artifact, result)
    write_report(artifact)
    return result


def bench_many(artifact: str | Path, devices: Sequence[str], settings: BenchSettings | None = None,
               inventory: str | Path | None = None, accept_new_host_key: bool = False) -> list[dict | Exception]:
    """Benchmarks on several devices at once, one connection each; a device that fails gives its
    error in its slot instead of stopping the others."""
    from concurrent.futures import ThreadPoolExecutor

    # Each device runs its own asyncio loop in its own thread; boards are independent, so the
    # wall time is the slowest board's, not the sum.
    def one(name):
        try:
            return bench(artifact, name, settings, inventory=inventory, accept_new_host_key=accept_new_host_key)
        except Exception as e:  # reported per device by the caller
            return e

    with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        return list(pool.map(one, devices))


def compare(artifacts: Sequence[str | Path], plot: str | Path | None = None) -> tuple[list[dict], Path | None]:
    """The newest run per device/target/runtime across the artifacts' histories, and a latency plot."""
    paths = [Path(a) for a in artifacts]
    rows = history.latest_per_device(paths)
    png = None
    if rows:
        png = history.plot_compare(rows, Path(plot) if plot else paths[0] / "results" / "compare.png")
    return rows, png


def inspect(model: str, input_shape: Sequence[int] | None = None, weights: str | Path | None = None,
            allow_pickle: bool = False, opset: int = 17, target: str | None = None) -> dict[str, Any]:
    """Ops, parameters and MACs of a model (exported to ONNX first when it is a PyTorch model), and
    with ``target``, the nodes that target cannot run."""
    import io
    import warnings

    import onnx
    import torch

    config = make_config(model, "onnx-cpu", ".", input_shape=input_shape, weights=weights)
    loaded = load_model(config.model, config.weights, allow_pickle)
    if loaded.kind == "onnx":
        proto, inp = loaded.onnx_proto, _onnx_input(loaded, config.input)
    else:
        inp = config.input
        _probe_torch_input(loaded.torch_module, inp)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(loaded.torch_module, (torch.zeros(inp.shape),), buf, dynamo=False,
                              opset_version=load_target(target).opset if target else opset)
        proto = onnx.load_from_string(buf.getvalue())
    prof = profile_onnx(proto)
    info = {"model": loaded.source, "kind": loaded.kind, "input_shape": list(inp.shape),
            "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
            **prof.to_dict()}
    if target is not None:
        spec = load_target(target)
        info["target"] = spec.name
        info["unsupported"] = [u.to_dict() for u in get_backend(spec.backend).unsupported(proto, spec)]
    return info


def val(artifact: str | Path, data: str | Path, *, split: str = "val", conf: float = 0.25, iou: float = 0.7,
        max_det: int = 300, limit: int | None = None, threads: int = 2, progress: Callable | None = None):
    """COCO mAP50-95 / mAP50 and precision/recall at ``conf`` of a compiled detector on a YOLO ``data.yaml``
    split or a COCO JSON, run in the artifact's own runtime (see edgekd.detect.validate)."""
    from edgekd.detect.postprocess import NmsSettings
    from edgekd.detect.validate import validate_artifact

    return validate_artifact(artifact, data, split, NmsSettings(iou=iou, max_det=max_det), conf, limit, threads, progress)


def list_targets() -> list[dict[str, Any]]:
    rows = []
    for name, path in builtin_targets().items():
        spec = parse_spec(path)
        rows.append({"name": name, "backend": spec.backend, "device_class": spec.device_class,
                     "precisions": list(spec.precisions), "description": spec.description,
                     "toolchain_installed": get_backend(spec.backend).available()})
    return rows


def explain_target(name: str) -> dict[str, Any]:
    """A target's facts and why its default pipeline is what it is."""
    spec = load_target(name)
    return {"name": spec.name, "description": spec.description, "backend": spec.backend,
            "device_class": spec.device_class, "precisions": list(spec.precisions),
            "default_precision": spec.default_precision, "activation_scheme": spec.activation_scheme,
            "opset": spec.opset, "opset_range": list(spec.opset_range), "passes": list(spec.passes),
            "pipeline_why": spec.pipeline_why, "quantization_why": spec.raw.get("quantization", {}).get("why"),
            "bench": dataclasses.asdict(spec.bench), "path": str(spec.path), "spec_sha256": spec.sha256,
            "toolchain_installed": get_backend(spec.backend).available(),
            "facts": {k: v for k, v in spec.raw.items() if isinstance(v, dict)
                      and k not in ("precision", "quantization", "onnx", "pipeline", "bench", "ops")}}


def list_devices(inventory: str | Path | None = None) -> list[dict[str, Any]]:
    return [{"name": d.name, "host": d.host or "(this machine)", "port": d.port, "user": d.user, "arch": d.arch,
             "runtimes": list(d.runtimes), "jetson": d.jetson, "description": d.description, "source": d.source or "built-in"}
            for d in load_inventory(inventory).values()]


def check_device(name: str, inventory: str | Path | None = None, accept_new_host_key: bool = False) -> dict[str, Any]:
    """Connects and reports what the device has (OS, CPU, memory, Python, runtimes, Jetson facts)."""
    from edgekd.bench.device import probe

    with resolve_device(name, inventory, accept_new_host_key) as dev:
        return {"device": name, **probe(dev)}

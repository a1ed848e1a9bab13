"""What the CLI and users call: short recipes over the frontend, the pipeline, the backends and the devices."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekd.artifact import write_json
from edgekd.atomic import ArtifactWriter
from edgekd.backends import get_backend
from edgekd.bench import history
from edgekd.bench.device import LocalDevice
from edgekd.bench.inventory import get_device_spec, load_inventory
from edgekd.bench.session import BenchSettings, run_benchmark, store_result
from edgekd.config import CompileConfig, grouped_options
from edgekd.distill.options import checkpoint_note, checkpoint_root, remove_checkpoints
from edgekd.errors import FidelityError, PassFailedError
from edgekd.finalize import finalize_artifact
from edgekd.frontend import check_labels, load_input_model, model_input, resolve
from edgekd.instruments import Instrument, ProgressInstrument, default_instruments
from edgekd.ir.profile import profile_onnx
from edgekd.pipeline import build_pipeline, default_passes, run_pipeline
from edgekd.report import plot_latencies, write_report
from edgekd.specs import builtin_targets, load_target, parse_spec
from edgekd.state import CompileState
from edgekd.validate import check_number, validate_compile


def warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


@dataclass(frozen=True)
class CompileResult:
    output: Path
    manifest: dict[str, Any]


def make_config(
    model: str,
    target: str,
    output: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float | None = None,
    channel_order: str | None = None,
    layout: str | None = None,
    input_name: str | None = None,
    labels: Sequence[str] | None = None,
    weights: str | Path | None = None,
    **options,
) -> CompileConfig:
    """A CompileConfig from a model (file, factory, zoo name, or model card .toml), input overrides and the
    flat options of the CLI (``calib=``, ``max_drop=``, ``student=``, …; see edgekd.config.FLAT_OPTIONS)."""
    m = model_input(
        model,
        input_shape=input_shape,
        mean=mean,
        std=std,
        scale=scale,
        channel_order=channel_order,
        layout=layout,
        input_name=input_name,
        labels=labels,
        weights=weights,
    )
    return CompileConfig(
        model=m.source,
        target=target,
        output=Path(output),
        input=m.input,
        labels=m.labels,
        weights=m.weights,
        **grouped_options(options),
    )


def compile(
    config: CompileConfig,
    progress: Callable[[str], None] | None = None,
    instruments: Sequence[Instrument] | None = None,
    timing=None,
) -> CompileResult:
    """Runs the target's pipeline on the model and writes the artifact directory atomically. ``--precision
    auto`` and ``--latency-budget`` compile several candidates and ship one (edgekd.search); ``timing``
    (artifact folder, repeat → ms) replaces their device timing."""
    from edgekd.search.run import is_search, run_search

    spec = load_target(config.target)
    validate_compile(config, spec)
    if is_search(config):
        manifest = run_search(config, lambda c: compile(c, progress, instruments), progress, timing)
        return _benched(config, spec, CompileResult(Path(config.output).absolute(), manifest))
    writer = ArtifactWriter(config.output, config.force, config.input_paths())
    model = resolve(config.model, config.weights, config.allow_pickle, config.input)
    check_labels(model, config.labels)
    passes = build_pipeline(spec, config, set(model.facts))
    backend = get_backend(spec.backend)
    ins = list(default_instruments() if instruments is None else instruments)
    if progress:
        ins.append(ProgressInstrument(len(passes), progress))
    try:
        manifest = _run_compile(config, spec, model, passes, backend, writer, ins, progress)
    except BaseException as e:
        note = checkpoint_note(config.output)
        if note:
            e.add_note(note)
        raise
    remove_checkpoints(checkpoint_root(config.output))  # only an unfinished compile resumes
    return _benched(config, spec, CompileResult(Path(config.output).absolute(), manifest))


def _benched(config: CompileConfig, spec, result: CompileResult) -> CompileResult:
    if config.bench:
        bench(
            result.output,
            config.bench,
            BenchSettings(threads=spec.bench.threads, warmup=spec.bench.warmup, iterations=spec.bench.iterations),
            inventory=config.search.inventory,
        )
    return result


def _run_compile(config, spec, model, passes, backend, writer, ins, progress) -> dict[str, Any]:
    import onnx_ir as ir

    loaded = model.loaded
    with writer as workdir:
        for stale in writer.removed:
            (progress or warn)(f"removed {stale}, left by a compile that was killed")
        state = CompileState(
            spec=spec,
            config=config,
            input=model.input,
            workdir=workdir,
            source=model.source,
            torch_model=loaded.torch_module,
            onnx_model=ir.from_proto(loaded.onnx_proto) if loaded.onnx_proto is not None else None,
            reference=model.reference,
            reference_name=model.reference_name,
            float_reference=model.reference,
            labels=config.labels,
            facts=set(model.facts),
            emit=progress,
        )
        failure = None
        try:
            state = run_pipeline(state, passes, ins)
        except PassFailedError as e:
            if not (config.verification.keep_failed and isinstance(e.cause, FidelityError) and state.artifact_files):
                raise
            failure = e  # keep what was emitted, marked as failed, for inspection
        manifest = finalize_artifact(state, backend, failure)
    if failure is not None:
        raise failure
    return manifest


def distill(
    model: str,
    student: str,
    data: str | Path,
    output: str | Path,
    *,
    epochs: int = 10,
    seed: int = 0,
    resume: bool = False,
    train_options: dict | None = None,
    allow_pickle: bool = False,
    init: str | Path | None = None,
    replay: str | Path | None = None,
    replay_size: int = 5000,
    force: bool = False,
    progress: Callable | None = None,
    **input_args,
) -> dict:
    """Trains ``student`` (a zoo name or factory) from the teacher ``model`` and writes its state_dict to
    ``output`` (.pt), a JSON record beside it, and the training curves into ``<output>.training/``. Under
    ``torchrun`` every worker trains its share of each batch (DistributedDataParallel) and the first one writes.
    ``init``/``replay``: an incremental update (see edgekd.distill.command.distill_to_file)."""
    from edgekd.distill.command import check_outputs, distill_to_file
    from edgekd.distill.options import train_config

    output = Path(output)
    check_number("--epochs", epochs, minimum=1, integer=True, hint="distillation trains; pass --epochs 1 or more")
    m = model_input(model, **input_args)
    check_outputs(output, force, [Path(m.source), m.weights, Path(data), Path(init) if init else None])
    resolved = resolve(m.source, m.weights, allow_pickle, m.input)
    cfg = train_config(
        train_options or {},
        epochs=epochs,
        seed=seed,
        resume=resume,
        checkpoint_dir=output.with_name(output.name + ".checkpoints"),
    )
    return distill_to_file(
        resolved,
        student,
        Path(data),
        output,
        cfg,
        progress,
        Path(init) if init else None,
        Path(replay) if replay is not None else None,
        replay_size,
    )


def resolve_device(name: str, inventory: str | Path | None = None, accept_new_host_key: bool = False):
    spec = get_device_spec(name, inventory)
    if spec.is_local:
        return LocalDevice(name)
    from edgekd.bench.ssh import SSHDevice

    return SSHDevice(spec, accept_new_host_key=accept_new_host_key)


def bench(
    artifact: str | Path,
    device: str = "local",
    settings: BenchSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    inventory: str | Path | None = None,
    accept_new_host_key: bool = False,
) -> dict:
    """Benchmarks a compiled artifact on a device; stores the result and a plot in the artifact. A detector is
    also timed from frame to detections (``settings.end_to_end``; None: the model alone)."""
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


def bench_many(
    artifact: str | Path,
    devices: Sequence[str],
    settings: BenchSettings | None = None,
    inventory: str | Path | None = None,
    accept_new_host_key: bool = False,
) -> list[dict | Exception]:
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


def inspect(
    model: str,
    input_shape: Sequence[int] | None = None,
    weights: str | Path | None = None,
    allow_pickle: bool = False,
    opset: int = 17,
    target: str | None = None,
) -> dict[str, Any]:
    """Ops, parameters and MACs of a model (exported to ONNX first when it is a PyTorch model), and
    with ``target``, the nodes that target cannot run."""
    import onnx_ir as ir

    from edgekd.models.export import export_onnx
    from edgekd.passes.check_support import canonical_unsupported
    from edgekd.passes.support_groups import group_unsupported

    m = model_input(model, input_shape=input_shape, weights=weights)
    loaded, inp = load_input_model(m.source, m.weights, allow_pickle, m.input)
    spec = load_target(target) if target else None
    proto = (
        loaded.onnx_proto
        if loaded.kind == "onnx"
        else export_onnx(loaded.torch_module, inp.shape, spec.opset if spec else opset, inp.name)
    )
    info = {
        "model": loaded.source,
        "kind": loaded.kind,
        "input_shape": list(inp.shape),
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        **profile_onnx(proto).to_dict(),
    }
    if spec is not None:
        info["target"] = spec.name
        backend = get_backend(spec.backend)
        bad = backend.unsupported(proto, spec)
        after = canonical_unsupported(backend, ir.from_proto(proto), tuple(inp.shape), spec) if bad else []
        info["unsupported"] = [u.to_dict() for u in bad]
        info["unsupported_groups"] = [g.to_dict() for g in group_unsupported(bad, after)]
    return info


def val(
    artifact: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    limit: int | None = None,
    threads: int = 2,
    progress: Callable | None = None,
):
    """COCO mAP50-95 / mAP50 and precision/recall at ``conf`` of a compiled detector on a YOLO ``data.yaml``
    split or a COCO JSON, run in the artifact's own runtime (see edgekd.detect.validate)."""
    from edgekd.detect.postprocess import NmsSettings
    from edgekd.detect.validate import validate_artifact

    return validate_artifact(
        artifact, data, split, NmsSettings(iou=iou, max_det=max_det), conf, limit, threads, progress
    )


def list_targets() -> list[dict[str, Any]]:
    rows = []
    for name, path in builtin_targets().items():
        spec = parse_spec(path)
        rows.append(
            {
                "name": name,
                "backend": spec.backend,
                "device_class": spec.device_class,
                "precisions": list(spec.precisions),
                "description": spec.description,
                "toolchain_installed": get_backend(spec.backend).available(),
            }
        )
    return rows


def explain_target(name: str) -> dict[str, Any]:
    """A target's facts and why its default pipeline is what it is."""
    spec = load_target(name)
    return {
        "name": spec.name,
        "description": spec.description,
        "backend": spec.backend,
        "device_class": spec.device_class,
        "precisions": list(spec.precisions),
        "default_precision": spec.default_precision,
        "activation_scheme": spec.activation_scheme,
        "placement": spec.placement,
        "opset": spec.opset,
        "opset_range": list(spec.opset_range),
        "passes": default_passes(spec),
        "pipeline_why": spec.pipeline_why,
        "quantization_why": spec.raw.get("quantization", {}).get("why"),
        "bench": dataclasses.asdict(spec.bench),
        "path": str(spec.path),
        "spec_sha256": spec.sha256,
        "toolchain_installed": get_backend(spec.backend).available(),
        "facts": {
            k: v
            for k, v in spec.raw.items()
            if isinstance(v, dict) and k not in ("precision", "quantization", "onnx", "pipeline", "bench", "ops")
        },
    }


def list_devices(inventory: str | Path | None = None) -> list[dict[str, Any]]:
    return [
        {
            "name": d.name,
            "host": d.host or "(this machine)",
            "port": d.port,
            "user": d.user,
            "arch": d.arch,
            "runtimes": list(d.runtimes),
            "jetson": d.jetson,
            "description": d.description,
            "source": d.source or "built-in",
        }
        for d in load_inventory(inventory).values()
    ]


def check_device(name: str, inventory: str | Path | None = None, accept_new_host_key: bool = False) -> dict[str, Any]:
    """Connects and reports what the device has (OS, CPU, memory, Python, runtimes, Jetson facts)."""
    from edgekd.bench.device import probe

    with resolve_device(name, inventory, accept_new_host_key) as dev:
        return {"device": name, **probe(dev)}

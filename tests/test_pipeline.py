"""Pipeline construction from spec + options, precondition checks, failure reporting, instruments."""

from __future__ import annotations

from typing import ClassVar

import onnx
import pytest

from edgekd import api
from edgekd.errors import PassFailedError, PreconditionError
from edgekd.instruments import DumpIRInstrument, TimingInstrument
from edgekd.passes import PASSES
from edgekd.passes.base import Pass, PassResult
from edgekd.pipeline import check_pipeline, pass_names, run_pipeline
from edgekd.specs import load_target
from edgekd.state import ONNX_MODEL, TORCH_MODEL, CompileState


@pytest.fixture
def spec():
    return load_target("onnx-cpu")


def cfg(**kw):
    return api.make_config("resnet20", "onnx-cpu", "out", input_shape=(1, 3, 32, 32), **kw)


def test_default_pipeline_follows_the_spec_and_drops_export_for_onnx_sources(spec):
    assert pass_names(spec, cfg(), {TORCH_MODEL}) == [
        "export",
        "canonicalize",
        "fuse",
        "check-support",
        "emit",
        "verify",
    ]
    assert pass_names(spec, cfg(), {ONNX_MODEL}) == ["canonicalize", "fuse", "check-support", "emit", "verify"]


def test_skip_and_explicit_passes(spec):
    assert pass_names(spec, cfg(skip=("verify", "fuse")), {TORCH_MODEL}) == [
        "export",
        "canonicalize",
        "check-support",
        "emit",
    ]
    assert pass_names(spec, cfg(passes=("export", "emit")), {TORCH_MODEL}) == ["export", "emit"]


class _Provide(Pass):
    name = "provide"
    provides = frozenset({"thing"})

    def run(self, state):
        return PassResult(state, changed=True, output={"n": 1})


class _Need(Pass):
    name = "need"
    requires = frozenset({"thing"})
    ran: ClassVar[list] = []

    def run(self, state):
        _Need.ran.append(True)
        return PassResult(state, changed=False)


class _Boom(Pass):
    name = "boom"

    def run(self, state):
        raise ValueError("kaput")


def _bare_state(spec):
    return CompileState(spec=spec, config=cfg(), input=cfg().input, workdir=None)


def test_requires_and_provides_are_checked_statically_and_at_run_time(spec):
    check_pipeline([_Provide(), _Need()], set())
    with pytest.raises(PreconditionError):
        check_pipeline([_Need(), _Provide()], set())
    with pytest.raises(PassFailedError):  # at run time too, for pipelines built by hand
        run_pipeline(_bare_state(spec), [_Need()])
    state = run_pipeline(_bare_state(spec), [_Provide(), _Need()], [TimingInstrument()])
    assert "thing" in state.facts
    assert [r.name for r in state.records] == ["provide", "need"]
    assert all(r.seconds is not None and r.seconds >= 0 for r in state.records)
    assert state.records[0].metrics == {"n": 1}


def test_failing_pass_is_named_with_the_passes_before_it(spec):
    with pytest.raises(PassFailedError) as e:
        run_pipeline(_bare_state(spec), [_Provide(), _Need(), _Boom()])
    err = e.value
    assert err.pass_name == "boom" and err.ran_before == ["provide", "need"]
    assert "boom" in err.message and "provide, need" in err.message and "kaput" in err.message
    assert isinstance(err.cause, ValueError)


def test_every_registered_pass_declares_a_name_matching_its_key():
    for name, cls in PASSES.items():
        assert cls.name == name and issubclass(cls, Pass)


def test_dump_ir_writes_the_graph_after_every_onnx_pass(tmp_path, monkeypatch):
    dump = tmp_path / "ir"
    monkeypatch.setenv("EDGEKD_DUMP_IR", str(dump))
    config = api.make_config("resnet20", "onnx-cpu", tmp_path / "out", input_shape=(1, 3, 32, 32), verify_samples=1)
    api.compile(config)
    names = sorted(p.name for p in dump.iterdir())
    assert names == [
        "01_export.onnx",
        "02_canonicalize.onnx",
        "03_fuse.onnx",
        "04_check-support.onnx",
        "05_emit.onnx",
        "06_verify.onnx",
    ]
    onnx.checker.check_model(onnx.load(str(dump / "03_fuse.onnx")))


def test_dump_instrument_skips_passes_without_a_graph(tmp_path, spec):
    run_pipeline(_bare_state(spec), [_Provide()], [DumpIRInstrument(tmp_path / "d")])
    assert not (tmp_path / "d").exists()

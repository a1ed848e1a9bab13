"""Nothing a user owns is lost: what ``--force`` may replace, and where an artifact may not go.

Each case runs the real CLI and checks that the refusal is named, and that every file that was
there before is still there, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import CALIB
from edgekd.cli import main
from edgekd.distill.options import checkpoint_root, remove_checkpoints
from test_cli_errors import _static_onnx, assert_failed_cleanly, compile_cli, leftovers, snapshot

pytestmark = pytest.mark.usefixtures("keep_sigterm")


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A user's working directory: their model, a thesis, photos; the shell stands in it."""
    root = tmp_path / "project"
    (root / "photos").mkdir(parents=True)
    (root / "thesis.tex").write_text("\\chapter{Results}\n")
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _static_onnx(root / "model.onnx")
    monkeypatch.chdir(root)
    return root


def artifact_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"edgekd_version": "0.1.0"}))
    (path / "model.onnx").write_bytes(b"old model")
    return path


def tree(root: Path) -> dict[str, bytes]:
    return snapshot(root)


@pytest.mark.parametrize(
    "where, needle",
    [
        (".", "current directory"),
        ("..", "holds the current directory"),
    ],
)
def test_force_never_replaces_the_working_directory_or_its_parents(project, where, needle):
    before = tree(project.parent)
    r = compile_cli("model.onnx", Path(where), "-t", "onnx-cpu", "--force")
    assert_failed_cleanly(r, project / "never", needle, written=True)
    assert tree(project.parent) == before


def test_force_never_replaces_home(project, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    r = compile_cli(project / "model.onnx", home, "-t", "onnx-cpu", "--force")
    assert_failed_cleanly(r, home, "home directory", written=True)
    assert (home / ".ssh" / "id_ed25519").read_text() == "secret"


def test_force_replaces_only_an_edgekd_artifact(project, tmp_path):
    theirs = tmp_path / "my-documents"
    (theirs / "photos").mkdir(parents=True)
    (theirs / "thesis.pdf").write_bytes(b"%PDF years of work")
    (theirs / "manifest.json").write_text('{"name": "a web app manifest"}')  # not edgekd's
    before = tree(theirs)
    r = compile_cli("model.onnx", theirs, "-t", "onnx-cpu", "--force")
    assert_failed_cleanly(r, theirs, "not an edgekd artifact", written=True)
    assert tree(theirs) == before and leftovers(theirs) == []


def test_force_never_replaces_a_directory_that_holds_an_input(project, tmp_path):
    out = artifact_dir(tmp_path / "art")
    _static_onnx(out / "source.onnx")  # the model compiled comes from inside the old artifact
    before = tree(out)
    r = compile_cli(out / "source.onnx", out, "-t", "onnx-cpu", "--force")
    assert_failed_cleanly(r, out, "holds the input", written=True)
    assert tree(out) == before


def test_force_never_replaces_a_directory_that_holds_calibration_data(project, tmp_path):
    out = artifact_dir(tmp_path / "art")
    shutil.copytree(CALIB / "cat", out / "calib")
    before = tree(out)
    r = compile_cli("model.onnx", out, "-t", "onnx-cpu", "--force", "--calib", str(out / "calib"))
    assert_failed_cleanly(r, out, "holds the input", written=True)
    assert tree(out) == before


def test_force_replaces_an_old_artifact(project, tmp_path):
    out = artifact_dir(tmp_path / "art")
    r = compile_cli("model.onnx", out, "-t", "onnx-cpu", "--force", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"
    assert leftovers(out) == []


def test_force_through_a_symlink_keeps_the_link_and_leaves_nothing_hidden(project, tmp_path):
    real = artifact_dir(tmp_path / "real-art")
    link = tmp_path / "latest"
    link.symlink_to(real)
    r = compile_cli("model.onnx", link, "-t", "onnx-cpu", "--force", "-q")
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "manifest.json").exists() and (real / "model.onnx").read_bytes() != b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "project", "real-art"]


def test_finished_compile_removes_only_its_own_checkpoints(tmp_path):
    out = tmp_path / "art"
    root = checkpoint_root(out)
    (root / "distill").mkdir(parents=True)
    (root / "distill" / "last.pt").write_bytes(b"ckpt")
    (root / "notes.txt").write_text("the user's")
    remove_checkpoints(root)
    assert not (root / "distill").exists()
    assert (root / "notes.txt").read_text() == "the user's"


def test_checkpoint_root_of_the_current_directory_has_a_name(project):
    assert checkpoint_root(Path(".")).name == "project.checkpoints"


def test_distill_never_writes_over_its_teacher(project, labelled):
    import torch

    from edgekd.models import build_model

    teacher = project / "teacher.pt"
    torch.jit.save(torch.jit.trace(build_model("resnet8:0.25").eval(), torch.zeros(1, 3, 32, 32)), str(teacher))
    before = teacher.read_bytes()
    r = CliRunner().invoke(
        main,
        [
            "distill",
            str(teacher),
            "--student",
            "resnet8:0.25",
            "--data",
            str(labelled),
            "-o",
            str(teacher),
            "--force",
            "--input-shape",
            "1,3,32,32",
            "--epochs",
            "1",
        ],
    )
    assert r.exit_code == 2 and "is the input" in r.output, r.output
    assert teacher.read_bytes() == before


def test_distill_force_replaces_only_its_own_student(project, labelled):
    theirs = project / "weights.pt"
    theirs.write_bytes(b"someone else's weights")
    r = CliRunner().invoke(
        main,
        [
            "distill",
            "resnet20",
            "--student",
            "resnet8:0.25",
            "--data",
            str(labelled),
            "-o",
            str(theirs),
            "--force",
            "--input-shape",
            "1,3,32,32",
            "--epochs",
            "1",
        ],
    )
    assert r.exit_code == 2 and "edgekd did not write it" in r.output, r.output
    assert theirs.read_bytes() == b"someone else's weights"

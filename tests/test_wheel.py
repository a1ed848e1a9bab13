"""The wheel is what users install: build it, install it into a fresh venv, run the CLI from outside the checkout.

Marked ``wheel`` (about 40 s: one wheel build, one venv, a few CLI runs); ``pytest -m "not wheel"`` skips it.
Offline: the fresh venv gets this interpreter's installed dependencies through one ``.pth`` file that names
their site-packages directory. A directory added by a ``.pth`` line does not get its own ``.pth`` files run,
so the editable install of the checkout (a finder installed from such a file) stays out; the test checks that.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
# Never copied into the build: caches and outputs. A stale build/lib would put deleted modules into the wheel.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", ".cache", ".pytest_cache", "*.egg-info", "__pycache__", "*.pyc", "*.edgekd-tmp-*"
)
# offline; every command below runs with only PATH, HOME and these, so no PYTHONPATH brings the checkout back
PIP_ENV = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}


def _run(args: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built from a clean copy of the checkout, installed into a fresh venv; and where to run it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), **PIP_ENV}
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", src, "-w", tmp / "dist"], cwd=tmp, env=env)
    wheel = next((tmp / "dist").glob("edgekd-*.whl"))

    prefix = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(prefix)
    python = prefix / "bin" / "python"
    # this interpreter's pip installs into the fresh venv while the venv holds nothing else
    _run([*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp, env=env)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    venv_site = Path(_run([python, "-I", "-c", purelib], cwd=tmp, env=env).stdout.strip())
    borrowed = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (venv_site / "borrowed-dependencies.pth").write_text("".join(f"{d}\n" for d in borrowed))

    work = tmp / "work"  # outside the source tree; the artifacts go here
    work.mkdir()
    return {"python": python, "edgekd": prefix / "bin" / "edgekd", "prefix": prefix, "work": work, "env": env}


def _python(installed: dict, code: str) -> str:
    # -I: no PYTHONPATH, no user site, not even the working directory on sys.path
    return _run([installed["python"], "-I", "-c", code], cwd=installed["work"], env=installed["env"]).stdout


def test_edgekd_resolves_to_the_fresh_venv_not_the_checkout(installed):
    code = """
import json, sys, edgekd, edgekd.cli
from edgekd.resources import data_dir
print(json.dumps({
    "file": edgekd.__file__,
    "path": sys.path,
    "finders": [repr(f) for f in sys.meta_path],
    "data": {k: str(data_dir(k)) for k in ("targets", "devices", "calibration")},
}))
"""
    out = json.loads(_python(installed, code))
    prefix = str(installed["prefix"].resolve())
    assert out["file"].startswith(prefix)
    assert not any(p and Path(p).resolve() == ROOT for p in out["path"])
    assert not any("editable" in f.lower() for f in out["finders"]), out["finders"]
    for kind, where in out["data"].items():
        assert where.startswith(prefix) and where.endswith(f"edgekd/_data/{kind}")


def test_every_file_of_the_package_ships(installed):
    """Every module and data file under edgekd/ (subpackages, templates, ...) and the three data folders."""

    def files(top: Path) -> set[str]:
        found = (p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
        return {p.relative_to(top).as_posix() for p in found}

    installed_pkg = Path(_python(installed, "import edgekd, os; print(os.path.dirname(edgekd.__file__))").strip())
    shipped = files(installed_pkg)
    missing = files(ROOT / "edgekd") - shipped
    assert not missing, f"not in the wheel: {sorted(missing)}"
    for kind in ("targets", "devices", "calibration"):
        missing = {f"_data/{kind}/{f}" for f in files(ROOT / kind)} - shipped
        assert not missing, f"not in the wheel: {sorted(missing)[:5]}"


def test_cli_help_and_targets(installed):
    env, work = installed["env"], installed["work"]
    assert "compile" in _run([installed["edgekd"], "--help"], cwd=work, env=env).stdout
    assert "onnx-cpu" in _run([installed["edgekd"], "targets"], cwd=work, env=env).stdout


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_compile_from_outside_the_checkout(installed, precision):
    calib = Path(_python(installed, "from edgekd.resources import data_dir; print(data_dir('calibration'))").strip())
    assert calib.resolve().is_relative_to(installed["prefix"].resolve())
    out = installed["work"] / f"resnet20-{precision}"
    args = "compile resnet20 --input-shape 1,3,32,32 --target onnx-cpu --calib-samples 64 --verify-samples 8 -q"
    args = [*args.split(), "-o", out, "--precision", precision, "--calib", calib / "cifar10"]
    _run([installed["edgekd"], *args], cwd=installed["work"], env=installed["env"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == precision
    assert (out / manifest["artifact"]["model_file"]).is_file()

"""Model inputs: TorchScript, torch.export, ONNX, factory + state_dict, zoo names, pickles and model cards.

Every way a model reaches edgekd, and every way it can be wrong, ends in the model or in one named
EdgekdError (never a raw traceback).
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgekd import api
from edgekd.errors import (
    ConfigError,
    CorruptModelError,
    FactoryError,
    InputNotFoundError,
    InputShapeError,
    PickleRefusedError,
)
from edgekd.model_config import read_model_card
from edgekd.models import build_model
from edgekd.models.load import load_model

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is deprecated. Please switch to:DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]
SHAPE = (1, 3, 16, 16)

# Written to tmp_path as a package, so factories and pickled classes are importable by name.
NETS_SRC = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """Two convs (one with BN) and a head, for 1x3x16x16 inputs."""

        def __init__(self, classes: int = 5):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv1(x)))
            x = torch.relu(self.conv2(x))
            return self.fc(x.mean((2, 3)))


    def build():
        return Net()


    def needs_args(classes):
        return Net(classes)


    def raises():
        raise RuntimeError("no GPU here")


    def not_a_module():
        return 42
''')


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A uniquely named package ``<pkg>.nets`` on sys.path; removed from sys.modules afterwards."""
    pkg = f"edgekd_test_nets_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    (src / pkg).mkdir(parents=True)
    (src / pkg / "__init__.py").write_text("")
    (src / pkg / "nets.py").write_text(NETS_SRC)
    (src / f"{pkg}_top.py").write_text(NETS_SRC)  # a top-level module, for module:function
    monkeypatch.syspath_prepend(str(src))
    yield SimpleNamespace(pkg=pkg, spec=f"{pkg}.nets:build", module=importlib.import_module(f"{pkg}.nets"), src=src)
    for name in [m for m in sys.modules if m == pkg or m.startswith((f"{pkg}.", f"{pkg}_top"))]:
        del sys.modules[name]


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and non-trivial BN statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(1 + torch.rand(m.num_features, generator=g))
    return module.eval()


def same_outputs(got: nn.Module, want: nn.Module, shape=SHAPE) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(got(x), want(x), rtol=1e-5, atol=1e-6)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_bytes(n: int = 4096) -> bytes:
    data = np.random.default_rng(0).bytes(n)
    assert data[:1] != b"\x80"  # not a pickle header by chance
    return data


def tiny_onnx(path: Path, shape=(1, 3, 32, 32)) -> Path:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, shape[1], 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [shape[0], 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- TorchScript, torch.export, ONNX ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_loads_and_matches(nets, tmp_path, how):
    net = seeded(nets.module.Net())
    ts = torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.zeros(SHAPE))
    path = tmp_path / "net.pt"
    ts.save(str(path))
    loaded = load_model(str(path))
    assert (loaded.kind, loaded.source, loaded.sha256) == ("torch", str(path), sha256(path))
    assert isinstance(loaded.torch_module, torch.jit.ScriptModule) and not loaded.torch_module.training
    same_outputs(loaded.torch_module, net)


@pytest.fixture(scope="module")
def exported_pt2(tmp_path_factory):
    """A torch.export program of a conv net saved as .pt2, and the net itself (the class lives in this file)."""
    net = seeded(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 16 * 16, 5),
        )
    )
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(SHAPE),)), str(path))
    return path, net


def test_torch_export_pt2_loads_and_matches(exported_pt2):
    path, net = exported_pt2
    loaded = load_model(str(path))
    assert (loaded.kind, loaded.sha256) == ("torch", sha256(path))
    # ExportedProgram.module() itself raises on .eval(); what load_model returns must not (the pipeline calls it).
    module = loaded.torch_module.eval()
    same_outputs(module, net)


def test_torch_export_pt2_compiles_and_checks_its_shape(exported_pt2, tmp_path):
    path, net = exported_pt2
    with pytest.raises(InputShapeError, match="does not accept input shape"):  # the program's shape guard
        api.compile(api.make_config(str(path), "onnx-cpu", tmp_path / "bad", input_shape=(1, 3, 32, 32)))
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "art"
    result = api.compile(api.make_config(str(path), "onnx-cpu", out, input_shape=SHAPE, verify_samples=2))
    assert (out / "model.onnx").is_file() and result.manifest["source"]["sha256"] == sha256(path)
    assert result.manifest["fidelity"]["max_abs_error"] < 1e-4


def test_onnx_loads(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    loaded = load_model(str(path))
    assert (loaded.kind, loaded.torch_module, loaded.sha256) == ("onnx", None, sha256(path))
    assert [n.op_type for n in loaded.onnx_proto.graph.node] == ["Conv", "Relu", "GlobalAveragePool", "Flatten"]


@pytest.mark.parametrize("content", [b"", random_bytes(), b"\x08\x07garbage that is not a protobuf"])
def test_corrupt_onnx(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(CorruptModelError, match="not a valid ONNX model"):
        load_model(str(path))


def test_truncated_onnx(tmp_path):
    good = tiny_onnx(tmp_path / "good.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptModelError):
        load_model(str(path))


@pytest.mark.parametrize("name", ["bad.pt", "bad.pth", "bad.pt2", "bad.jit"])
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_random_bytes_torch_file(tmp_path, name, allow_pickle):
    path = tmp_path / name
    path.write_bytes(random_bytes())
    with pytest.raises(CorruptModelError) as e:
        load_model(str(path), allow_pickle=allow_pickle)
    assert e.value.hint  # every error says what to do


def test_truncated_torchscript(nets, tmp_path):
    good = tmp_path / "good.pt"
    torch.jit.script(seeded(nets.module.Net())).save(str(good))
    data = good.read_bytes()
    for keep in (len(data) // 2, len(data) - 30):
        path = tmp_path / f"cut{keep}.pt"
        path.write_bytes(data[:keep])
        with pytest.raises(CorruptModelError):
            load_model(str(path))


def test_zip_that_is_not_a_torch_file(tmp_path):
    import zipfile

    path = tmp_path / "notes.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    for allow_pickle in (False, True):  # not "refusing to unpickle": there is no pickle in it
        with pytest.raises(CorruptModelError):
            load_model(str(path), allow_pickle=allow_pickle)


# --- factories, zoo names, state_dicts -------------------------------------------------------------


def test_factory_with_weights(nets, tmp_path):
    ref = seeded(nets.module.Net(), seed=3)
    weights = tmp_path / "w.pth"
    torch.save(ref.state_dict(), weights)
    loaded = load_model(nets.spec, weights)
    assert (loaded.kind, loaded.source, loaded.sha256) == ("torch", nets.spec, sha256(weights))
    assert isinstance(loaded.torch_module, nets.module.Net) and not loaded.torch_module.training
    same_outputs(loaded.torch_module, ref)


def test_factory_without_weights(nets):
    loaded = load_model(nets.spec)
    assert isinstance(loaded.torch_module, nets.module.Net) and loaded.sha256 is None


def test_top_level_module_factory(nets):
    """``module:function`` (no package) is a factory too, not a misspelt zoo name."""
    loaded = load_model(f"{nets.pkg}_top:build")
    assert type(loaded.torch_module).__name__ == "Net"


def test_checkpoint_dict_with_state_dict_key(nets, tmp_path):
    ref = seeded(nets.module.Net(), seed=4)
    weights = tmp_path / "ckpt.pth"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, weights)
    same_outputs(load_model(nets.spec, weights).torch_module, ref)


@pytest.mark.parametrize("name,width", [("resnet20", None), ("resnet20:0.5", 0.5)])
def test_zoo_name_with_weights(tmp_path, name, width):
    ref = seeded(build_model(name), seed=5)
    weights = tmp_path / "resnet20.pth"
    torch.save(ref.state_dict(), weights)
    loaded = load_model(name, weights)
    assert loaded.sha256 == sha256(weights)
    same_outputs(loaded.torch_module, ref, (1, 3, 32, 32))


def test_weights_that_do_not_fit(nets, tmp_path):
    weights = tmp_path / "resnet20.pth"
    torch.save(build_model("resnet20").state_dict(), weights)
    with pytest.raises(CorruptModelError, match="does not fit") as e:
        load_model(nets.spec, weights)
    assert "num_classes" in e.value.hint
    wrong_classes = tmp_path / "classes7.pth"
    torch.save(build_model("resnet20", num_classes=7).state_dict(), wrong_classes)
    with pytest.raises(CorruptModelError, match="size mismatch"):
        load_model("resnet20", wrong_classes)


def test_weights_that_are_not_a_state_dict(nets, tmp_path):
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CorruptModelError, match="not a state_dict"):
        load_model(nets.spec, tensor)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(random_bytes())
    with pytest.raises(CorruptModelError, match="weights_only=True"):
        load_model(nets.spec, garbage)
    whole = tmp_path / "whole.pth"  # a pickled module is refused as weights too
    torch.save(nets.module.Net(), whole)
    with pytest.raises(CorruptModelError):
        load_model(nets.spec, whole)


def test_missing_weights(nets, tmp_path):
    with pytest.raises(InputNotFoundError, match="weights file"):
        load_model(nets.spec, tmp_path / "nope.pth")


def test_weights_with_a_model_file_is_refused(tmp_path):
    """--weights is for factories; silently ignoring it would compile the file's own weights."""
    weights = tmp_path / "w.pth"
    torch.save(build_model("resnet20").state_dict(), weights)
    with pytest.raises(ConfigError, match="--weights"):
        load_model(str(tiny_onnx(tmp_path / "m.onnx")), weights)


def test_state_dict_as_model(tmp_path):
    path = tmp_path / "resnet20.pth"
    torch.save(build_model("resnet20").state_dict(), path)
    with pytest.raises(FactoryError, match="state_dict") as e:
        load_model(str(path))
    assert "--weights" in e.value.hint and "--weights" in str(e.value)


# --- pickles ---------------------------------------------------------------------------------------


def test_pickled_module_refused_without_opt_in(nets, tmp_path):
    net = seeded(nets.module.Net(), seed=6)
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(PickleRefusedError, match="refusing to unpickle") as e:
        load_model(str(path))
    assert "--allow-pickle" in e.value.hint
    loaded = load_model(str(path), allow_pickle=True)
    assert isinstance(loaded.torch_module, nets.module.Net) and loaded.sha256 == sha256(path)
    same_outputs(loaded.torch_module, net)


def test_pickled_module_whose_class_is_gone(nets, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(nets.module.Net(), path)
    for name in [m for m in sys.modules if m.startswith(nets.pkg)]:
        del sys.modules[name]
    (nets.src / nets.pkg / "nets.py").unlink()
    importlib.invalidate_caches()
    with pytest.raises(CorruptModelError, match="does not unpickle") as e:
        load_model(str(path), allow_pickle=True)
    assert "importable" in e.value.hint


def test_pickled_non_module(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"a": SimpleNamespace(x=1)}, path)
    with pytest.raises(PickleRefusedError):
        load_model(str(path))
    with pytest.raises(CorruptModelError, match="not an nn.Module"):
        load_model(str(path), allow_pickle=True)


# --- names that do not resolve, files that are not there -------------------------------------------


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("nosuch.module:fn", "cannot import"),
        ("nosuchmodule:fn", "cannot import"),
        ("edgekd.models:nosuch", "no callable"),
        ("notazooname", "neither a file"),
        ("resnet20:wide", "width must be a number"),
        ("edgekd.models:ZOO", "no callable"),  # exists, but is a dict
    ],
)
def test_unresolvable_factory(spec, needle):
    with pytest.raises(FactoryError) as e:
        load_model(spec)
    assert needle in str(e.value)


def test_zoo_names_in_hint():
    with pytest.raises(FactoryError) as e:
        load_model("notazooname")
    assert "resnet20" in e.value.hint and "package.module:function" in e.value.hint


@pytest.mark.parametrize(
    "fn,needle",
    [
        ("needs_args", "missing 1 required positional argument"),
        ("raises", "no GPU here"),
        ("not_a_module", "not an nn.Module"),
    ],
)
def test_factory_that_fails(nets, fn, needle):
    with pytest.raises(FactoryError, match=needle):
        load_model(f"{nets.pkg}.nets:{fn}")


def test_factory_module_that_raises_on_import(nets):
    (nets.src / nets.pkg / "broken.py").write_text("raise ValueError('bad config')\n")
    importlib.invalidate_caches()
    with pytest.raises(FactoryError, match="bad config"):
        load_model(f"{nets.pkg}.broken:build")


def test_edgekd_build_model_needs_a_name():
    with pytest.raises(FactoryError, match="build_model"):
        load_model("edgekd.models:build_model")


@pytest.mark.parametrize("name", ["missing.pt", "missing.pth", "missing.pt2", "missing.onnx", "sub/missing.ts"])
def test_missing_file(tmp_path, name):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_model(str(tmp_path / name))


def test_folder_is_not_a_model(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(InputNotFoundError, match="folder"):
        load_model(str(tmp_path / "model.onnx"))


# --- model cards -------------------------------------------------------------------------------------


@pytest.fixture
def card(nets, tmp_path, monkeypatch):
    """A card in its own folder with relative weights and labels; the cwd is somewhere else."""
    d = tmp_path / "cards"
    d.mkdir()
    ref = seeded(nets.module.Net(), seed=7)
    torch.save(ref.state_dict(), d / "w.pth")
    (d / "labels.txt").write_text("cat\ndog\n\nbird\n")
    (d / "card.toml").write_text(
        textwrap.dedent(f'''
        [model]
        source = "{nets.spec}"
        weights = "w.pth"

        [input]
        name = "image"
        shape = [1, 3, 16, 16]
        mean = [0.5, 0.5, 0.5]
        std = [0.25, 0.25, 0.25]
        scale = 0.00392156862745098
        channel_order = "BGR"

        [labels]
        file = "labels.txt"
    ''')
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return SimpleNamespace(path=d / "card.toml", dir=d, ref=ref, spec=nets.spec)


def test_read_model_card(card):
    c = read_model_card(card.path)
    assert c.source == card.spec  # a factory is not a path, relative to the card or otherwise
    assert Path(c.weights) == card.dir / "w.pth"
    assert c.labels == ("cat", "dog", "bird")
    assert c.input["shape"] == [1, 3, 16, 16] and c.input["name"] == "image"


def test_make_config_from_card(card, tmp_path):
    config = api.make_config(str(card.path), "onnx-cpu", tmp_path / "out")
    assert config.model == card.spec and config.weights == card.dir / "w.pth"
    assert config.labels == ("cat", "dog", "bird")
    assert config.input.name == "image" and config.input.shape == (1, 3, 16, 16)
    pre = config.input.preprocess
    assert (pre.mean, pre.std, pre.size, pre.channel_order) == ((0.5,) * 3, (0.25,) * 3, (16, 16), "BGR")
    assert pre.scale == pytest.approx(1 / 255)
    loaded = load_model(config.model, config.weights)
    same_outputs(loaded.torch_module, card.ref)


def test_flags_override_card(card, tmp_path):
    other = tmp_path / "other.pth"
    torch.save(seeded(type(card.ref)(), seed=8).state_dict(), other)
    config = api.make_config(
        str(card.path),
        "onnx-cpu",
        tmp_path / "out",
        input_shape=(2, 3, 24, 24),
        mean=(0.1, 0.2, 0.3),
        channel_order="RGB",
        input_name="x",
        labels=["a", "b"],
        weights=other,
        scale=1.0,
    )
    assert config.weights == other and config.labels == ("a", "b")
    assert config.input.name == "x" and config.input.shape == (2, 3, 24, 24)
    pre = config.input.preprocess
    assert (pre.mean, pre.std, pre.size, pre.channel_order, pre.scale) == (
        (0.1, 0.2, 0.3),
        (0.25,) * 3,
        (24, 24),
        "RGB",
        1.0,
    )


@pytest.mark.parametrize(
    "source,expected",
    [
        ("resnet20", "resnet20"),
        ("resnet20:0.5", "resnet20:0.5"),  # Path("resnet20:0.5").suffix == ".5"
        ("edgekd.models.resnet_cifar:resnet20", "edgekd.models.resnet_cifar:resnet20"),
        ("m.onnx", "{dir}/m.onnx"),
        ("sub/m.pt", "{dir}/sub/m.pt"),
    ],
)
def test_card_source_kinds(tmp_path, monkeypatch, source, expected):
    d = tmp_path / "cards"
    d.mkdir()
    (d / "card.toml").write_text(f'[model]\nsource = "{source}"\n')
    monkeypatch.chdir(tmp_path)
    assert read_model_card(d / "card.toml").source == expected.format(dir=d)


def test_card_with_onnx_file_next_to_it(tmp_path, monkeypatch):
    d = tmp_path / "cards"
    d.mkdir()
    tiny_onnx(d / "m.onnx")
    (d / "card.toml").write_text('[model]\nsource = "m.onnx"\n[labels]\nnames = ["a", "b", "c", "d"]\n')
    monkeypatch.chdir(tmp_path)
    config = api.make_config(str(d / "card.toml"), "onnx-cpu", tmp_path / "out")
    assert load_model(config.model).kind == "onnx" and config.labels == ("a", "b", "c", "d")


def test_example_card_resolves():
    c = read_model_card(ROOT / "examples" / "cifar10" / "model.toml")
    assert c.source == "edgekd.models.resnet_cifar:resnet20"
    assert c.weights == ROOT / "examples" / "cifar10" / "teacher.pth" and len(c.labels) == 10
    assert type(load_model(c.source).torch_module).__name__ == "CifarResNet"


def test_card_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match="model card"):
        read_model_card(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_model_card(bad)
    bad.write_text('[model]\nweights = "w.pth"\n')
    with pytest.raises(ConfigError, match="no \\[model\\] source"):
        read_model_card(bad)
    bad.write_text('[model]\nsource = "resnet20"\n[input]\nshap = [1, 3, 32, 32]\n')
    with pytest.raises(ConfigError, match="shap"):
        read_model_card(bad)
    bad.write_text('[model]\nsource = "resnet20"\n[labels]\nfile = "nope.txt"\n')
    with pytest.raises(InputNotFoundError, match="labels file"):
        read_model_card(bad)

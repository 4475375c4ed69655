"""Model zoo, torchvision/file models, pretrained weights and checkpoint validation."""

from __future__ import annotations

import json
import os
import urllib.error
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision

from pruner.errors import PrunerError
from pruner.models import ModelSpec, build_model, has_pretrained, list_zoo, load_model, parse_model_spec
from pruner.models.cifar_resnet import PRETRAINED, cifar_resnet
from pruner.pruning.shortcut import CUSTOM_PRUNERS

SHARED_WEIGHTS = Path(os.environ.get("PRUNER_WEIGHTS_DIR", "/work/shared/models"))
ZOO = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16", "vgg19", "mobilenetv2", "googlenet"]
PARAMS_M = {  # loose ranges (millions of parameters, 10 classes)
    "resnet20": (0.26, 0.28), "resnet56": (0.84, 0.87), "resnet110": (1.70, 1.75),
    "vgg16": (14.5, 15.5), "vgg19": (19.5, 21.0), "mobilenetv2": (2.1, 2.4), "googlenet": (6.0, 6.3),
}


def n_params(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.fixture
def no_download(monkeypatch):
    """Make torch.hub downloads fail as they do offline (and never touch the network)."""
    def fail(*args, **kwargs):
        raise urllib.error.URLError("offline")
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)


@pytest.fixture
def shared_weights(monkeypatch) -> Path:
    if not (SHARED_WEIGHTS / PRETRAINED["resnet56"]).is_file():
        pytest.skip(f"pretrained CIFAR ResNet weights not found in {SHARED_WEIGHTS}")
    monkeypatch.setenv("PRUNER_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    return SHARED_WEIGHTS


def save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


# -- zoo ------------------------------------------------------------------------------------


def test_list_zoo_and_has_pretrained():
    assert list_zoo() == ZOO
    assert has_pretrained("resnet56") and has_pretrained("zoo:resnet20")
    assert not has_pretrained("vgg16") and not has_pretrained("googlenet")
    assert has_pretrained("torchvision:resnet18") and not has_pretrained("torchvision:nope")


@pytest.mark.parametrize("name", ZOO)
def test_zoo_builds_for_10_and_100_classes(name):
    x = torch.randn(2, 3, 32, 32)
    for num_classes in (10, 100):
        model, spec = load_model(name, num_classes=num_classes)
        assert spec == ModelSpec("zoo", name, num_classes, None)
        assert not model.training
        with torch.no_grad():
            assert model(x).shape == (2, num_classes)
        if num_classes == 10 and name in PARAMS_M:
            lo, hi = PARAMS_M[name]
            assert lo <= n_params(model) <= hi, (name, n_params(model))


@pytest.mark.parametrize("name", ZOO)
def test_zoo_traces_with_torch_pruning(name):
    model, _ = load_model(name, num_classes=10)
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32), customized_pruners=CUSTOM_PRUNERS)
    assert list(dg.get_all_groups())


def test_aliases_and_zoo_prefix():
    assert parse_model_spec("zoo:VGG16_BN", num_classes=10).name == "vgg16"
    assert parse_model_spec("mobilenet_v2", num_classes=10).name == "mobilenetv2"


# -- pretrained -----------------------------------------------------------------------------


def test_resnet56_pretrained_matches_manual_load(shared_weights):
    model, spec = load_model("resnet56", num_classes=10, weights="pretrained")
    assert spec.weights == "pretrained"
    ckpt = torch.load(shared_weights / PRETRAINED["resnet56"], map_location="cpu", weights_only=True)
    ref = cifar_resnet("resnet56", 10)
    ref.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}, strict=True)
    ref.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_pretrained_with_wrong_class_count(shared_weights):
    with pytest.raises(PrunerError, match="checkpoint has 10 classes but the dataset has 100"):
        load_model("resnet20", num_classes=100, weights="pretrained")


def test_pretrained_missing_offline(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("PRUNER_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PrunerError, match=r"resnet20-12fca82f\.th.*PRUNER_WEIGHTS_DIR"):
        load_model("resnet20", weights="pretrained")
    with pytest.raises(PrunerError, match="could not be downloaded.*weights file"):
        load_model("torchvision:resnet18", weights="pretrained")


def test_pretrained_not_available():
    with pytest.raises(PrunerError, match="vgg16 has no public pretrained weights"):
        parse_model_spec("vgg16", num_classes=10, weights="pretrained")
    with pytest.raises(PrunerError, match="no public pretrained weights"):
        build_model(ModelSpec("zoo", "googlenet", 10, "pretrained"))


# -- torchvision ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_random_init(name):
    model, spec = load_model(f"torchvision:{name}", num_classes=10)
    assert (spec.source, spec.name, spec.weights) == ("torchvision", name, None)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_torchvision_pretrained_from_weights_dir_replaces_head(tmp_path, monkeypatch, no_download):
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    imagenet = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    save(imagenet.state_dict(), tmp_path / Path(weights.url).name)
    monkeypatch.setenv("PRUNER_WEIGHTS_DIR", str(tmp_path))
    model, _ = load_model("torchvision:mobilenet_v3_small", num_classes=10, weights="pretrained")
    assert torch.equal(model.features[0][0].weight, imagenet.features[0][0].weight)
    assert model.classifier[-1].out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_unknown_names():
    with pytest.raises(PrunerError, match=r"unknown zoo model 'resnet18'.*torchvision:resnet18.*resnet56"):
        parse_model_spec("resnet18", num_classes=10)
    with pytest.raises(PrunerError, match=r"unknown torchvision model 'resnet19'.*list_models"):
        parse_model_spec("torchvision:resnet19", num_classes=10)
    with pytest.raises(PrunerError, match="unknown model source 'hub'"):
        parse_model_spec("hub:resnet18", num_classes=10)
    with pytest.raises(PrunerError, match="num_classes"):
        parse_model_spec("resnet20", num_classes=0)


# -- file: models ---------------------------------------------------------------------------

NET_PY = """
import torch.nn as nn

def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

def fixed():
    return make(7)

def broken(num_classes=10):
    raise ValueError("bad width")
"""


@pytest.fixture
def net_py(tmp_path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def test_file_model_round_trip(net_py, tmp_path):
    model, spec = load_model(f"file:{net_py}:make", num_classes=5)
    assert spec.source == "file" and spec.name == f"{net_py.resolve()}:make"
    weights = save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    loaded, spec2 = load_model(f"file:{net_py}:make", num_classes=5, weights=weights)
    assert spec2.weights == str(Path(weights).resolve())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # the spec is JSON-serialisable and rebuilds the same model
    again = build_model(ModelSpec(**json.loads(json.dumps(asdict(spec2)))))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_file_factory_without_num_classes(net_py):
    model, _ = load_model(f"file:{net_py}:fixed", num_classes=10)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 7)


def test_file_model_errors(net_py, tmp_path):
    with pytest.raises(PrunerError, match="does not exist"):
        parse_model_spec(f"file:{tmp_path / 'nope.py'}:make", num_classes=10)
    with pytest.raises(PrunerError, match="file:path/to/net.py:factory"):
        parse_model_spec(f"file:{net_py}", num_classes=10)
    with pytest.raises(PrunerError, match=r"no function 'missing'.*make"):
        load_model(f"file:{net_py}:missing")
    with pytest.raises(PrunerError, match="broken.*ValueError: bad width"):
        load_model(f"file:{net_py}:broken")
    bad = tmp_path / "bad.py"
    bad.write_text("def make(:\n")
    with pytest.raises(PrunerError, match="could not import model file.*SyntaxError"):
        load_model(f"file:{bad}:make")


# -- weight files ---------------------------------------------------------------------------


def test_weights_formats(tmp_path):
    ref = cifar_resnet("resnet20", 10).eval()
    sd = ref.state_dict()
    x = torch.randn(2, 3, 32, 32)
    for i, obj in enumerate([sd, {"model": sd, "epoch": 3}, {"state_dict": {f"module.{k}": v for k, v in sd.items()}}]):
        model, _ = load_model("resnet20", weights=save(obj, tmp_path / f"w{i}.pt"))
        with torch.no_grad():
            assert torch.equal(model(x), ref(x))


def test_missing_weights_file(tmp_path):
    with pytest.raises(PrunerError, match="does not exist"):
        load_model("resnet20", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(PrunerError, match="does not exist"):
        build_model(ModelSpec("zoo", "resnet20", 10, str(tmp_path / "nope.pt")))


def test_corrupt_weights_files(tmp_path):
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    good = (tmp_path / "good.pt")
    torch.save(cifar_resnet("resnet20", 10).state_dict(), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("random.pt", "truncated.pt", "empty.pt"):
        with pytest.raises(PrunerError, match=rf"could not read checkpoint .*{name}: .*is it a PyTorch state dict\?"):
            load_model("resnet20", weights=str(tmp_path / name))


def test_not_a_state_dict(tmp_path):
    with pytest.raises(PrunerError, match="holds no state dict"):
        load_model("resnet20", weights=save({"epoch": 3, "acc": 0.9}, tmp_path / "meta.pt"))


def test_key_mismatch(tmp_path):
    weights = save(cifar_resnet("resnet20", 10).state_dict(), tmp_path / "r20.pt")
    with pytest.raises(PrunerError, match=r"does not match the model architecture: \d+ missing \(e\.g\. layer1\.3"):
        load_model("resnet32", weights=weights)
    weights = save(cifar_resnet("resnet32", 10).state_dict(), tmp_path / "r32.pt")
    with pytest.raises(PrunerError, match=r"\d+ unexpected \(e\.g\. layer1\.3"):
        load_model("resnet20", weights=weights)


def test_shape_mismatch(tmp_path):
    sd = cifar_resnet("resnet20", 10).state_dict()
    sd["conv1.weight"] = torch.zeros(16, 3, 5, 5)
    with pytest.raises(PrunerError, match=r"wrong shape.*conv1\.weight \(16, 3, 5, 5\) vs \(16, 3, 3, 3\)"):
        load_model("resnet20", weights=save(sd, tmp_path / "w.pt"))


def test_class_count_mismatch(tmp_path):
    weights = save(cifar_resnet("resnet20", 100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(PrunerError, match="checkpoint has 100 classes but the dataset has 10"):
        load_model("resnet20", num_classes=10, weights=weights)
    model, _ = load_model("resnet20", num_classes=100, weights=weights)
    assert model.linear.out_features == 100


def test_pickled_module_needs_trust(tmp_path):
    ref = cifar_resnet("resnet20", 10).eval()
    weights = save(ref, tmp_path / "whole.pt")
    with pytest.raises(PrunerError, match="arbitrary code.*--trust-checkpoint"):
        load_model("resnet20", weights=weights)
    model, spec = load_model("resnet20", weights=weights, trust_checkpoint=True)
    assert spec.trust_checkpoint
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_pretrained_file_says_whether_the_weights_are_on_this_machine(tmp_path, monkeypatch):
    """Before a run: which file a pretrained load needs and whether it is here (else the run downloads it,
    which fails offline: the New run page says so)."""
    from pruner.models import pretrained_file

    monkeypatch.setenv("PRUNER_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    name, here = pretrained_file("resnet20")
    assert name.startswith("resnet20-") and name.endswith(".th") and here is False
    (tmp_path / name).write_bytes(b"")
    assert pretrained_file("resnet20") == (name, True)
    tv, here = pretrained_file("torchvision:resnet18")
    assert tv.startswith("resnet18-") and here is False
    assert pretrained_file("vgg16") is None and pretrained_file("torchvision:not_a_model") is None

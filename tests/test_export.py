"""ONNX export checked in real ONNX Runtime sessions, and code-free pruned programs."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision

from pruner.errors import PrunerError
from pruner.export import (OPSET, RELATIVE_TOLERANCE, OnnxReport, export_onnx, load_pruned_program,
                           ort_session, read_onnx_metadata, save_pruned_program)
from pruner.measure import ort_latency_ms
from pruner.models.cifar_resnet import cifar_resnet
from pruner.pruning.shortcut import CUSTOM_PRUNERS

SIZE = (3, 32, 32)
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def prune_half(model: nn.Module) -> nn.Module:
    """Physically remove the first half of the channels of every group (except the classifier's)."""
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, *SIZE), customized_pruners=CUSTOM_PRUNERS)
    for group in list(dg.get_all_groups(ignored_layers=[model.linear])):
        root = group[0].dep.target.module
        n = len(group[0].idxs)
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(n // 2))).prune()
    return model


def calibrated(model: nn.Module) -> nn.Module:
    """Set BatchNorm statistics from random batches so the logits are of a realistic size, then eval."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *SIZE))
    return model.eval()


def images(n: int, seed: int) -> torch.Tensor:
    """A normalised batch of uniform 'images'."""
    x = torch.rand(n, *SIZE, generator=torch.Generator().manual_seed(seed))
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


MODELS = {
    "resnet20": lambda: cifar_resnet("resnet20"),
    "pruned_resnet20": lambda: prune_half(cifar_resnet("resnet20").eval()),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
}


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory):
    """Exports each model once per module: name -> (model, path, report, name)."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = calibrated(MODELS[name]())
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            model.train()  # the caller's mode must survive the export
            state = {k: v.clone() for k, v in model.state_dict().items()}
            report = export_onnx(model, path, input_size=SIZE, mean=MEAN, std=STD, class_names=CLASSES,
                                 sample=images(4, 0), metadata={"model": name, "budget": "0.5"})
            assert model.training
            assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
            cache[name] = (model.eval(), path, report, name)
        return cache[name]

    return get


@pytest.fixture(params=list(MODELS))
def exported(request, export_cache):
    return export_cache(request.param)


@pytest.fixture
def pruned_onnx(export_cache):
    return export_cache("pruned_resnet20")[1]


def test_export_verified(exported):
    model, path, report, _ = exported
    assert isinstance(report, OnnxReport) and report.ok
    assert report.path == str(path) and path.is_file()
    assert report.opset == OPSET == 17
    assert 0 <= report.max_rel_diff <= report.max_abs_diff  # relative to max(1, max|logit|)
    assert report.max_rel_diff <= RELATIVE_TOLERANCE
    onnx.checker.check_model(str(path))
    assert not list(path.parent.glob(".*.tmp"))


def test_dynamic_batch_matches_pytorch(exported):
    model, path, _, _ = exported
    sess = ort_session(path)
    assert sess.get_inputs()[0].name == "input" and sess.get_outputs()[0].name == "logits"
    assert not isinstance(sess.get_inputs()[0].shape[0], int)  # symbolic batch dimension
    for n in (1, 5):
        x = images(n, seed=n)
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == (n, 10)
        assert float(np.abs(ref).max()) > 1e-2  # real logits, not a degenerate near-zero output
        assert np.abs(got - ref).max() <= RELATIVE_TOLERANCE * max(1.0, float(np.abs(ref).max()))


def test_metadata_round_trip(exported):
    _, path, _, name = exported
    meta = read_onnx_metadata(path)
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    assert meta["input_size"] == list(SIZE)
    assert meta["class_names"] == CLASSES
    assert meta["model"] == name and meta["budget"] == "0.5"


def test_ort_latency(pruned_onnx):
    path = pruned_onnx
    for batch in (1, 4):
        value = ort_latency_ms(path, SIZE, batch_size=batch, warmup=1, repeats=3)
        assert value > 0 and math.isfinite(value)


@pytest.mark.parametrize("content", [b"this is not an onnx model", "truncated", b""])
def test_corrupted_onnx_is_a_user_error(pruned_onnx, tmp_path, content):
    data = pruned_onnx.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(PrunerError):
        ort_session(bad)
    with pytest.raises(PrunerError):
        read_onnx_metadata(bad)
    with pytest.raises(PrunerError, match="does not exist"):
        ort_session(tmp_path / "missing.onnx")
    with pytest.raises(PrunerError, match="does not exist"):
        read_onnx_metadata(tmp_path / "missing.onnx")


def test_export_rejects_bad_arguments(tmp_path):
    model = cifar_resnet("resnet20")
    common = dict(input_size=SIZE, mean=MEAN, std=STD, class_names=CLASSES)
    with pytest.raises(PrunerError, match="sample"):
        export_onnx(model, tmp_path / "a.onnx", sample=torch.randn(2, 3, 64, 64), **common)
    with pytest.raises(PrunerError, match="reserved"):
        export_onnx(model, tmp_path / "a.onnx", sample=images(2, 0), metadata={"mean": "0"}, **common)
    assert not (tmp_path / "a.onnx").exists()


@pytest.fixture(scope="module")
def pruned_program(tmp_path_factory):
    torch.manual_seed(1)
    model = calibrated(prune_half(cifar_resnet("resnet20").eval()))
    path = tmp_path_factory.mktemp("program") / "pruned.pt2"
    save_pruned_program(model, path, input_size=SIZE, sample=images(1, 3))
    return model, path


def test_pruned_program_loads_without_project_code(pruned_program, tmp_path):
    model, path = pruned_program
    x = images(5, 4)
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        io = torch.load({str(tmp_path / 'io.pt')!r})
        net = torch.export.load({str(path)!r}).module()
        with torch.no_grad():
            diff = (net(io["x"]) - io["y"]).abs().max().item()
            shape = tuple(net(io["x"][:1]).shape)
        assert not any(m == "pruner" or m.startswith("pruner.") for m in sys.modules), "pruner was imported"
        print(diff, shape)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    diff, shape = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert float(diff) <= 1e-5
    assert shape == "(1, 10)"


def test_load_pruned_program_in_process(pruned_program, tmp_path):
    model, path = pruned_program
    net = load_pruned_program(path)
    assert net.eval() is net and not net.training
    with pytest.raises(PrunerError, match="inference-only"):
        net.train()
    x = images(3, 5)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
    with pytest.raises(PrunerError, match="does not exist"):
        load_pruned_program(tmp_path / "missing.pt2")
    (tmp_path / "bad.pt2").write_bytes(b"garbage")
    with pytest.raises(PrunerError):
        load_pruned_program(tmp_path / "bad.pt2")


class ExportsDifferently(nn.Module):
    """Adds 1 to its logits only while being exported, so ONNX Runtime disagrees with PyTorch."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        y = self.net(x)
        return y + 1.0 if torch.onnx.is_in_onnx_export() else y


def test_disagreeing_export_is_rejected(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(PrunerError, match=r"disagrees with PyTorch: max \|ort - torch\| = 1"):
        export_onnx(ExportsDifferently(), path, input_size=SIZE, mean=MEAN, std=STD, class_names=CLASSES,
                    sample=images(2, 0))
    assert not path.exists() and not list(tmp_path.iterdir())

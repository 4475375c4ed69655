"""Partial pruning: channel groups that reach an op the dependency graph cannot follow are frozen
(left unpruned, named with the op and why), the rest is pruned; ShuffleNet end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from pruner.budget import Budget, cost_floor, solve
from pruner.errors import PrunerError
from pruner.export import export_onnx
from pruner.measure import count_cost
from pruner.pruning.masks import ChannelMasker, ChannelSlicer
from pruner.pruning.importance import channel_scores, ranking_from_scores
from pruner.pruning.opaque import classify
from pruner.pruning.space import PruningSpace, frozen_note

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit of our own: split, one branch 1x1 -> depthwise 3x3 -> 1x1, concat, shuffle."""

    def __init__(self, c, inner):
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=False), nn.BatchNorm2d(inner),
            nn.Conv2d(inner, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return _shuffle(torch.cat([a, self.branch(b)], 1), 2)


class TinyShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(32, 24), ShuffleUnit(32, 24))
        self.head = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = self.head(self.units(self.expand(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _macs(model, size):
    return count_cost(model, (3, size, size)).macs


def _prune_to(model, size, target):
    space = PruningSpace(model, (3, size, size))
    space.set_ranking(ranking_from_scores(channel_scores(model, space)))
    sol = solve(space, [1.0] * len(space.groups), Budget("flops", target))
    pruned, _ = space.prune(model, sol.counts)
    return space, pruned.eval(), sol


def _check_frozen_untouched(space, model, pruned):
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    frozen_layers = [name for f in space.frozen for name in f.layers]
    assert frozen_layers
    for name in frozen_layers:
        assert after[name].weight.shape[0] == before[name].weight.shape[0], name   # its outputs keep their width
    return frozen_layers


def _onnx_matches(pruned, size, tmp_path):
    report = export_onnx(pruned, tmp_path / "m.onnx", input_size=(3, size, size), mean=[0.5] * 3, std=[0.25] * 3,
                         class_names=[str(i) for i in range(10)], sample=torch.randn(3, 3, size, size))
    assert report.ok and report.max_abs_diff <= 1e-3


def test_own_shuffle_unit_is_pruned_where_it_can_be(tmp_path):
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    space, pruned, sol = _prune_to(model, 16, 0.7)
    names = {g.name for g in space.groups}
    # the inner width of both branches is pruned (the 1x1 -> depthwise group), the stem too
    assert {"units.0.branch.3", "units.1.branch.3"} <= names or {"units.0.branch.0", "units.1.branch.0"} <= names
    assert "stem.0" in names
    # the channels that pass through the chunk and the shuffle are frozen, each with its op and why
    reasons = " ".join(f.reason for f in space.frozen)
    assert ("view" in reasons or "chunk" in reasons) and "channel axis" in reasons
    frozen_layers = _check_frozen_untouched(space, model, pruned)
    assert "units.0.branch.5" in frozen_layers and "expand.0" in frozen_layers
    # the budget holds on the measured cost, as predicted
    measured = _macs(pruned, 16) / _macs(model, 16)
    assert measured <= 0.7 + 1e-9
    assert measured == pytest.approx(sol.achieved, rel=1e-6)
    _onnx_matches(pruned, 16, tmp_path)
    # the frozen channels count as kept in the floor, and the note says so
    assert cost_floor(space, "flops") > 0.05
    note = frozen_note(space.frozen_report())
    assert note.startswith(f"{len(space.frozen)} channel group") and "floor" in note


def test_torchvision_shufflenet_v2_half_its_macs(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    space, pruned, sol = _prune_to(model, 64, 0.5)
    assert len(space.groups) >= 10 and len(space.frozen) >= 10
    assert 0.9 < space.prunable_macs_share <= 1.0
    _check_frozen_untouched(space, model, pruned)
    ratio = _macs(pruned, 64) / _macs(model, 64)
    assert 0.45 < ratio <= 0.5 + 1e-9 and ratio == pytest.approx(sol.achieved, rel=1e-6)
    _onnx_matches(pruned, 64, tmp_path)
    # the search's fast paths (channel masks on the unpruned model, a slicing plan) agree with the surgery
    assert ChannelMasker(model, space).verify(sol.counts, torch.randn(2, 3, 64, 64)) < 1e-3
    ChannelSlicer(model, space).verify(sol.counts)


class PixelShuffleNet(nn.Module):
    """pixel_shuffle turns channels into space: the channels before it cannot be followed."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)   # its output reaches pixel_shuffle: frozen
        self.c = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.pixel_shuffle(self.b(F.relu(self.a(x))), 2)
        return self.fc(F.relu(self.c(x)).mean((2, 3)))


class _Swap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.flip(1)

    @staticmethod
    def backward(ctx, g):
        return g.flip(1)


class CustomFunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.a(x))
        return self.fc(_Swap.apply(F.relu(self.b(x))).mean((2, 3)))


@pytest.mark.parametrize("net, frozen_root, prunable_root, why", [
    (PixelShuffleNet, "b", "a", "changes the channel count"),
    (CustomFunctionNet, "b", "a", "custom autograd function"),
])
def test_other_unfollowable_ops_freeze_their_groups(net, frozen_root, prunable_root, why, tmp_path):
    torch.manual_seed(0)
    model = net().eval()
    space = PruningSpace(model, (3, 8, 8))
    assert [f.name for f in space.frozen] == [frozen_root] and why in space.frozen[0].reason
    assert prunable_root in {g.name for g in space.groups}
    sol = solve(space, [1.0] * len(space.groups), Budget("flops", 0.9))
    space.set_ranking(ranking_from_scores(channel_scores(model, space)))
    pruned, _ = space.prune(model, sol.counts)
    _check_frozen_untouched(space, model, pruned)
    _onnx_matches(pruned.eval(), 8, tmp_path)


class AllFrozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(_shuffle(self.a(x), 2).mean((2, 3)))


def test_every_group_frozen_is_one_line_naming_the_op():
    with pytest.raises(PrunerError) as err:
        PruningSpace(AllFrozen().eval(), (3, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg and "every channel group of this model is frozen" in msg
    assert "view (N, 8, 8, 8) -> (N, 2, 4, 8, 8)" in msg


def test_followable_views_and_axis_moves_are_not_frozen():
    assert classify("flatten", (1, 64, 1, 1), (1, 64), None) is None           # to the classifier
    assert classify("view", (1, 64, 7, 7), (1, 64 * 49), None) is None
    assert classify("reshape", (1, 64, 7, 7), (1, 64, 49), None) is None       # channel axis kept
    assert classify("permute", (1, 64, 7, 7), (1, 7, 7, 64), None) is None     # ConvNeXt: the axis moves
    assert classify("chunk", (1, 64, 7, 7), (1, 32, 7, 7), 1) is not None
    assert classify("chunk", (1, 64, 7, 7), (1, 64, 7, 3), 3) is None          # not the channel axis
    assert classify("view", (1, 64, 7, 7), (1, 2, 32, 7, 7), None) is not None


def test_cli_info_and_run_say_what_is_frozen(tmp_path):
    """The real CLI on ShuffleNetV2 (digits demo, no fine-tuning): the frozen groups listed by ``info``,
    a warning during the run, ``summary.json``'s ``frozen``, half the MACs."""
    info = subprocess.run([sys.executable, "-m", "pruner", "info", "--model", "torchvision:shufflenet_v2_x0_5",
                           "--weights", "none", "--data", "digits", "--json", str(tmp_path / "g.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert info.returncode == 0, info.stderr
    assert "frozen group" in info.stdout and "channel groups frozen" in info.stdout
    assert json.loads((tmp_path / "g.json").read_text())["frozen"]["groups"]
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "pruner", "prune", "--model", "torchvision:shufflenet_v2_x0_5",
                          "--weights", "none", "--data", "digits", "--budget", "flops=0.5", "--strategy", "uniform",
                          "--finetune-epochs", "0", "--progress", "plain", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "warning: 13 channel groups frozen" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done"
    assert len(summary["frozen"]["groups"]) == 13
    assert summary["pruned"]["macs"] <= 0.5 * summary["base"]["macs"]

"""Dependency-aware pruning: groups, exact cost model, physical surgery, option-A shortcuts."""

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
import torchvision

from pruner.errors import PrunerError
from pruner.measure import count_cost
from pruner.models.cifar_resnet import cifar_resnet
from pruner.pruning.importance import channel_scores, ranking_from_scores
from pruner.pruning.shortcut import ZeroPadShortcut
from pruner.pruning.space import PruningSpace, apply_record


class LambdaPad(nn.Module):
    """The original option-A shortcut, as the public CIFAR ResNet code writes it."""

    def __init__(self, planes):
        super().__init__()
        self.planes = planes

    def forward(self, x):
        p = self.planes // 4
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p), "constant", 0)


class SEBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class UserNet(nn.Module):
    """A user's model: concatenation, a depthwise conv, squeeze-excitation, a functional residual add."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.bn = nn.BatchNorm2d(24)
        self.se = SEBlock(24)
        self.pw = nn.Conv2d(24, 24, 1)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        y = self.se(F.relu(self.bn(self.dw(x))))
        x = x + self.pw(y)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _models():
    return {
        "resnet56": lambda: cifar_resnet("resnet56"),
        "user": lambda: UserNet(),
        "torchvision:resnet18": lambda: torchvision.models.resnet18(num_classes=10),
        "torchvision:mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
        "torchvision:mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        "torchvision:googlenet": lambda: torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True),
        "torchvision:densenet121": lambda: torchvision.models.densenet121(num_classes=10),
        "torchvision:efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
        "torchvision:regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=10),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_random_ratios_prune_runs_and_costs_match(name):
    """Property: random per-group keep ratios → the pruned model runs, output shape kept, MACs as predicted."""
    torch.manual_seed(0)
    model = _models()[name]().eval()
    space = PruningSpace(model, (3, 32, 32))
    assert len(space) > 0
    assert space.base_macs == count_cost(model, (3, 32, 32)).macs
    ranking = ranking_from_scores(channel_scores(model, space, "l1"))
    x = torch.randn(2, 3, 32, 32)
    for trial in range(3):
        rng = random.Random(trial)
        ratios = [rng.uniform(0.1, 1.0) for _ in space.groups]
        counts = space.counts(ratios)
        pruned, record = space.prune(model, counts, ranking)
        with torch.no_grad():
            assert pruned(x).shape == (2, 10)
        cost = count_cost(pruned, (3, 32, 32))
        assert (cost.macs, cost.params) == space.predict(counts=counts)
        assert cost.macs < space.base_macs
    # the base model is untouched
    assert count_cost(model, (3, 32, 32)).macs == space.base_macs


def test_plain_torch_pruning_breaks_the_original_option_a_shortcut():
    """Why the project's ZeroPadShortcut exists: with the F.pad shortcut, pruning breaks the forward pass."""
    model = cifar_resnet("resnet20").eval()
    for layer in (model.layer2, model.layer3):
        layer[0].shortcut = LambdaPad(layer[0].conv1.out_channels)
    x = torch.randn(1, 3, 32, 32)
    dg = tp.DependencyGraph().build_dependency(model, x, verbose=False)
    for g in list(dg.get_all_groups(ignored_layers=[model.linear])):
        n = len(g[0].idxs)
        root = g[0].dep.target.module
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(n // 2))).prune()
    with pytest.raises(RuntimeError):
        model(x)


def test_zero_pad_shortcut_matches_the_original_and_survives_pruning():
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(ZeroPadShortcut(16, 32)(x), LambdaPad(32)(x))
    model = cifar_resnet("resnet20").eval()
    space = PruningSpace(model, (3, 32, 32))
    names = space.names
    # the three residual stages are separate groups, decoupled by the shortcuts
    coupled = [g.name for g in space.groups if g.coupled]
    assert len(coupled) == 3
    ranking = ranking_from_scores(channel_scores(model, space, "l2"))
    counts = [max(1, g.channels // 2) for g in space.groups]
    pruned, record = space.prune(model, counts, ranking)
    sc = pruned.layer2[0].shortcut
    assert sc.in_channels == counts[names.index("conv1")]
    assert sc.out_channels == counts[names.index(coupled[1])]
    with torch.no_grad():
        out = pruned(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)


def test_pruned_shortcut_routes_kept_channels_exactly():
    """After pruning, the shortcut equals the original shortcut followed by channel selection."""
    sc = ZeroPadShortcut(8, 16)
    x = torch.randn(1, 8, 4, 4)
    full = sc(x)
    from pruner.pruning.shortcut import ZeroPadShortcutPruner

    pr = ZeroPadShortcutPruner()
    pr.prune_in_channels(sc, [1, 5])        # inputs 1 and 5 removed upstream
    pr.prune_out_channels(sc, [0, 6, 9])    # outputs 0, 6 and 9 removed downstream
    keep_in = [i for i in range(8) if i not in (1, 5)]
    keep_out = [j for j in range(16) if j not in (0, 6, 9)]
    expected = full.clone()
    expected[:, [4 + 1, 4 + 5]] = 0         # channels that carried removed inputs are now zero
    assert torch.equal(sc(x[:, keep_in]), expected[:, keep_out])


def test_record_replays_on_a_fresh_model():
    model = cifar_resnet("resnet20").eval()
    space = PruningSpace(model, (3, 32, 32))
    ranking = ranking_from_scores(channel_scores(model, space, "l1"))
    counts = [max(1, int(g.channels * 0.6)) for g in space.groups]
    pruned, record = space.prune(model, counts, ranking)
    fresh = apply_record(cifar_resnet("resnet20"), record, (3, 32, 32))
    fresh.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), pruned(x), atol=1e-5)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "random"])
def test_importance_criteria(criterion):
    model = cifar_resnet("resnet20").eval()
    space = PruningSpace(model, (3, 32, 32))
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    scores = channel_scores(model, space, criterion, batches=data)
    assert [len(s) for s in scores] == [g.channels for g in space.groups]
    assert all(torch.isfinite(s).all() for s in scores)
    assert all(p.grad is None for p in model.parameters())
    if criterion == "l1":  # the least important channel of an internal group has the smallest L1 mass
        g = next(g for g in space.groups if not g.coupled)
        conv = dict(model.named_modules())[g.name]
        order = ranking_from_scores(scores)[g.index]
        assert scores[g.index][order[0]] <= scores[g.index][order[-1]]
        assert conv.weight.shape[0] == g.channels


def test_bad_inputs():
    model = cifar_resnet("resnet20").eval()
    space = PruningSpace(model, (3, 32, 32))
    with pytest.raises(PrunerError, match="keep ratios"):
        space.counts([1.0])
    with pytest.raises(PrunerError, match=r"\[0, 1\]"):
        space.counts([1.5] * len(space))
    with pytest.raises(PrunerError, match="max_prune"):
        PruningSpace(model, (3, 32, 32), max_prune=1.0)

    class NoGroups(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(PrunerError, match="no prunable"):
        PruningSpace(NoGroups(), (3, 32, 32))


def test_cost_model_counts_a_channel_flattened_into_the_classifier_once_per_feature():
    """A conv whose C x 4 x 4 outputs are flattened into a linear layer: removing one channel removes 16 of the
    linear layer's inputs; the predicted MACs match the flop counter (``count_cost``) on the pruned model."""

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 32, 3, padding=1, stride=2)
            self.fc1 = nn.Linear(32 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.b(F.relu(self.a(x))))
            return self.fc2(F.relu(self.fc1(x.flatten(1))))

    def macs(m):
        return count_cost(m, (3, 8, 8)).macs

    torch.manual_seed(0)
    model = Flat().eval()
    space = PruningSpace(model, (3, 8, 8))
    assert space.base_macs == macs(model)
    space.set_ranking([torch.randperm(g.channels) for g in space.groups])
    counts = space.counts([0.5] * len(space))
    pruned, _ = space.prune(model, counts)
    assert pruned.fc1.in_features == 16 * 4 * 4
    assert space.predict(counts=counts)[0] == macs(pruned)
    assert space.predict(counts=counts)[1] == sum(p.numel() for p in pruned.parameters())

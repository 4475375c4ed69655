import pytest

import numpy as np

from pruner.budget import Budget, model_cost_fn, saving_rates, solve
from pruner.errors import PrunerError
from pruner.measure import count_cost
from pruner.models.cifar_resnet import cifar_resnet
from pruner.pruning.importance import channel_scores, ranking_from_scores
from pruner.pruning.space import PruningSpace


@pytest.fixture(scope="module")
def space_and_model():
    m = cifar_resnet("resnet56").eval()
    return PruningSpace(m, (3, 32, 32), max_prune=0.9), m


@pytest.mark.parametrize("text", ["flops=0.5", "params=0.4", "flops=0.2"])
def test_uniform_allocation_meets_budget(space_and_model, text):
    space, model = space_and_model
    budget = Budget.parse(text)
    sol = solve(space, [1.0] * len(space), budget)
    assert sol.achieved <= budget.target
    assert sol.achieved > budget.target - 0.05  # tight: the solver does not over-prune
    pruned, _ = space.prune(model, sol.counts, ranking_from_scores(channel_scores(model, space, "l1")))
    cost = count_cost(pruned, (3, 32, 32))
    key = cost.macs / space.base_macs if budget.kind == "flops" else cost.params / space.base_params
    assert key == pytest.approx(sol.achieved)


def test_uneven_allocation_spares_zero_weight_groups(space_and_model):
    space, _ = space_and_model
    alloc = [0.0 if i % 2 else 1.0 for i in range(len(space))]
    sol = solve(space, alloc, Budget("flops", 0.7))
    for i, g in enumerate(space.groups):
        if i % 2:
            assert sol.counts[i] == g.channels
    assert sol.achieved <= 0.7


def test_min_channels_honoured(space_and_model):
    space, _ = space_and_model
    sol = solve(space, [1.0] * len(space), Budget("flops", 0.15))
    assert all(c >= space.min_keep(g) for c, g in zip(sol.counts, space.groups))


@pytest.mark.parametrize("text,match", [
    ("flops=1.5", "outside"), ("flops=0", "outside"), ("size=0.5", "unknown budget"), ("flops", "look like"),
    ("flops=abc", "not a number"),
])
def test_bad_budgets(text, match):
    with pytest.raises(PrunerError, match=match):
        Budget.parse(text)


def test_unreachable_budget(space_and_model):
    space, _ = space_and_model
    with pytest.raises(PrunerError, match="cannot be met"):
        solve(space, [1.0] * len(space), Budget("flops", 0.01))


def test_saving_rates_price_each_group_in_the_budget_s_own_cost(space_and_model):
    """A later stage's convolution holds 16x the parameters of a first-stage one but the same
    MACs: the rates say so, and each rate is the cost a small cut of that group really saves."""
    space, _ = space_and_model
    full = [g.channels for g in space.groups]
    plain = [i for i, g in enumerate(space.groups) if not g.coupled]
    first, last = plain[0], plain[-1]
    flops, params = saving_rates(space, "flops", full), saving_rates(space, "params", full)
    assert flops[last] == pytest.approx(flops[first], rel=0.05)
    assert params[last] > 10 * params[first]
    for kind, rates in (("flops", flops), ("params", params)):
        cost = model_cost_fn(space, kind)
        g = space.groups[last]
        cut = list(full)
        cut[last] -= max(1, round(0.1 * g.channels))
        assert (1.0 - cost(cut)) == pytest.approx(rates[last] * (full[last] - cut[last]) / g.channels)


def test_saving_rates_of_a_sparsity_budget_are_each_layer_s_share_of_the_weights():
    from pruner.pruning.sparsity import SparsitySpace

    space = SparsitySpace(cifar_resnet("resnet20").eval(), (3, 32, 32), max_prune=0.9)
    rates = saving_rates(space, "sparsity", [g.channels for g in space.groups])
    share = np.array([g.channels for g in space.groups], dtype=float) / space.prunable
    np.testing.assert_allclose(rates, share, rtol=0.02)


def test_bisect_finds_the_boundary_from_either_end():
    from pruner.budget import bisect

    # the good end below the boundary (a keep that grows the cost) and above it (a scale that shrinks it)
    x, v = bisect(lambda x: x * x, lambda v: v <= 0.25, 0.0, 1.0, 0.0, iterations=60, tol=1e-9)
    assert x == pytest.approx(0.5, abs=1e-8) and v <= 0.25
    x, v = bisect(lambda x: 1.0 - x, lambda v: v <= 0.3, 1.0, 0.0, 0.0, iterations=60)
    assert x == pytest.approx(0.7, abs=1e-12) and v <= 0.3
    calls = []
    bisect(lambda x: calls.append(x) or x, lambda v: v <= 0.5, 0.0, 1.0, 0.0, iterations=40, tol=0.1)
    assert len(calls) == 4                       # stops once the ends are closer than tol
    assert bisect(lambda x: x, lambda v: False, 2.0, 1.0, "kept", iterations=5) == (2.0, "kept")


def test_the_group_floor_is_the_spaces_min_keep(space_and_model):
    from pruner.budget import cost_floor, floor_counts, floor_ratios

    space, _ = space_and_model
    counts = floor_counts(space)
    assert counts == [space.min_keep(g) for g in space.groups]
    assert floor_ratios(space).tolist() == [c / g.channels for c, g in zip(counts, space.groups)]
    assert cost_floor(space, "flops") == model_cost_fn(space, "flops")(counts)

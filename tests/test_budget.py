import pytest

from pruner.budget import Budget, solve
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

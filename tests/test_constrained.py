"""constrained: the layer-by-layer constrained MDP and its Lagrangian PPO (pruner/search/constrained.py).

The agent is exercised on its own (real torch networks, synthetic episodes), then whole runs go
through the job runner (real resnet20, random init, the offline digits set, tiny settings):
the dual step, the consistent Lagrangian, both critics, the budgets (params, sparsity, a user's
Python cost) and determinism.
"""

import json

import numpy as np
import pytest
import torch

from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import Session, run_job
from pruner.runs.rundir import RunDir
from pruner.search import make_strategy
from pruner.search.base import validate_strategy
from pruner.search.constrained import ConstrainedRL, LagrangianPPO


pytestmark = pytest.mark.usefixtures("one_thread")


def agent(**over) -> LagrangianPPO:
    p = {**ConstrainedRL.defaults(), **over}
    return LagrangianPPO(dim=3, n_layers=4, n_costs=1, p=p, seed=0)


def episodes(a: LagrangianPPO, rng, e=16, n=4):
    states = rng.standard_normal((e, n, 3))
    sigma = a.sigma()
    us = np.array([[a.mean(states[i, t]) + sigma[t] * rng.standard_normal() for t in range(n)] for i in range(e)])
    return states, us


# ---------------------------------------------------------------------- the agent on its own
def test_actor_follows_the_lagrangian_advantage():
    """Reward prefers large actions; a cost penalises them. With lambda = 0 the actor's mean
    rises, with a large lambda on the cost it falls: the primal step climbs the Lagrangian."""
    rng = np.random.default_rng(0)
    probe = rng.standard_normal((8, 3))
    for lam, direction in ((0.0, 1), (20.0, -1)):
        a = agent(lr=0.02)
        before = np.mean([a.mean(s) for s in probe])
        for _ in range(15):
            states, us = episodes(a, rng)
            reward = us.mean(1) * 0.1                  # R: larger actions, more reward
            cost = (1.0 + us.mean(1))[:, None]          # C: larger actions, more cost
            a.update(states, us, reward, cost, np.array([lam]))
        after = np.mean([a.mean(s) for s in probe])
        assert direction * (after - before) > 0.05, (lam, before, after)


def test_both_critics_learn_their_returns():
    rng = np.random.default_rng(1)
    a = agent(gae=1.0)
    states, us = episodes(a, rng)
    reward = 0.5 + 0.1 * states[:, 0, 0]
    cost = (1.2 + 0.3 * states[:, 0, 1])[:, None]
    first = a.update(states, us, reward, cost, np.array([1.0]))
    for _ in range(30):
        last = a.update(states, us, reward, cost, np.array([1.0]))
    assert last["reward_critic_loss_after"] < 0.2 * first["reward_critic_loss"]
    assert last["cost_critic_loss_after"] < 0.2 * first["cost_critic_loss"]
    with torch.no_grad():  # the critics predict the terminal signals at the last step
        s = torch.as_tensor(states[:, -1], dtype=torch.float64)
        assert np.abs(a.reward_critic(s)[:, 0].numpy() - reward).mean() < 0.1
        assert np.abs(a.cost_critic(s)[:, 0].numpy() - cost[:, 0]).mean() < 0.2


def test_agent_is_deterministic_for_a_seed():
    def run(seed):
        a = LagrangianPPO(3, 4, 1, ConstrainedRL.defaults(), seed=seed)
        rng = np.random.default_rng(2)
        states, us = episodes(a, rng)
        a.update(states, us, us.mean(1), us[:, :1] ** 2, np.array([1.0]))
        return [a.mean(s) for s in states[:, 0]]

    torch.manual_seed(123)
    one = run(0)
    drawn = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(drawn, torch.rand(1))   # the global RNG is left as it was
    assert run(0) == one and run(1) != one


# ---------------------------------------------------------------------- whole runs
def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", val_size=300, budget="params=0.4", strategy="constrained",
                strategy_params={"batch": 4, "init": "full"}, search_evals=14, search_images=100, recal_images=64,
                report_images=100, latency_repeats=5, finetune=FinetuneConfig(epochs=0), export=False, seed=0)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def params_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("params") / "run"
    return out, run_job(tiny(), out)


def test_params_budget_is_met_and_the_multiplier_rises_while_samples_violate(params_run):
    out, summary = params_run
    assert summary["status"] == "done", summary["error"]
    assert summary["pruned"]["params"] / summary["base"]["params"] <= 0.4 + 1e-9
    assert json.loads((out / "state" / "search.json").read_text())["cost"] <= 0.4
    events = RunDir(out).events("constrained")
    assert len(events) >= 2
    # init=full keeps 95%: the first samples violate params <= 0.4, so lambda rises from 1
    assert events[0]["mean_cost"] > 0.4 and events[0]["multiplier"] > 1.0
    lam = 1.0
    for e in events:  # the dual step, exactly: lambda <- max(0, lambda + dual_lr * (mean C - 1))
        assert e["multiplier"] == pytest.approx(max(0.0, lam + (e["mean_cost"] / 0.4 - 1.0)))
        assert (e["multiplier"] > lam) == (e["mean_cost"] > 0.4) or e["multiplier"] == 0.0
        lam = e["multiplier"]


def test_the_penalty_is_the_dual_steps_lagrangian(params_run):
    """Each sample's reward is R - lambda (C - 1) with the lambda in force when it was drawn and the
    same C = cost / limit whose batch mean the dual step ascends on."""
    out, _ = params_run
    events = RunDir(out).events("constrained")
    lams = [1.0] + [e["multiplier"] for e in events]
    cands = [c for c in RunDir(out).events("candidate") if c["meta"].get("iteration") is not None]
    assert cands
    for c in cands:
        it = c["meta"]["iteration"]
        C = c["meta"]["costs"]["params"] / 0.4
        assert c["reward"] == pytest.approx(c["top1"] / 100.0 - lams[it] * (C - 1.0))
    for e in events:
        mine = [c for c in cands if c["meta"]["iteration"] == e["step"]]
        assert e["mean_cost"] == pytest.approx(np.mean([c["meta"]["costs"]["params"] for c in mine]))


def test_both_critics_are_trained_in_a_run(params_run):
    out, _ = params_run
    events = RunDir(out).events("constrained")
    for e in events:
        assert e["reward_critic_loss_after"] < e["reward_critic_loss"]
        assert e["cost_critic_loss_after"] < e["cost_critic_loss"]


def test_same_seed_same_run(params_run, tmp_path):
    out, summary = params_run
    again = run_job(tiny(), tmp_path / "again")
    assert again["status"] == "done", again["error"]
    counts = lambda d: [c["counts"] for c in RunDir(d).events("candidate")]  # noqa: E731
    assert counts(tmp_path / "again") == counts(out)
    assert [e["multiplier"] for e in RunDir(tmp_path / "again").events("constrained")] == \
        [e["multiplier"] for e in RunDir(out).events("constrained")]


def test_the_multiplier_falls_when_samples_meet_the_constraint(tmp_path):
    """A params limit of 0.9 under a flops=0.5 budget: the samples start on the flops boundary,
    far below the params limit, so the params multiplier falls (to 0) while the flops one is learnt."""
    summary = run_job(tiny(budget="flops=0.5", strategy_params={"batch": 4, "cost": "params", "limit": 0.9},
                           search_evals=11), tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    assert summary["budget"]["achieved"] <= 0.5
    events = RunDir(tmp_path / "run").events("constrained")
    lam = [1.0] + [e["multipliers"]["params"] for e in events]
    assert all(b < a or b == 0.0 for a, b in zip(lam, lam[1:])) and lam[-1] < 1.0
    assert all(e["mean_costs"]["params"] < 0.9 for e in events)
    assert set(events[0]["multipliers"]) == {"params", "flops=0.5"}


def test_sparsity_budget_with_a_python_cost(tmp_path):
    """The paper's mode: per-layer weight pruning (sparsity=0.6, the layers of a SparsitySpace),
    constrained on a user's Python function (non-zero parameters, absolute) to at most 0.35 of the
    unpruned model's; the final model meets both."""
    cost_file = tmp_path / "nonzero.py"
    cost_file.write_text("def nonzero(model):\n    return float(sum(int((p != 0).sum()) for p in model.parameters()))\n")
    spec = f"python:{cost_file}:nonzero"
    summary = run_job(tiny(budget="sparsity=0.6", trust_code=True, search_evals=11,
                           strategy_params={"batch": 4, "cost": spec, "cost_scale": "absolute", "limit": 0.35}),
                      tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    assert summary["sparsity"]["sparsity"] >= 0.6 - 1e-9
    assert summary["sparsity"]["nonzero_params"] <= 0.35 * summary["base"]["params"] + 1
    events = RunDir(tmp_path / "run").events("constrained")
    assert events and events[0]["cost"] == spec and set(events[0]["multipliers"]) == {spec, "sparsity=0.6"}


def test_sparsity_budget_alone(tmp_path):
    summary = run_job(tiny(budget="sparsity=0.7", strategy_params={"batch": 4}, search_evals=10), tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    assert summary["budget"]["kind"] == "sparsity" and summary["sparsity"]["sparsity"] >= 0.7 - 1e-9
    events = RunDir(tmp_path / "run").events("constrained")
    assert events and events[0]["budget"] == pytest.approx(0.3)   # the density that may remain


# ---------------------------------------------------------------------- filling the budget
def _fill_setup(max_evals, budget="params=0.4"):
    from pruner.runs.job import Session
    from pruner.search.base import SearchContext
    from pruner.search.constrained import _Best, build_constraints

    session = Session(tiny(budget=budget))
    ev = session.evaluator(max_evals=max_evals)
    ctx = SearchContext(ev, seed=0)
    strat = ConstrainedRL(fill=2)
    learnt, required = build_constraints(ctx, strat.params)
    best = _Best(ctx, required)
    return session, ev, ctx, strat, required, best


@pytest.mark.parametrize("budget", ["params=0.4", "sparsity=0.6"])
def test_a_sample_with_unused_budget_is_grown_onto_the_boundary(budget):
    """A feasible sample far inside the budget (uniform pruning to a quarter of the limit's slack) is
    grown along its own direction onto the constraint boundary and scored: every group keeps at least
    what it kept, the cost rises to the limit (not above), and the answer is the better of the two."""
    from pruner.budget import Budget, solve

    session, ev, ctx, strat, required, best = _fill_setup(max_evals=4, budget=budget)
    kind, target = ctx.budget.kind, ctx.budget.target
    inside = solve(ctx.space, [1.0] * len(ctx.space), Budget(kind, target * 0.6)).counts
    first = ev.evaluate(inside)
    best.consider(first)
    assert best.feasible(first) and first.cost < 0.7 * target
    strat._fill(ctx, required, best, 0)
    grown = [c for c in ev.candidates if c.meta.get("filled_from") == first.id]
    assert len(grown) == 1 and ev.evaluations == 2            # one evaluation, one sample to grow
    g = grown[0]
    assert all(a >= b for a, b in zip(g.counts, first.counts)) and g.counts != first.counts
    assert 0.97 * target <= g.cost <= target + 1e-9
    assert best.best is (g if g.top1 > first.top1 or (g.top1 == first.top1 and g.cost < first.cost) else first)


def test_growing_is_off_with_fill_0_and_never_exceeds_the_evaluations_left():
    from pruner.budget import Budget, solve

    session, ev, ctx, strat, required, best = _fill_setup(max_evals=1)
    inside = solve(ctx.space, [1.0] * len(ctx.space), Budget("params", 0.2)).counts
    best.consider(ev.evaluate(inside))
    strat._fill(ctx, required, best, 0)                   # no evaluation left
    assert ev.evaluations == 1 and len(ev.candidates) == 1
    session, ev, ctx, _, required, best = _fill_setup(max_evals=5)
    best.consider(ev.evaluate(inside))
    ConstrainedRL(fill=0)._fill(ctx, required, best, 0)
    assert ev.evaluations == 1


def test_grown_samples_in_a_run_stay_within_the_budget(params_run):
    out, summary = params_run
    cands = {c["candidate_id"]: c for c in RunDir(out).events("candidate")}
    grown = [c for c in cands.values() if c["meta"].get("filled_from") is not None]
    for c in grown:
        src = cands[c["meta"]["filled_from"]]
        assert src["cost"] < c["cost"] <= 0.4 + 1e-9
    assert 1 <= len(grown) <= ConstrainedRL.defaults()["fill"]   # this run leaves one sample to grow


def test_init_sensitivity_starts_from_the_sensitivity_answer():
    """init=sensitivity: the sensitivity strategy's probes and answer (through its module, counted
    against --search-evals, at most half of them), that answer as the first candidate and the
    policy's start, then PPO; the answer is never worse than the start."""
    from pruner.search import SearchContext, run_search

    session = Session(tiny(search_evals=20))
    ev = session.evaluator(max_evals=20)
    events: list[dict] = []
    ctx = SearchContext(ev, seed=0, emit=lambda kind, **f: events.append({"kind": kind, **f}))
    best = run_search(make_strategy("constrained", batch=4, init="sensitivity"), ctx)
    sev = session.evaluator(max_evals=20)
    sens = run_search(make_strategy("sensitivity", max_probes=20 // 2 - 1), SearchContext(sev, seed=0))
    n_sens = len(sev.candidates)
    assert [c.counts for c in ev.candidates[:n_sens]] == [c.counts for c in sev.candidates]
    start = ev.candidates[n_sens - 1]
    assert start.meta.get("initial_mean") and start.meta["init"] == "sensitivity" and start.counts == sens.counts
    prior = [e for e in events if e["kind"] == "prior"]
    assert len(prior) == 1 and prior[0]["allocation"] == "damage-per-cost"   # a params budget: per_cost=auto
    assert n_sens - 2 <= 20 // 2 - 1 and ev.evaluations <= 20 and len(ev.candidates) > n_sens
    assert best.top1 >= start.top1 and best.cost <= 0.4 + 1e-9


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("params", [{"batch": 1}, {"clip": 0}, {"gae": 1.5}, {"ppo_epochs": 0}, {"hidden": 0},
                                    {"critic_lr": 0}, {"cost": "joules"}, {"limit": 1.0}, {"dual_lr": -1}])
def test_bad_settings_are_one_line_errors(params):
    with pytest.raises(PrunerError) as exc:
        make_strategy("constrained", **params)
    assert "\n" not in str(exc.value) and list(params)[0] in str(exc.value)


@pytest.mark.parametrize("cost", ["flops", "latency"])
def test_a_shape_cost_under_a_sparsity_budget_is_refused_before_work(cost):
    with pytest.raises(PrunerError, match="keeps every shape") as exc:
        validate_strategy("constrained", {"cost": cost}, budget_kind="sparsity")
    assert "\n" not in str(exc.value)
    with pytest.raises(PrunerError, match="keeps every shape"):
        RunConfig(model="resnet20", weights=None, data="digits", budget="sparsity=0.5", strategy="constrained",
                  strategy_params={"cost": cost})

"""purl (PuRL): a per-layer MDP with a reward at every step, through the job runner.

Real model (resnet20, random init) and real data (the offline digits set), tiny settings; the
sparsity budget is its main mode (as in the paper), flops/params are checked too.
"""

import json

import pytest
import torch.nn as nn

from pruner.budget import Budget
from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.models.checkpoints import load_checkpoint
from pruner.runs.config import RunConfig
from pruner.runs.job import resume_job, run_job
from pruner.runs.rundir import RunDir
from pruner.search import make_strategy
from pruner.search.base import validate_strategy

from test_cli import assert_one_line_error, cli

PARAMS = {"steps": 6, "batch": 2}
EVALS = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", val_size=200, budget="sparsity=0.8", strategy="purl",
                strategy_params=PARAMS, search_evals=EVALS, search_images=64, recal_images=32, report_images=100,
                latency_repeats=2, finetune=FinetuneConfig(epochs=0), export=False, device="cpu", seed=0)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("purl") / "run"
    return out, run_job(tiny(), out)


def test_a_reward_at_every_step(sparse_run):
    out, summary = sparse_run
    assert summary["status"] == "done", summary["error"]
    run = RunDir(out)
    events = run.events("purl")
    steps = [e for e in events if e["level"] == "step"]
    episodes = [e for e in events if e["level"] == "episode"]
    assert len(episodes) >= 2 and episodes[-1]["greedy"] is True
    layers = None
    for ep in episodes:
        mine = [e for e in steps if e["episode"] == ep["episode"]]
        assert [e["step"] for e in mine] == list(range(6))            # one decision (and reward) per step
        assert ep["return"] == pytest.approx(sum(e["reward"] for e in mine))
        names = [e["layer"] for e in mine]
        assert layers is None or names == layers                      # the same groups, in network order
        layers = names
    assert len(set(layers)) == 6
    # each step's reward is the one on its scored candidate: the top-1 change minus the budget miss
    cands = {(c["meta"].get("episode"), c["meta"].get("pruning_step")): c for c in run.events("candidate")}
    start = next(c for c in run.events("candidate") if c["meta"].get("start"))
    before = {}
    for e in steps:
        c = cands[(e["episode"], e["step"])]
        assert c["reward"] == pytest.approx(e["reward"])
        prev = before.get(e["episode"], start["top1"])
        assert e["reward"] == pytest.approx((e["top1"] - prev) / 100.0 - e["miss"])
        before[e["episode"]] = e["top1"]
    assert len({round(e["reward"], 6) for e in steps}) > 3            # not a constant
    # every scored structure is complete and on the budget
    budget = Budget.parse("sparsity=0.8")
    assert all(budget.feasible(e["cost"]) and e["cost"] > 0.2 * 0.97 for e in steps)


def test_budget_met_on_measured_zeros(sparse_run):
    out, summary = sparse_run
    assert summary["search"]["evaluations"] <= EVALS
    fresh = [c for c in RunDir(out).events("candidate") if not c["meta"]["cached"]]
    assert len(fresh) == summary["search"]["evaluations"]
    model, _ = load_checkpoint(out / "artifacts" / "checkpoint.pt")
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    z, n = sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)
    assert z / n >= 0.8 - 1e-9 and z / n == pytest.approx(summary["sparsity"]["sparsity"])
    assert summary["budget"]["achieved"] == summary["sparsity"]["sparsity"]


@pytest.mark.parametrize("budget", ["flops=0.5", "params=0.5"])
def test_channel_budgets_met_on_measured_cost(tmp_path, budget):
    summary = run_job(tiny(budget=budget, strategy_params={"steps": 4, "batch": 2}, search_evals=10), tmp_path / "r")
    assert summary["status"] == "done", summary["error"]
    kind = "macs" if budget.startswith("flops") else "params"
    assert summary["pruned"][kind] / summary["base"][kind] <= 0.5 + 1e-9       # counted on the pruned model
    steps = [e for e in RunDir(tmp_path / "r").events("purl") if e["level"] == "step"]
    assert steps and all(e["cost"] <= 0.5 + 1e-9 for e in steps)


def test_same_seed_same_search_other_seed_other(tmp_path, sparse_run):
    out, _ = sparse_run
    again = tmp_path / "again"
    assert run_job(tiny(), again)["status"] == "done"
    key = lambda o: [(tuple(c["counts"]), c["top1"]) for c in RunDir(o).events("candidate")]  # noqa: E731
    assert key(again) == key(out)
    other = tmp_path / "other"
    assert run_job(tiny(seed=1), other)["status"] == "done"
    assert key(other) != key(out)


def test_cancel_then_resume_replays(tmp_path, sparse_run):
    out = tmp_path / "run"
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 8

    assert run_job(tiny(), out, should_stop=stop)["status"] == "cancelled"
    resumed = resume_job(out)
    assert resumed["status"] == "done", resumed["error"]
    counts = lambda o: json.loads((o / "state" / "search.json").read_text())["counts"]  # noqa: E731
    assert counts(out) == counts(sparse_run[0])
    assert resumed["search"]["evaluations"] <= EVALS


@pytest.mark.parametrize("params", [{"steps": -1}, {"levels": 0}, {"spread": 1.0}, {"gamma": 2}, {"batch": 0},
                                    {"eps_start": 1.5}, {"nope": 1}, {"minibatch": "big"}])
def test_bad_hyperparameters_are_user_errors(params):
    with pytest.raises(PrunerError):
        make_strategy("purl", **params)


def test_latency_refused_in_one_line_before_any_work(tmp_path):
    with pytest.raises(PrunerError, match="cannot search a latency budget"):
        validate_strategy("purl", {}, budget_kind="latency")
    out = tmp_path / "lat"
    res = cli("prune", "--model", "resnet20", "--weights", "none", "--data", "digits", "--no-export",
              "--budget", "latency=0.5", "--strategy", "purl", "--out", out)
    assert_one_line_error(res, "cannot search a latency budget")
    assert not (out / "events.jsonl").exists()


def test_too_many_steps_refused(tmp_path):
    summary = run_job(tiny(strategy_params={"steps": 500}), tmp_path / "r")
    assert summary["status"] == "failed" and "at most" in summary["error"] and "steps" in summary["error"]

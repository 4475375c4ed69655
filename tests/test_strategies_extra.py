"""constrained (constrained RL), purl (PuRL) and joint (joint training + pruning) through the job runner.

Real model (resnet20, random init) and real data (the offline digits set), tiny settings.
"""

import json

import pytest
import torch

from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import run_job
from pruner.runs.rundir import RunDir
from pruner.search import make_strategy

# strategy -> (small hyperparameters, search_evals, should_stop calls before the simulated interruption)
SMALL = {
    "constrained": ({"batch": 4}, 13, 6),
    "purl": ({"steps": 3, "batch": 2}, 12, 5),   # 3 of the 12 groups decided per episode
    "joint": ({"epochs": 2, "batches_per_epoch": 4, "batch_size": 32, "samples": 3}, 8, 9),
}
EVENT_FIELDS = {
    "constrained": {"step", "multiplier", "mean_cost", "budget", "best_feasible_top1", "mean_reward"},
    "purl": {"episode", "step", "reward", "top1", "cost"},
    "joint": {"epoch", "predicted_reward", "observed_reward", "loss", "keep_ratios"},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(strategy: str, **kw) -> RunConfig:
    params, evals, _ = SMALL[strategy]
    base = dict(model="resnet20", weights=None, data="digits", val_size=300, budget="flops=0.5", strategy=strategy,
                strategy_params=params, search_evals=evals, search_images=100, recal_images=64, report_images=100,
                latency_repeats=5, finetune=FinetuneConfig(epochs=0), export=False, seed=0)
    base.update(kw)
    return RunConfig(**base)


def fresh(out) -> list[dict]:
    return [c for c in RunDir(out).events("candidate") if not c["meta"]["cached"]]


def counts_of(out) -> list[int]:
    return json.loads((out / "state" / "search.json").read_text())["counts"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    runs = {}

    def get(strategy):
        if strategy not in runs:
            out = tmp_path_factory.mktemp(strategy) / "run"
            runs[strategy] = (out, run_job(tiny(strategy), out))
        return runs[strategy]

    return get


@pytest.mark.parametrize("strategy", list(SMALL))
def test_run_meets_budget_and_emits_events(straight, strategy):
    out, summary = straight(strategy)
    assert summary["status"] == "done", summary["error"]
    assert summary["search"]["strategy"] == strategy
    assert summary["budget"]["achieved"] <= 0.5
    assert json.loads((out / "state" / "search.json").read_text())["cost"] <= 0.5
    evals = SMALL[strategy][1]
    assert summary["search"]["evaluations"] <= evals
    assert len(fresh(out)) == summary["search"]["evaluations"] >= 2
    events = RunDir(out).events(strategy)
    assert events, f"no {strategy} events"
    for e in events:
        if strategy == "purl" and e["level"] == "episode":
            assert {"episode", "return"} <= set(e)
        else:
            assert EVENT_FIELDS[strategy] <= set(e), set(e)


def test_constrained_events_and_multiplier(straight):
    out, _ = straight("constrained")
    events = RunDir(out).events("constrained")
    assert [e["step"] for e in events] == list(range(len(events))) and len(events) >= 2
    assert all(e["multiplier"] >= 0 and e["budget"] == 0.5 for e in events)
    assert len({e["multiplier"] for e in events}) > 1  # dual ascent moves it
    # samples are not solved to the budget: the constraint is learnt, so some violate it
    cands = [c for c in RunDir(out).events("candidate") if c["meta"].get("iteration") is not None]
    assert len({round(c["cost"], 4) for c in cands}) > 2


def test_purl_rewards_every_step(straight):
    out, _ = straight("purl")
    events = RunDir(out).events("purl")
    steps = [e for e in events if e["level"] == "step"]
    episodes = [e for e in events if e["level"] == "episode"]
    assert len(episodes) >= 3 and len(steps) == 3 * len(episodes)
    for ep in episodes:
        mine = [e for e in steps if e["episode"] == ep["episode"]]
        assert [e["step"] for e in mine] == [0, 1, 2]
        assert ep["return"] == pytest.approx(sum(e["reward"] for e in mine))
        assert all(e["cost"] <= 0.5 + 1e-9 for e in mine)  # every step's structure is complete and on the budget
    assert episodes[-1]["greedy"] is True


def test_joint_trains_and_switches_model(straight):
    out, summary = straight("joint")
    events = RunDir(out).events("joint")
    assert [e["epoch"] for e in events] == [0, 1]
    assert [e["model_version"] for e in events] == [1, 2]
    assert events[-1]["ce"] < events[0]["ce"] + 1.0 and all(e["penalty"] > 0 for e in events)
    finals = [c for c in RunDir(out).events("candidate") if c["meta"].get("final")]
    assert finals and all(c["meta"]["model_version"] == 2 for c in finals)
    chosen = json.loads((out / "state" / "search.json").read_text())["candidate_id"]
    assert chosen in [c["candidate_id"] for c in finals]  # scored on the trained weights


@pytest.mark.parametrize("strategy", list(SMALL))
def test_cancel_then_resume_replays_deterministically(straight, tmp_path, strategy):
    """Interrupted, then resumed: finishes within search_evals in total and chooses exactly what an
    uninterrupted run with the same seed chooses (so the same seed gives the same counts)."""
    out = tmp_path / "run"
    calls = {"n": 0}
    stop_after = SMALL[strategy][2]

    def stop():
        calls["n"] += 1
        return calls["n"] > stop_after

    cancelled = run_job(tiny(strategy), out, should_stop=stop)
    assert cancelled["status"] == "cancelled", cancelled["error"]
    before = len(fresh(out))
    assert 1 <= before < SMALL[strategy][1]
    resumed = run_job(tiny(strategy), out, resume=True)
    assert resumed["status"] == "done", resumed["error"]
    assert len(fresh(out)) == resumed["search"]["evaluations"] <= SMALL[strategy][1]
    straight_out, straight_summary = straight(strategy)
    assert counts_of(out) == counts_of(straight_out)
    assert resumed["search"]["best_val_top1"] == straight_summary["search"]["best_val_top1"]


def test_constrained_user_python_cost(tmp_path):
    cost_file = tmp_path / "my_cost.py"
    cost_file.write_text("def param_count(model):\n    return float(sum(p.numel() for p in model.parameters()))\n")
    params = {"batch": 4, "cost": f"python:{cost_file}:param_count", "cost_scale": "absolute", "limit": 0.4}
    summary = run_job(tiny("constrained", budget="flops=0.9", strategy_params=params, trust_code=True),
                      tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    assert summary["pruned"]["params"] / summary["base"]["params"] <= 0.4 + 1e-6
    assert summary["budget"]["achieved"] <= 0.9  # the run's own budget is kept as a second constraint
    events = RunDir(tmp_path / "run").events("constrained")
    assert events and events[0]["cost"].startswith("python:") and events[0]["budget"] == 0.4
    assert set(events[-1]["multipliers"]) == {f"python:{cost_file}:param_count", "flops=0.9"}


def test_constrained_user_cost_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def cost(model):\n    return 'cheap'\n")
    for spec, msg in [(f"python:{tmp_path}/missing.py:f", "does not exist"), (f"python:{bad}:nope", "no function"),
                      (f"python:{bad}:cost", "not a number")]:
        summary = run_job(tiny("constrained", strategy_params={"cost": spec}, trust_code=True),
                          tmp_path / spec.split(":")[-1])
        assert summary["status"] == "failed" and msg in summary["error"], summary["error"]


def overhead_latency(self, counts, repeats):
    """A deterministic stand-in for :meth:`Evaluator._time` (the one place the evaluator times a
    structure): latency relative to the unpruned model = a fixed 30% overhead plus 70% in proportion
    to the MACs, so the search's latency logic is tested, not the machine's speed (real timing is
    measured in bench/)."""
    macs = self.space.predict(counts=list(counts))[0] / self.space.base_macs
    ratio = 0.3 + 0.7 * macs
    return {"ms": 10.0 * ratio, "ratio": ratio, "reference_ms": 10.0, "repeats": repeats}


def test_constrained_meets_a_latency_budget(tmp_path, monkeypatch):
    """latency=0.7 with a 30% fixed overhead needs more MACs removed than the budget says (at most
    0.62 of them may remain): the constraint is on the latency cost itself, through the evaluator's
    latency path (memo, cost function, final re-timing). The cost is deterministic, so the bounds
    are exact."""
    from pruner.budget import LATENCY_TOLERANCE
    from pruner.search.evaluator import Evaluator

    monkeypatch.setattr(Evaluator, "_time", overhead_latency)
    out = tmp_path / "lat"
    summary = run_job(tiny("constrained", budget="latency=0.7", strategy_params={"batch": 4}, search_evals=11), out)
    assert summary["status"] == "done", summary["error"]
    found = json.loads((out / "state" / "search.json").read_text())
    macs = summary["pruned"]["macs"] / summary["base"]["macs"]
    assert found["cost"] == pytest.approx(0.3 + 0.7 * macs)          # the search's cost is the injected latency
    assert found["cost"] <= 0.7 * (1 + LATENCY_TOLERANCE)
    assert macs <= (0.7 * (1 + LATENCY_TOLERANCE) - 0.3) / 0.7 < 0.65
    assert found["verified_cost"] == found["cost"]                    # the answer was re-timed and passed
    # every candidate the search scored carries the injected latency as its cost
    for c in RunDir(out).events("candidate"):
        assert c["cost"] == pytest.approx(0.3 + 0.7 * c["macs"] / summary["base"]["macs"])
    events = RunDir(out).events("constrained")
    assert events and events[0]["cost"] == "latency" and events[0]["budget"] == 0.7
    # some samples violate the constraint (it is learnt, not solved for), and the multiplier reacts
    assert any(e["mean_cost"] > 0.7 for e in events) or len({e["multiplier"] for e in events}) > 1


@pytest.mark.parametrize("strategy,params", [
    ("constrained", {"batch": 1}), ("constrained", {"cost": "joules"}), ("constrained", {"lr": -1}),
    ("constrained", {"limit": 1.5}), ("purl", {"steps": -1}), ("purl", {"gamma": 2}), ("joint", {"epochs": 0}),
    ("joint", {"init": "random"}), ("joint", {"batch_size": "big"}), ("purl", {"nope": 1}),
])
def test_bad_hyperparameters_are_user_errors(strategy, params):
    with pytest.raises(PrunerError):
        make_strategy(strategy, **params)


def test_joint_needs_enough_evaluations(tmp_path):
    summary = run_job(tiny("joint", search_evals=2), tmp_path / "few")
    assert summary["status"] == "failed" and "epochs + 1" in summary["error"]


def test_job_prunes_the_weights_joint_trained(straight):
    from pruner.runs.job import load_checkpoint, Session

    out, summary = straight("joint")
    model, _ = load_checkpoint(out / "artifacts" / "checkpoint.pt")
    session = Session(tiny("joint"))
    original, _ = session.space.prune(session.model, counts_of(out), session.ranking)
    trained = dict(model.named_parameters())
    loaded = dict(original.named_parameters())
    assert trained.keys() == loaded.keys()
    assert not all(torch.equal(trained[k], loaded[k]) for k in trained)


@pytest.mark.parametrize("strategy", list(SMALL))
def test_studio_chart_plots_the_strategy_events(straight, strategy):
    """The Live run page's chart for each strategy's own events (studio.charts.strategy_chart)
    draws the values the run wrote: λ and mean cost against the budget, per-step rewards, and
    the drift model's predicted next to the observed reward."""
    from studio import charts

    out, _ = straight(strategy)
    events = RunDir(out).events(strategy)
    fig = charts.strategy_chart(strategy, events)
    traces = {t.name: list(t.y) for t in fig.data}
    if strategy == "constrained":
        assert traces["multiplier λ"] == [e["multiplier"] for e in events]
        assert traces["mean cost of the samples"] == [e["mean_cost"] for e in events]
        assert set(traces["budget"]) == {0.5}
    elif strategy == "purl":
        steps = [e for e in events if e["level"] == "step"]
        assert traces["reward at each step"] == [e["reward"] for e in steps]
        xs = list(fig.data[0].x)
        assert all(e["episode"] < x < e["episode"] + 1 for e, x in zip(steps, xs))   # within its episode
        assert traces["episode return"] == [e["return"] for e in events if e["level"] == "episode"]
    else:
        assert traces["observed"] == [e["observed_reward"] for e in events]
        assert traces["predicted (before it was seen)"] == [e["predicted_reward"] for e in events]
    assert charts.strategy_chart(strategy, []).layout.annotations  # an empty chart says why


@pytest.mark.parametrize("params", [{"latency_backend": "ort"}, {"latency_backend": "torch", "latency_batch": 2}])
def test_constrained_on_its_own_latency_measurement(tmp_path, params):
    """A latency cost measured other than the evaluator measures it (ONNX Runtime, or another batch
    size): timed in pairs with the unpruned model (its ONNX file exported once), run to the end."""
    cfg = tiny("constrained", budget="flops=0.95", search_evals=9,
               strategy_params={"batch": 4, "cost": "latency", "limit": 0.95, **params})
    summary = run_job(cfg, tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    events = RunDir(tmp_path / "run").events("constrained")
    assert events and events[0]["cost"].startswith("latency[")
    assert all(0 < c <= 2.0 for c in events[-1]["mean_costs"].values())

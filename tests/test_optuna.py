"""The ``optuna`` baseline strategy (Optuna's TPE / CMA-ES over per-group allocation weights).

Real model (resnet20, random init), real data (the offline digits set), real Optuna.
"""

import json
import os
from pathlib import Path

import pytest

from pruner.budget import LATENCY_TOLERANCE, Budget, model_cost_fn
from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import Session, resume_job, run_job
from pruner.runs.rundir import RunDir
from pruner.search import SearchContext, make_strategy, run_search
from pruner.search.base import best_meeting
from pruner.search.evaluator import Candidate, Evaluator
from test_strategies_extra import overhead_latency

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(strategy="optuna", **kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", val_size=300, budget="flops=0.5", strategy=strategy,
                strategy_params={}, search_evals=20, search_images=100, recal_images=64, report_images=100,
                latency_repeats=3, finetune=FinetuneConfig(epochs=0), export=False, seed=0)
    base.update(kw)
    return RunConfig(**base)


def cands(out) -> list[dict]:
    return RunDir(out).events("candidate")


def trials(out) -> list[dict]:
    return [c for c in cands(out) if c["meta"].get("trial") is not None]


def chosen_counts(out) -> list[int]:
    return json.loads((out / "state" / "search.json").read_text())["counts"]


@pytest.mark.parametrize("params,match", [
    ({"sampler": "random"}, "sampler must be one of tpe, cmaes"),
    ({"warm_start": "probe"}, "warm_start must be one of sensitivity, uniform, none"),
    ({"batch": 0}, "batch must be"),
    ({"log_range": 0}, "log_range must be"),
    ({"sigma0": -1.0}, "sigma0 must be"),
])
def test_bad_parameters_are_refused_before_any_work(params, match):
    with pytest.raises(PrunerError, match=match):
        tiny(strategy_params=params)


@pytest.fixture(scope="module")
def tpe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("optuna") / "run"
    return out, run_job(tiny(strategy_params={"batch": 4}), out)


@pytest.fixture(scope="module")
def sensitivity_answer(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens") / "run"
    assert run_job(tiny("sensitivity", search_evals=20), out)["status"] == "done"
    return chosen_counts(out)


def test_warm_started_tpe_spends_the_evaluations_and_keeps_the_best_on_the_budget(tpe_run, sensitivity_answer):
    out, summary = tpe_run
    assert summary["status"] == "done", summary["error"]
    fresh = [c for c in cands(out) if not c["meta"]["cached"]]
    assert len(fresh) == summary["search"]["evaluations"] == 20           # probes + trials = --search-evals
    probes = [c for c in cands(out) if "probe" in c["meta"]]
    mine = trials(out)
    assert probes and mine and len(probes) + len({tuple(c["counts"]) for c in mine}) == 20
    assert all(c["cost"] <= 0.5 for c in mine)                            # every trial solved onto the budget
    # the first trial is the sensitivity strategy's answer from the same probes (the warm start) ...
    assert mine[0]["meta"]["trial"] == 0 and mine[0]["meta"]["warm_start"].startswith("sensitivity")
    assert mine[0]["counts"] == sensitivity_answer
    # ... and the sampler then proposes other structures
    assert len({tuple(c["counts"]) for c in mine}) >= 4
    # the answer is the best trial meeting the budget
    as_cands = [Candidate(id=c["candidate_id"], step=c["step"], counts=c["counts"], keep_ratios=c["keep_ratios"],
                          top1=c["top1"], macs=c["macs"], params=c["params"], cost=c["cost"], kl=c["kl"])
                for c in mine]
    best = best_meeting(as_cands, Budget.parse("flops=0.5"))
    assert chosen_counts(out) == best.counts


SHARED_DATA = Path(os.environ.get("PRUNER_DATA_ROOT", "")) / "cifar10-jpeg"
SHARED_R20 = Path(os.environ.get("PRUNER_WEIGHTS_DIR", "")) / "resnet20-12fca82f.th"


@pytest.mark.skipif(not (SHARED_DATA.is_dir() and SHARED_R20.is_file()),
                    reason="needs the pretrained ResNet-20 and the CIFAR-10 copy (real, uneven damage)")
def test_the_warm_start_is_exact_even_below_the_weight_range():
    """A sensitivity allocation whose smallest weight lies below exp(-log_range) is not clipped: the
    range reaches it, so trial 0 is the heuristic's answer and optuna can only do better than it."""
    session = Session(tiny(weights="pretrained", data="cifar10-jpeg", protocol="test-halves", search_images=100))

    def search(name, **params):
        ev = session.evaluator(max_evals=16)
        log = []
        ctx = SearchContext(ev, seed=0, scores=session.scores, emit=lambda kind, **f: log.append(f))
        return run_search(make_strategy(name, **params), ctx), ev

    answer, ev = search("sensitivity")
    probes = [c for c in ev.candidates if "probe" in c.meta and c.meta["probe"] != "base"]
    damage = [ev.candidates[0].score - c.score for c in probes]
    assert max(damage) - min(damage) > 1.0          # real, uneven damage: the allocation's weights differ
    best, ev = search("optuna", log_range=0.01, batch=2)
    first = next(c for c in ev.candidates if c.meta.get("trial") == 0)
    assert first.meta["warm_start"].startswith("sensitivity") and first.counts == answer.counts
    assert best.score >= answer.score


def test_cancel_then_resume_replays_the_same_trials(tpe_run, tmp_path):
    """Optuna is seeded: a resumed run replays the interrupted trials from the memo and then
    proposes exactly what the uninterrupted run proposed."""
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 17          # inside the trials, after the probes

    out = tmp_path / "r"
    assert run_job(tiny(strategy_params={"batch": 4}), out, should_stop=stop)["status"] == "cancelled"
    before = len([c for c in cands(out) if not c["meta"]["cached"]])
    assert 13 <= before < 20
    resumed = resume_job(out)
    assert resumed["status"] == "done", resumed["error"]
    straight, _ = tpe_run
    assert [c["counts"] for c in trials(out)] == [c["counts"] for c in trials(straight)]
    assert chosen_counts(out) == chosen_counts(straight)


def test_cmaes_starts_at_the_warm_start_and_moves(tmp_path):
    out = tmp_path / "cma"
    summary = run_job(tiny(search_evals=7, strategy_params={"sampler": "cmaes", "warm_start": "uniform",
                                                            "batch": 3}), out)
    assert summary["status"] == "done", summary["error"]
    mine = trials(out)
    assert len([c for c in mine if not c["meta"]["cached"]]) == 7
    uniform = tmp_path / "uni"
    assert run_job(tiny("uniform"), uniform)["status"] == "done"
    assert mine[0]["counts"] == chosen_counts(uniform) and mine[0]["meta"]["warm_start"] == "uniform"
    assert len({tuple(c["counts"]) for c in mine}) >= 4 and all(c["cost"] <= 0.5 for c in mine)


def test_latency_budget_is_a_constraint_on_the_measured_cost(tmp_path, monkeypatch):
    """latency=0.7 with a 30 % fixed overhead (deterministic, so the bounds are exact): each trial
    is solved to the MACs fraction it proposes, its latency is the constraint, and the answer meets
    the latency budget although no trial was solved onto it."""
    monkeypatch.setattr(Evaluator, "_time", overhead_latency)
    out = tmp_path / "lat"
    summary = run_job(tiny(budget="latency=0.7", search_evals=10, strategy_params={"warm_start": "uniform"}), out)
    assert summary["status"] == "done", summary["error"]
    session = Session(tiny(budget="latency=0.7"))
    macs_of = model_cost_fn(session.space, "flops")
    mine = trials(out)
    targets = [c["meta"]["macs_target"] for c in mine]
    assert len(set(targets)) > 2 and all(0 < t < 1 for t in targets)
    for c in mine:
        assert macs_of(c["counts"]) <= c["meta"]["macs_target"] + 1e-9             # solved onto its proxy
        assert c["cost"] == pytest.approx(0.3 + 0.7 * macs_of(c["counts"]), rel=1e-6)   # cost = the latency
    found = json.loads((out / "state" / "search.json").read_text())
    assert found["cost"] <= 0.7 * (1 + LATENCY_TOLERANCE)
    # the warm start is uniform solved onto the latency itself; its MACs fraction anchors the proxy range
    assert mine[0]["meta"]["warm_start"] == "uniform"
    anchor = session.evaluator(max_evals=None).solve([1.0] * len(session.space)).counts
    assert mine[0]["meta"]["macs_target"] == pytest.approx(macs_of(anchor))
    assert min(targets) < macs_of(anchor) < max(targets)

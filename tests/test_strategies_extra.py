"""constrained (constrained RL), purl (PuRL) and joint (joint training + pruning) through the job runner.

Real model (resnet20, random init) and real data (the offline digits set), tiny settings.
"""

import json
import math
import re

import numpy as np
import pytest
import torch

from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import resume_job, run_job
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
    assert [e["reused"] for e in events] == [0, 3]   # epoch 1's update also learnt from epoch 0's 3 samples
    assert events[-1]["ce"] < events[0]["ce"] + 1.0 and all(e["penalty"] > 0 for e in events)
    finals = [c for c in RunDir(out).events("candidate") if c["meta"].get("final")]
    assert finals and all(c["meta"]["model_version"] == 2 for c in finals)
    chosen = json.loads((out / "state" / "search.json").read_text())["candidate_id"]
    assert chosen in [c["candidate_id"] for c in finals]  # scored on the trained weights


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """A run cancelled during its search (after the SMALL number of should_stop calls), then resumed:
    (run directory, the cancelled summary, fresh evaluations before the resume, the resumed summary)."""
    runs = {}

    def get(strategy):
        if strategy not in runs:
            out = tmp_path_factory.mktemp(f"{strategy}-resumed") / "run"
            calls = {"n": 0}
            stop_after = SMALL[strategy][2]

            def stop():
                calls["n"] += 1
                return calls["n"] > stop_after

            cancelled = run_job(tiny(strategy), out, should_stop=stop)
            before = len(fresh(out))
            runs[strategy] = (out, cancelled, before, resume_job(out))
        return runs[strategy]

    return get


def search_events(out, kind: str) -> list[dict]:
    """The run's events of ``kind`` without their time (which differs between two runs)."""
    return [{k: v for k, v in e.items() if k != "time"} for e in RunDir(out).events(kind)]


@pytest.mark.parametrize("strategy", list(SMALL))
def test_cancel_then_resume_replays_deterministically(straight, interrupted_then_resumed, strategy):
    """Interrupted, then resumed: finishes within search_evals in total and chooses exactly what an
    uninterrupted run with the same seed chooses (so the same seed gives the same counts)."""
    out, cancelled, before, resumed = interrupted_then_resumed(strategy)
    assert cancelled["status"] == "cancelled", cancelled["error"]
    assert 1 <= before < SMALL[strategy][1]
    assert resumed["status"] == "done", resumed["error"]
    assert len(fresh(out)) == resumed["search"]["evaluations"] <= SMALL[strategy][1]
    straight_out, straight_summary = straight(strategy)
    assert counts_of(out) == counts_of(straight_out)
    assert resumed["search"]["best_val_top1"] == straight_summary["search"]["best_val_top1"]


@pytest.mark.parametrize("strategy", list(SMALL))
def test_resume_writes_the_replayed_search_events_once(straight, interrupted_then_resumed, strategy):
    """The resume replays the strategy from the start; the events it had already recorded before the
    cancel (the strategy's own kind and ``step``) are not written again, so the log (and the Live
    page's strategy charts) holds each update once: exactly the uninterrupted run's events."""
    out, _, _, resumed = interrupted_then_resumed(strategy)
    assert resumed["status"] == "done", resumed["error"]
    straight_out, _ = straight(strategy)
    statuses = [e["status"] for e in RunDir(out).events("status")]
    assert statuses.count("searching") == 2   # the search did run twice (cancelled, then replayed)
    for kind in (strategy, "step"):
        assert search_events(out, kind) == search_events(straight_out, kind), kind
    if strategy == "constrained":
        steps = [e["step"] for e in RunDir(out).events("constrained")]
        assert steps == list(range(len(steps))) and len(steps) >= 2
    elif strategy == "purl":
        keys = [(e["level"], e["episode"], e.get("step")) for e in RunDir(out).events("purl")]
        assert len(keys) == len(set(keys)) and len(keys) > 3
    else:   # joint replays by recomputation (its weight training again): the same epochs, once each
        assert [e["epoch"] for e in RunDir(out).events("joint")] == [0, 1]


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


def test_joint_bad_settings_are_one_line_before_any_work(tmp_path, capsys):
    """Too few evaluations for the epochs, epochs=0, an unknown agent: refused when the settings are
    read (no data loads, no run directory); a budget the model cannot reach from scratch: refused
    after the graph analysis, before any training or scoring."""
    from pruner.cli import main as cli_main

    for kw, words in (({"search_evals": 2}, "epochs + 1 = 3 evaluations"),
                      ({"strategy_params": {"epochs": 0}}, "epochs must be an integer in [1, 1000]"),
                      ({"strategy_params": {"init": "pretrained"}}, "init must be one of checkpoint, scratch")):
        with pytest.raises(PrunerError, match=re.escape(words)):
            tiny("joint", **kw)
    rc = cli_main(["prune", "--model", "resnet20", "--weights", "none", "--data", "digits", "--strategy", "joint",
                   "--set", "epochs=4", "--search-evals", "3", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "epochs + 1 = 5" in err[0] and not (tmp_path / "cli").exists()

    summary = run_job(tiny("joint", budget="flops=0.01", strategy_params={**SMALL["joint"][0], "init": "scratch"}),
                      tmp_path / "floor")
    assert summary["status"] == "failed" and "cannot be reached" in summary["error"]
    assert not RunDir(tmp_path / "floor").events("joint") and not RunDir(tmp_path / "floor").events("candidate")


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
        # as the search's score: the reward is a fraction of it
        assert traces["observed"] == pytest.approx([100 * e["observed_reward"] for e in events])
        assert traces["predicted (before it was seen)"] == pytest.approx([100 * e["predicted_reward"] for e in events])
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
    # relative latencies: measured, positive and finite (their size follows the machine's load)
    assert events[-1]["mean_costs"] and all(0 < c < math.inf for c in events[-1]["mean_costs"].values())


# ---------------------------------------------------------------------- joint, piece by piece
def joint_setup(epochs=2, importance="l1", config=None, **params):
    """A real session (digits, random-init resnet20), its evaluator, and joint's run state after setup."""
    from pruner.runs.job import Session
    from pruner.search import SearchContext

    session = Session(config or tiny("joint", importance=importance))
    ev = session.evaluator(max_evals=None)
    ctx = SearchContext(ev, seed=0, scores=session.scores, importance=importance)
    strat = make_strategy("joint", **{"samples": 3, **params})
    return session, ev, ctx, strat, strat._setup(ctx, epochs)


def fake_history(strat, ev, run, epochs, k=3):
    """``k`` samples per epoch for ``epochs`` epochs (drawn by the run's agent with the noise of its
    policy, at a zero state; rewards made up), with one observation of the weights per epoch (the
    weights perturbed in between)."""
    from pruner.search.joint import Sample

    rng = np.random.default_rng(0)
    history = []
    h = torch.zeros(run.drift.gru.hidden_size, dtype=torch.float64)
    for e in range(epochs):
        run.stats.append(strat._observe(run))
        with torch.no_grad():
            for prm in run.model.parameters():
                prm.mul_(1.1)
        for d in run.agent.draw(h, rng, k + 1)[1:]:
            keep = np.array(ev.space.validate_ratios(ev.solve(d.allocation).keep_ratios))
            with torch.no_grad():
                lp = float(run.agent.log_prob(h, torch.tensor(d.u, dtype=torch.float64)[None], [d.feats])[0])
            history.append(Sample(e, d.u, d.feats, keep, float(rng.uniform(0.1, 0.9)), lp))
    return history


def test_joint_policy_update_reuses_earlier_epochs_drift_corrected(one_thread):
    """With ``reuse`` the update at epoch 1 also learns from epoch 0's samples, their rewards corrected
    by the drift model, r' = r - D(h_0, k) + D(h_1, k); ``reuse=false`` is the plain update (this
    epoch's samples only, REINFORCE with the normalised batch-mean baseline)."""
    import copy
    import math

    _, ev, ctx, strat, run = joint_setup()
    history = fake_history(strat, ev, run, 2)
    strat._fit_drift(run.drift, run.wm_opt, history, torch.stack(run.stats), 20)

    U, feats, R, _, old = strat._policy_batch(run, history, 1)
    assert old.tolist() == [True] * 3 + [False] * 3
    with torch.no_grad():
        H = run.drift.states(torch.stack(run.stats))
        for i, s in enumerate(history):
            k = torch.tensor(s.keep, dtype=torch.float64)
            want = s.reward - float(run.drift.predict(H[s.epoch], k)) + float(run.drift.predict(H[1], k))
            assert float(R[i]) == pytest.approx(want, abs=1e-12)
    assert not torch.allclose(R[:3], torch.tensor([s.reward for s in history[:3]], dtype=torch.float64))

    def updated(**params):
        s = make_strategy("joint", samples=3, **params)
        r = copy.deepcopy(run)
        reused = s._update_policy(r, history, 1)
        return reused, [p.detach().clone() for p in r.agent.parameters()]

    def differ(a, b):
        return any(not torch.allclose(x, y) for x, y in zip(a, b))

    n_with, p_with = updated()
    n_without, p_without = updated(reuse=False)
    n_plain, p_plain = updated(reuse_clip=0.0)
    assert (n_with, n_without, n_plain) == (3, 0, 3)
    assert differ(p_with, p_without)
    assert differ(p_with, p_plain)  # the importance weights matter too

    # reuse=false is exactly the plain REINFORCE update of this epoch's samples
    r = copy.deepcopy(run)
    mine = history[3:]
    rew = np.array([s.reward for s in mine])
    adv = torch.tensor((rew - rew.mean()) / rew.std(), dtype=torch.float64)
    Um = torch.tensor(np.stack([s.u for s in mine]), dtype=torch.float64)
    with torch.no_grad():
        h = r.drift.states(torch.stack(r.stats))[1]
    for _ in range(int(strat.params["policy_steps"])):
        loss = -(adv * r.agent.log_prob(h, Um, [s.feats for s in mine])).mean()
        r.pi_opt.zero_grad()
        loss.backward()
        r.pi_opt.step()
        with torch.no_grad():
            r.agent.log_sigma.clamp_(r.min_log_sigma, math.log(5.0))
    assert not differ([p.detach() for p in r.agent.parameters()], p_without)


def test_joint_drift_state_comes_from_observed_weights(one_thread):
    """h_e is an encoding of statistics of the current weights (no free per-epoch embedding): it
    changes when the weights change, and every parameter on the way to it is trained by the rewards
    of earlier epochs before epoch e uses it."""
    from pruner.search.joint import DriftModel

    _, ev, ctx, strat, run = joint_setup(epochs=2)
    shapes = {k: v.shape for k, v in run.drift.named_parameters()}
    _, _, _, _, run5 = joint_setup(epochs=5)
    assert shapes == {k: v.shape for k, v in run5.drift.named_parameters()}   # nothing per epoch
    assert not any("embedding" in k for k in shapes)

    history = fake_history(strat, ev, run, 1)              # epoch 0 observed and rewarded
    s1 = strat._observe(run)                               # the weights changed since (x1.1)
    assert not torch.allclose(s1, run.stats[0])
    before = {k: v.detach().clone() for k, v in run.drift.named_parameters()}
    with torch.no_grad():
        h_untrained = run.drift.states(torch.stack([run.stats[0], s1]))[1]
    strat._fit_drift(run.drift, run.wm_opt, history, torch.stack(run.stats), 10)
    changed = {k for k, v in run.drift.named_parameters() if not torch.equal(v, before[k])}
    assert {"encoder.0.weight", "encoder.0.bias"} <= changed
    assert any(k.startswith("gru.") for k in changed)
    with torch.no_grad():
        H = run.drift.states(torch.stack([run.stats[0], s1]))
        other = run.drift.states(torch.stack([run.stats[0], run.stats[0]]))
    assert not torch.allclose(H[1], h_untrained)           # the state epoch 1 uses was trained on epoch 0
    assert not torch.allclose(H[1], other[1])              # and depends on what is observed at epoch 1
    assert isinstance(run.drift, DriftModel)


@pytest.mark.parametrize("importance", ["taylor", "l2"])
def test_joint_reranks_by_the_runs_importance(tmp_path, monkeypatch, importance):
    """Every re-ranking of the trained weights uses the run's --importance (taylor with data)."""
    import pruner.search.joint as joint

    seen = []
    real = joint.channel_scores

    def spy(model, space, criterion="l1", **kw):
        seen.append((criterion, kw.get("batches") is not None))
        return real(model, space, criterion, **kw)

    monkeypatch.setattr(joint, "channel_scores", spy)
    summary = run_job(tiny("joint", importance=importance), tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    assert seen == [(importance, importance == "taylor")] * 2     # once per epoch


def test_joint_refuses_an_importance_it_cannot_recompute():
    from pruner.runs.job import Session
    from pruner.search import SearchContext

    ev = Session(tiny("joint")).evaluator(max_evals=8)
    with pytest.raises(PrunerError, match="cannot re-rank"):
        make_strategy("joint").search(SearchContext(ev, importance="hessian"))
    assert ev.evaluations == 0


def test_joint_removal_keeps_each_concatenated_part():
    """The channels joint penalises are the ones the surgery would remove (PruningSpace.kept_masks),
    so a concatenated part whose channels all rank lowest still keeps its best one. (The zoo's
    GoogLeNet has no group spanning a concatenation: each branch is its own group; the test
    model concatenates two convs and adds the result to a residual, so one group spans both.)"""
    from pruner.pruning.space import PruningSpace
    from pruner.search.joint import JointPruning
    from test_alignment import MODELS

    torch.manual_seed(0)
    model = MODELS["concat_residual"]().eval()
    space = PruningSpace(model, (3, 32, 32), max_prune=0.9)
    gi = next(i for i, s in enumerate(space._segments) if len(s) > 1)
    segs = space._segments[gi]
    first = min(segs, key=len)      # one concatenated part
    ranking = [torch.arange(g.channels) for g in space.groups]
    rest = [i for i in range(space.groups[gi].channels) if i not in set(int(j) for j in first)]
    ranking[gi] = torch.tensor([int(j) for j in first] + rest)
    counts = [g.channels for g in space.groups]
    counts[gi] = space.groups[gi].channels - len(first)         # the naive removal would take all of `first`
    naive = set(int(i) for i in ranking[gi][: len(first)])
    assert naive == set(int(j) for j in first)
    removed = JointPruning.removed_channels(space, ranking, counts)
    gone = set(int(i) for i in removed[gi])
    assert len(gone) == len(first)
    for seg in segs:
        assert set(int(j) for j in seg) - gone, "a concatenated part lost all its channels"
    _, record = space.prune(model, counts, ranking)
    assert sorted(gone) == record.removed[space.groups[gi].name]
    assert all(len(r) == 0 for i, r in enumerate(removed) if i != gi)


def test_joint_from_scratch_reinitialises_trains_and_is_pruned(tmp_path, one_thread):
    """init=scratch (the paper's setting): the weights are re-initialised (seeded) before any
    structure is scored, trained, and the job prunes the trained weights."""
    from pruner.models.checkpoints import load_checkpoint
    from pruner.runs.job import Session

    _, ev, ctx, strat, run = joint_setup(init="scratch")
    base = dict(Session(tiny("joint")).model.named_parameters())
    fresh_w = dict(run.model.named_parameters())
    assert all(not torch.equal(fresh_w[k], base[k]) for k in base if k.endswith("conv1.weight"))
    assert ev.model is run.model and ev.model_version == 1   # the evaluator scores the fresh weights from the start
    _, _, _, _, ckpt = joint_setup(init="checkpoint")
    assert all(torch.equal(v, base[k]) for k, v in ckpt.model.named_parameters())

    out = tmp_path / "scratch"
    summary = run_job(tiny("joint", strategy_params={**SMALL["joint"][0], "init": "scratch"}), out)
    assert summary["status"] == "done", summary["error"]
    events = RunDir(out).events("joint")
    assert [e["model_version"] for e in events] == [2, 3]
    state = torch.load(out / "state" / "search_model.pt")
    session = Session(tiny("joint"))
    model = session.model
    model.load_state_dict(state["state_dict"])
    trained, _ = session.space.prune(model, counts_of(out), state["ranking"])
    pruned, _ = load_checkpoint(out / "artifacts" / "checkpoint.pt")
    got = dict(pruned.named_parameters())
    assert all(torch.equal(got[k], v) for k, v in trained.named_parameters())   # the trained weights, pruned
    reset_only = dict(run.model.named_parameters())   # re-initialised, never trained
    assert not all(torch.equal(state["state_dict"][k], reset_only[k]) for k in reset_only)


def test_joint_runs_on_a_model_with_a_concatenation(tmp_path, monkeypatch):
    """End to end on a user model whose group spans a concatenation, at a tight budget: every set of
    channels joint penalises leaves each concatenated part at least one channel."""
    import inspect

    import pruner.search.joint as joint
    import test_alignment

    net = tmp_path / "net.py"
    net.write_text("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
                   + inspect.getsource(test_alignment.ConcatResidual))
    penalised = []
    real = joint.GroupLasso.penalty

    def spy(self, removed):
        penalised.append([r.cpu() for r in removed])
        return real(self, removed)

    monkeypatch.setattr(joint.GroupLasso, "penalty", spy)
    cfg = tiny("joint", model=f"file:{net}:ConcatResidual", budget="flops=0.3", trust_code=True)
    summary = run_job(cfg, tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    from pruner.runs.job import Session

    space = Session(cfg).space
    gi = next(i for i, s in enumerate(space._segments) if len(s) > 1)
    assert penalised and any(len(p[gi]) for p in penalised)
    for p in penalised:
        gone = set(int(i) for i in p[gi])
        assert all(set(int(j) for j in seg) - gone for seg in space._segments[gi])

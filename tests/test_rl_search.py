"""The `sensitivity` strategy and `rl`'s starts, parameters and paper preset.

Real model (resnet20, random init), real data (the offline digits set), the real evaluator;
tiny settings. Parameter tests replay the reference run's evaluations through
``Evaluator.preload`` (the resume path), so only structures a variant proposes anew cost time.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import Session, run_job, run_sensitivity
from pruner.runs.rundir import RunDir
from pruner.search import SearchContext, make_strategy, run_search


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", val_size=300, budget="flops=0.5", strategy="rl",
                strategy_params={}, search_evals=10, search_images=60, recal_images=32, report_images=60,
                latency_repeats=3, finetune=FinetuneConfig(epochs=0), export=False, seed=0)
    base.update(kw)
    return RunConfig(**base)


SHARED_DATA = Path(os.environ.get("PRUNER_DATA_ROOT", "")) / "cifar10-jpeg"
SHARED_R20 = Path(os.environ.get("PRUNER_WEIGHTS_DIR", "")) / "resnet20-12fca82f.th"


@pytest.fixture(scope="module")
def session():
    """Pretrained ResNet-20 on the CIFAR-10 copy where present (probes then measure real damage),
    else the random-init digits set."""
    if SHARED_DATA.is_dir() and SHARED_R20.is_file():
        return Session(tiny(weights="pretrained", data="cifar10-jpeg", protocol="test-halves", search_images=100))
    return Session(tiny())


def search(session, strategy="rl", *, evals=10, seed=0, preload=(), events=None, **params):
    ev = session.evaluator(max_evals=evals)
    ev.preload(list(preload))
    log = events if events is not None else []
    ctx = SearchContext(ev, seed=seed, scores=session.scores, emit=lambda kind, **f: log.append({"kind": kind, **f}))
    best = run_search(make_strategy(strategy, **params), ctx)
    return best, ev


def as_events(ev) -> list[dict]:
    return [c.to_event() for c in ev.candidates if not c.meta["cached"]]


def test_sensitivity_respects_the_cap_and_the_budget(session):
    best, ev = search(session, "sensitivity", evals=6)
    assert ev.evaluations <= 6
    assert best.cost <= 0.5
    probes = [c for c in ev.candidates if "probe" in c.meta]
    assert len(probes) == 5  # the unpruned model and 4 chunks of adjacent groups (12 groups, 6 evaluations)
    assert best.meta["allocation"] == "inverse-damage"   # per_cost=auto: damage alone under a flops budget
    with pytest.raises(PrunerError, match="search-evals"):
        search(session, "sensitivity", evals=2)


def test_sensitivity_weighs_damage_against_the_parameters_a_group_frees():
    """Under a params budget a last-stage convolution frees 16x the parameters of a first-stage
    one: per_cost (auto: on for params) prunes it correspondingly more than damage alone would,
    from the same probes; rl's start is that same answer."""
    s = Session(tiny(budget="params=0.5", search_images=60))
    per_cost, ev = search(s, "sensitivity", evals=14)
    blind, ev2 = search(s, "sensitivity", evals=14, preload=as_events(ev), per_cost="no")
    forced, _ = search(s, "sensitivity", evals=14, preload=as_events(ev), per_cost="yes")
    assert forced.counts == per_cost.counts
    rl_best, rl_ev = search(s, "rl", evals=20, preload=as_events(ev))
    start = [c for c in rl_ev.candidates if c.meta.get("allocation")]
    assert [(c.counts, c.meta["allocation"]) for c in start] == [(per_cost.counts, "damage-per-cost")]
    assert rl_best.top1 >= per_cost.top1
    assert [c.counts for c in ev.candidates[:-1]] == [c.counts for c in ev2.candidates[:-1]]  # the same probes
    assert (per_cost.meta["allocation"], blind.meta["allocation"]) == ("damage-per-cost", "inverse-damage")
    assert per_cost.cost <= 0.5 and blind.cost <= 0.5
    groups = s.space.groups
    plain = [i for i, g in enumerate(groups) if not g.coupled]
    first, last = plain[:3], plain[-3:]                 # the first and the last stage's own convolutions

    def pruned(best, idx):
        return float(np.mean([1.0 - best.counts[i] / groups[i].channels for i in idx]))

    assert pruned(per_cost, last) - pruned(per_cost, first) > pruned(blind, last) - pruned(blind, first) + 0.2


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens") / "analysis"
    summary = run_sensitivity(tiny(), out, ratios=(0.3, 0.6))
    assert summary["status"] == "done", summary["error"]
    return out


def test_a_live_analysis_shows_drops_from_its_first_point(analysis):
    """The unpruned score is the analysis's first event, so the live heatmap has one meaning (top-1 drop, numbers in
    its cells, a scale from zero) from the first point to the last; the Runs table keeps it out of the report-split
    column."""
    from studio import charts, history, sensitivity_table
    from studio.events import sensitivity_from_events

    run = RunDir(analysis)
    events = run.events("sensitivity")
    assert events[0]["group"] is None and events[0]["done"] == 0 and events[0]["top1"] == run.summary()["base_top1"]
    for upto in (2, len(events)):                      # after one point, and at the end
        sens, value = sensitivity_table.complete(sensitivity_from_events(events[:upto]))
        assert value == "drop" and sens["base_top1"] == run.summary()["base_top1"]
        heat = charts.sensitivity_heatmap(sens, value=value).data[0]
        assert heat.texttemplate == "%{z:.1f}" and heat.zmin == 0.0
        assert sum(v is not None for row in heat.z for v in row) == upto - 1
    final = run.sensitivity_result()
    assert np.allclose(sens["drop"], final["drop"])   # the live matrix at the end is the saved one
    row = history.table_row(run)
    assert row["kind"] == "sensitivity" and row["base top-1 (%)"] is None


def test_rl_starts_from_a_finished_analysis_and_records_it(analysis, tmp_path):
    summary = run_job(tiny(strategy_params={"start": str(analysis)}, search_evals=6), tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    run = RunDir(tmp_path / "run")
    prior = run.events("prior")
    assert len(prior) == 1 and prior[0]["source"].endswith("sensitivity.json") and prior[0]["evaluations"] == 0
    cands = run.events("candidate")
    assert not any("probe" in c["meta"] for c in cands)  # the analysis replaced the probes
    assert all(c["meta"]["start_source"] == prior[0]["source"] for c in cands)
    assert summary["search"]["start_source"] == prior[0]["source"]
    # the analysis' damages decide the first candidate: another analysis start differs from a uniform one
    uniform = run_job(tiny(strategy_params={"start": "uniform"}, search_evals=6), tmp_path / "uniform")
    first = [c["counts"] for c in cands][0]
    assert first != RunDir(tmp_path / "uniform").events("candidate")[0]["counts"]
    assert uniform["status"] == "done"


def test_a_mismatched_analysis_is_refused(analysis, tmp_path):
    other_weights = run_job(tiny(strategy_params={"start": str(analysis)}, seed=1), tmp_path / "seed1")
    assert other_weights["status"] == "failed"
    assert "different model weights" in other_weights["error"] and "\n" not in other_weights["error"]
    for bad in (str(tmp_path / "nowhere"), "banana"):   # refused with the settings, before any work
        with pytest.raises(PrunerError, match="neither one of sensitivity, probe, uniform, cost nor a finished "
                                              "Sensitivity analysis"):
            tiny(strategy_params={"start": bad})
    gone = tmp_path / "gone"                            # deleted between the settings and the run
    gone.mkdir()
    (gone / "sensitivity.json").write_text((analysis / "sensitivity.json").read_text())
    config = tiny(strategy_params={"start": str(gone)})
    (gone / "sensitivity.json").unlink()
    missing = run_job(config, tmp_path / "missing")
    assert missing["status"] == "failed" and "no sensitivity analysis" in missing["error"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    data = json.loads((analysis / "sensitivity.json").read_text())
    data.pop("fingerprint")
    (legacy / "sensitivity.json").write_text(json.dumps(data))
    old = run_job(tiny(strategy_params={"start": str(legacy)}), tmp_path / "old")
    assert old["status"] == "failed" and "run the analysis again" in old["error"]


@pytest.fixture(scope="module")
def reference(session):
    best, ev = search(session, max_probes=3)
    return trace(ev), as_events(ev), [c.top1 for c in ev.candidates]


def trace(ev) -> list[tuple]:
    """What a search did: each structure, its score, and which weights scored it."""
    return [(tuple(c.counts), c.top1, c.meta["model_version"]) for c in ev.candidates]


# parameter -> (changed value, other settings that make it matter)
CHANGES = {
    "preset": ("paper", {"finetune_batches": 0, "samples": 3}),
    "start": ("uniform", {}),
    "policy": ("groups", {}),
    "surrogate": (True, {}),
    "probe_ratio": (0.8, {}),
    "parts": (1, {"_evals": 16, "max_probes": 9, "start": "probe"}),
    "max_probes": (2, {}),
    "floor": (40.0, {}),  # above the probes' damage, so it decides the start
    "power": (3.0, {}),
    "steps": (2, {}),
    "samples": (4, {}),
    "inner_epochs": (2, {}),
    "noise": (1.5, {}),
    "antithetic": (False, {}),
    "sharpen": (2.0, {}),
    # the noise shrinks after an update that found nothing better: many short updates make one likely
    "noise_decay": (0.2, {"_evals": 16, "inner_epochs": 8}),
    "min_noise": (0.3, {"_evals": 16, "inner_epochs": 8, "noise_decay": 0.2}),
    "lr": (0.1, {}),
    "clip": (0.05, {}),
    "temperature": (0.5, {}),
    "epsilon": (1.0, {}),
    "finetune_batches": (1, {"steps": 2, "samples": 2, "inner_epochs": 1}),
    "finetune_lr": (0.5, {"steps": 2, "samples": 2, "inner_epochs": 1, "finetune_batches": 1}),
    "importance": ("l1", {"steps": 2, "samples": 2, "inner_epochs": 1, "finetune_batches": 1}),
}


def test_every_rl_parameter_is_covered():
    assert set(CHANGES) == set(make_strategy("rl").defaults())


@pytest.mark.parametrize("param", list(CHANGES))
def test_every_rl_parameter_changes_behaviour(session, reference, param):
    value, context = CHANGES[param]
    context = dict(context)
    evals = context.pop("_evals", 10)
    base_params = {"max_probes": 3, **context}
    if context or evals != 10:  # compare against the same context with the default value
        base_best, base_ev = search(session, evals=evals, preload=reference[1], **base_params)
        before = trace(base_ev)
    else:
        before = reference[0]
    best, ev = search(session, evals=evals, preload=reference[1], **{**base_params, param: value})
    after = trace(ev)
    assert after != before, f"rl {param}={value!r} proposed exactly what the default did"
    assert best.cost <= 0.5 + 1e-9


def test_rl_is_deterministic_for_a_seed(session, reference):
    _, ev = search(session, max_probes=3)  # no preload: every structure evaluated again
    assert trace(ev) == reference[0]
    _, other = search(session, max_probes=3, seed=1, preload=reference[1])
    assert trace(other) != reference[0]


def test_paper_preset_distils_between_steps_and_the_job_prunes_those_weights(tmp_path):
    params = {"preset": "paper", "steps": 2, "inner_epochs": 1, "finetune_batches": 2, "importance": "taylor"}
    summary = run_job(tiny(strategy_params=params, search_evals=6), tmp_path / "paper")
    assert summary["status"] == "done", summary["error"]
    assert summary["search"]["params"]["clip"] == 0.25 and summary["search"]["params"]["epsilon"] == 0.4
    run = RunDir(tmp_path / "paper")
    versions = {c["meta"]["model_version"] for c in run.events("candidate")}
    assert versions == {0, 1}  # the second step scored the distilled weights
    saved = torch.load(tmp_path / "paper" / "state" / "search_model.pt", weights_only=True)
    base = Session(tiny()).model.state_dict()
    assert any(not torch.equal(saved["state_dict"][k].float(), v.float()) for k, v in base.items() if v.is_floating_point())
    assert summary["budget"]["achieved"] <= 0.5


def test_the_answer_is_flagged_when_it_is_the_start(tmp_path):
    # without exploration noise every sample is the start itself
    params = {"start": "uniform", "noise": 0.0, "sharpen": 0.0, "min_noise": 0.0}
    summary = run_job(tiny(strategy_params=params, search_evals=4), tmp_path / "flat")
    assert summary["status"] == "done", summary["error"]
    assert summary["search"]["answer_is_start"] is True and "starting point" in summary["search"]["note"]
    warnings = [e["message"] for e in RunDir(tmp_path / "flat").events("log") if e.get("level") == "warning"]
    assert any("starting allocation" in m for m in warnings)


def test_rl_starts_from_the_sensitivity_answer_and_keeps_the_best(session):
    """Default start: the sensitivity strategy's probes and answer, structure for structure (so a
    shared cache serves them), then learning that can only keep or beat that answer."""
    sens, sev = search(session, "sensitivity", evals=14)
    events: list[dict] = []
    best, ev = search(session, evals=20, events=events, preload=as_events(sev))
    heuristic = [tuple(c.counts) for c in sev.candidates]
    assert [tuple(c.counts) for c in ev.candidates[: len(heuristic)]] == heuristic
    assert ev.candidates[len(heuristic) - 1].meta["allocation"] == "inverse-damage"
    assert best.top1 >= sens.top1 and ev.evaluations == 20
    learned = [c for c in ev.candidates[len(heuristic):]]
    assert learned and all(c.meta["proposal"] in ("mean", "noise") for c in learned)
    prior = [e for e in events if e["kind"] == "prior"]
    assert prior[0]["source"] == "probes" and prior[0]["allocation"] == "inverse-damage"
    assert prior[0]["evaluations"] == len(heuristic) - 1


def test_rl_probes_blocks_at_the_ratio_the_budget_needs(session):
    """Default start: the unpruned model, each coupled group alone at half the ratio, the ordinary
    groups of each resolution in two blocks by depth at 1 - target; the start is recorded."""
    events: list[dict] = []
    cfg = session.config
    session.config = tiny(weights=cfg.weights, data=cfg.data, protocol=cfg.protocol, search_images=cfg.search_images,
                          budget="flops=0.3")
    try:
        best, ev = search(session, evals=20, events=events, max_probes=9, start="probe")
    finally:
        session.config = cfg
    probes = [c for c in ev.candidates if "probe" in c.meta and c.meta["probe"] != "base"]
    groups = session.space.groups
    coupled = {g.name for g in groups if g.coupled}
    alone = [c for c in probes if len(c.meta["groups"]) == 1 and c.meta["groups"][0] in coupled]
    assert {c.meta["groups"][0] for c in alone} == coupled  # every residual group probed alone
    assert all(c.meta["ratio"] == pytest.approx(0.35) for c in alone)
    blocks = [c for c in probes if c not in alone]
    assert len(blocks) == 6 and all(c.meta["ratio"] == pytest.approx(0.7) for c in blocks)  # 3 resolutions x 2 parts
    assert not any(set(c.meta["groups"]) & coupled for c in blocks)
    assert sorted(n for c in probes for n in c.meta["groups"]) == sorted(g.name for g in groups)
    prior = [e for e in events if e["kind"] == "prior"]
    assert len(prior) == 1 and prior[0]["source"] == "probes" and prior[0]["evaluations"] == 1 + len(probes)
    assert prior[0]["policy"] == "features" and len(prior[0]["blocks"]) == len(probes)
    learned = [c for c in ev.candidates if "slice" in c.meta]
    assert learned and all(c.meta["start_source"] == "probes" for c in learned)
    assert all(c.cost <= 0.3 + 1e-9 for c in learned) and best.cost <= 0.3 + 1e-9


def test_rl_spends_every_evaluation_on_a_new_structure_and_asks_the_surrogate(session):
    best, ev = search(session, evals=20, surrogate=True)
    assert ev.evaluations == 20  # no proposal repeats a structure, so the cap is used in full
    assert not any(c.meta["cached"] for c in ev.candidates)
    assert len({tuple(c.counts) for c in ev.candidates}) == len(ev.candidates)
    kinds = [c.meta.get("proposal") for c in ev.candidates if "slice" in c.meta]
    assert kinds.count("surrogate") >= 2 and "mean" in kinds and "noise" in kinds
    _, without = search(session, evals=20, preload=as_events(ev))
    assert not any(c.meta.get("proposal") == "surrogate" for c in without.candidates)


def test_the_damage_model_recovers_its_coefficients_and_prunes_the_robust_block_more():
    from pruner.search.rl_pruner import DamageModel

    rng = np.random.default_rng(0)
    blocks = [[0], [1, 2], [3, 4, 5]]
    truth = np.array([40.0, 4.0, 1.0])  # points lost per group pruned fully (quadratic)
    model = DamageModel(blocks, 6, 2.0, floor=0.01, ratio=0.5)
    pruned = rng.uniform(0, 0.8, size=(40, 6))
    damage = model.design(pruned) @ truth
    model.fit(pruned, damage)
    assert model.a == pytest.approx(truth, rel=1e-6)
    alloc = model.allocation(np.ones(6), power=1.0)
    assert alloc[3] == pytest.approx(1.0) and alloc[1] == pytest.approx(0.25) and alloc[0] == pytest.approx(1 / 40)
    # the saving rate counts: a block that saves twice the cost per channel is pruned twice as hard
    rates = np.array([1.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    assert model.allocation(rates, power=1.0)[1] == pytest.approx(0.5)


def test_rl_features_come_from_the_pruning_space(session):
    from pruner.search.rl_pruner import feature_blocks, group_features, group_layout, group_resolution

    space = session.space
    res = group_resolution(session.model, space, "cpu")
    stage, coupled, depth = group_layout(space, res)
    levels = sorted(set(res.tolist()), reverse=True)  # e.g. 32x32, 16x16, 8x8
    assert len(levels) == 3 and np.allclose(np.diff(levels), -2.0)
    assert list(coupled) == [g.coupled for g in space.groups] and coupled.sum() == 3
    feats, names = group_features(space, res)
    assert feats.shape[0] == len(space) and 3 <= feats.shape[1] <= 7 and len(names) == feats.shape[1]
    assert "coupled" in names and "resolution" in names
    assert np.allclose(feats.mean(axis=0), 0) and np.allclose(feats.std(axis=0), 1)
    # a forward pass with the hooks left the model's outputs alone
    x = torch.zeros(2, *space.input_size)
    with torch.no_grad():
        assert session.model.eval()(x).shape == (2, 10)
    assert len(feature_blocks(space, res, 9, 2)) == 9 and len(feature_blocks(space, res, 6, 2)) == 6
    assert len(feature_blocks(space, res, 2, 2)) == 2


def test_an_interrupted_rl_search_resumes_to_the_same_answer(session, reference):
    """The resume path: the evaluator serves the first half of the earlier evaluations, the
    strategy replays and ends exactly where the uninterrupted search ended."""
    half = reference[1][: len(reference[1]) // 2]
    best, ev = search(session, max_probes=3, preload=half)
    assert trace(ev) == reference[0]
    assert ev.evaluations == len(reference[1])

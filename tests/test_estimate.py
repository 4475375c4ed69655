"""The run estimate before Start (pruner.runs.estimate) from a real model summary: its arithmetic, what it
leaves out, and the New run page's caption. How close it comes to real runs is measured in
bench/run_estimate.py (a test never checks wall-clock time)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pruner.finetune import FinetuneConfig, finetune_plan
from pruner.model_summary import summary_in_child
from pruner.runs.config import RunConfig
from pruner.runs.estimate import TIMED_KEEP, estimate_run, structures_scored
from pruner.runs.rundir import RunDir
from studio.forms import run_estimate_text

BASE = RunConfig(model="resnet20", weights=None, data="digits", device="cpu", search_evals=10, report_images=200)


@pytest.fixture(scope="module")
def summary():
    s = summary_in_child(BASE.to_dict(), timeout=300)
    assert not s.get("error"), s["error"]
    return s


def test_the_summary_times_a_typical_candidate_through_the_evaluator(summary):
    t = summary["candidate_timing"]
    assert t["keep"] == TIMED_KEEP and t["images"] == summary["data"]["sizes"]["search"]
    assert 0 < t["evaluation_s"] < t["steady_s"] and t["first_s"] > 0 and summary["load_seconds"] > 0
    r = summary["report_timing"]
    assert (r["images"], r["repeats"]) == (64, 5) and r["seconds"] > 0 and r["export_s"] > 0
    assert r["finetune_timing_s"] > 0


def test_each_part_follows_the_settings(summary):
    est = estimate_run(BASE, summary)
    assert est.total == pytest.approx(est.load + est.base + est.search + est.finetune + est.report)
    assert est.finetune == 0.0 and est.notes == []
    # the search is linear in the evaluations: one candidate's time per evaluation
    more = estimate_run(dataclasses.replace(BASE, search_evals=30), summary)
    per_candidate = (more.search - est.search) / 20
    t = summary["candidate_timing"]
    assert per_candidate == pytest.approx(t["steady_s"] - t["evaluation_s"] + t["evaluation_s"])  # all search images
    # fewer search images: only the scoring part shrinks
    half = estimate_run(dataclasses.replace(BASE, search_images=t["images"] // 2), summary)
    assert est.search - half.search == pytest.approx(10 * t["evaluation_s"] * (t["images"] - t["images"] // 2)
                                                      / t["images"])
    # a latency budget times every candidate in pairs with the unpruned model
    lat = estimate_run(dataclasses.replace(BASE, budget="latency=0.7"), summary)
    assert lat.search - est.search == pytest.approx(10 * 2 * BASE.latency_repeats * summary["latency_ms"] / 1000)
    # the reports scale with the report images and the latency repeats (the final one times in pairs)
    per_image = t["evaluation_s"] / t["images"]
    more_images = estimate_run(dataclasses.replace(BASE, report_images=300), summary)
    assert more_images.base - est.base == pytest.approx(100 * per_image)
    assert more_images.report - est.report == pytest.approx(100 * per_image)
    reps = estimate_run(dataclasses.replace(BASE, latency_repeats=BASE.latency_repeats + 10), summary)
    assert reps.base - est.base == pytest.approx(10 * summary["latency_ms"] / 1000)
    assert reps.report - est.report == pytest.approx(2 * 10 * summary["latency_ms"] / 1000)
    no_export = estimate_run(dataclasses.replace(BASE, export=False), summary)
    assert est.report - no_export.report == pytest.approx(2 * summary["report_timing"]["export_s"])
    # fine-tuning is the timed step's plan
    ft = FinetuneConfig(epochs=2, batch_size=32)
    tuned = estimate_run(dataclasses.replace(BASE, finetune=ft), summary)
    assert tuned.finetune > 0
    assert tuned.finetune == pytest.approx(finetune_plan(summary["finetune_timing"], ft,
                                                         summary["data"]["sizes"]["fit"])["seconds"])


def test_a_search_that_trains_counts_its_training(summary):
    """joint's search: its training steps at the timed step's seconds per image × its batch size (no
    teacher), the structures it scores, and about one more evaluation on each epoch's new weights; rl's
    search is its evaluations alone; joint trains under the same autocast rule as the timed step, so the
    estimate has no note about it."""
    from pruner.search.joint import JointPruning

    rl = estimate_run(BASE, summary)
    assert rl.search_training is None and rl.search_steps is None and rl.search_evaluations == 10
    fit, step = summary["data"]["sizes"]["fit"], summary["finetune_timing"]["train_s"]
    t = summary["candidate_timing"]
    candidate = t["steady_s"]                       # all search images: the fixed part and the scoring
    joint = estimate_run(dataclasses.replace(BASE, strategy="joint"), summary)
    assert joint.notes == []                       # nothing left out
    # the parameters the run does not set are the strategy's declared defaults (3 epochs of at most 20 batches of 64)
    d = {k: p.default for k, p in JointPruning.param_specs.items()}
    assert joint.search_steps == d["epochs"] * min(d["batches_per_epoch"], math.ceil(fit / d["batch_size"]))
    assert joint.search_training == pytest.approx(step * joint.search_steps * d["batch_size"])
    # 10 evaluations over 3 epochs: 2 structures an epoch, then the final 2
    assert joint.search_evaluations == structures_scored(d, 10) == 8
    assert joint.search - rl.search == pytest.approx(joint.search_training + (8 + 3 - 10) * candidate)
    assert joint.total - rl.total == pytest.approx(joint.search - rl.search)
    caption = run_estimate_text(dataclasses.replace(BASE, strategy="joint"), summary)
    assert f"search (8 evaluations and {joint.search_steps} training steps, " in caption and caption.endswith("step.")
    # set parameters: every batch of the fit split (batches_per_epoch=0) in batches of 128, 2 epochs, 3 samples
    params = {"epochs": 2, "batches_per_epoch": 0, "batch_size": 128, "samples": 3}
    whole = estimate_run(dataclasses.replace(BASE, strategy="joint", strategy_params=params), summary)
    assert whole.search_steps == 2 * math.ceil(fit / 128)
    assert whole.search_training == pytest.approx(step * whole.search_steps * 128)
    assert whole.search_evaluations == 2 * 3 + 2
    # a taylor ranking after every epoch: a forward and backward pass over 256 fit images
    taylor = estimate_run(dataclasses.replace(BASE, strategy="joint", importance="taylor"), summary)
    assert taylor.search_training - joint.search_training == pytest.approx(3 * 256 * step)
    # no timed training step: the training is left out, and said
    untimed = estimate_run(dataclasses.replace(BASE, strategy="joint"), {**summary, "finetune_timing": None})
    assert untimed.search_training is None and untimed.search == pytest.approx(joint.search - joint.search_training)
    assert any("trains the weights during its search, which this does not count" in n for n in untimed.notes)


@pytest.mark.parametrize("samples,evals,epochs,expected", [
    (0, 9, 3, 8), (0, 100, 3, 26), (0, 4, 3, 4), (0, 30, 2, 18), (3, 8, 2, 8), (5, 8, 2, 8), (2, 50, 4, 10)])
def test_the_structures_joint_scores(samples, evals, epochs, expected):
    assert structures_scored({"epochs": epochs, "samples": samples}, evals) == expected


def test_joint_scores_as_many_structures_as_estimated(summary, tmp_path):
    """A real joint run (spreading its evaluations over the epochs: samples=0) draws the estimated number of
    structures; the evaluations it counts are at most that (a structure drawn twice on the same weights, or
    a final policy mean equal to the last epoch's structure, is scored once) and at least one per epoch and
    one on the trained weights."""
    from pruner.runs.job import run_job

    params = {"epochs": 2, "batches_per_epoch": 1, "batch_size": 32}
    cfg = dataclasses.replace(BASE, strategy="joint", strategy_params=params, search_evals=9, search_images=64,
                              recal_images=32, report_images=64, latency_repeats=2, export=False)
    done = run_job(cfg, tmp_path / "joint")
    assert done["status"] == "done", done["error"]
    estimated = estimate_run(cfg, summary).search_evaluations
    assert estimated == 8 and 2 + 1 <= done["search"]["evaluations"] <= estimated
    drawn = [c for c in RunDir(tmp_path / "joint").events("candidate")]
    assert len(drawn) in (estimated - 1, estimated)   # every draw is logged, a memo hit too


def test_what_it_cannot_count_is_said(summary):
    workers = estimate_run(dataclasses.replace(BASE, workers=2), summary)
    assert any("2 Ray workers" in n for n in workers.notes)
    no_timing = estimate_run(BASE, {**summary, "candidate_timing": None})
    assert no_timing.search is None and no_timing.total is None

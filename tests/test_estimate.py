"""The run estimate before Start (pruner.runs.estimate) from a real model summary: its arithmetic, what it
leaves out, and the New run page's caption. How close it comes to real runs is measured in
bench/run_estimate.py (a test never checks wall-clock time)."""

from __future__ import annotations

import dataclasses

import pytest

from pruner.finetune import FinetuneConfig, finetune_plan
from pruner.model_summary import summary_in_child
from pruner.runs.config import RunConfig
from pruner.runs.estimate import TIMED_KEEP, estimate_run

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


def test_what_it_cannot_count_is_said(summary):
    joint = estimate_run(dataclasses.replace(BASE, strategy="joint"), summary)
    assert any("trains the weights during its search" in n for n in joint.notes)
    workers = estimate_run(dataclasses.replace(BASE, workers=2), summary)
    assert any("2 Ray workers" in n for n in workers.notes)
    no_timing = estimate_run(BASE, {**summary, "candidate_timing": None})
    assert no_timing.search is None and no_timing.total is None

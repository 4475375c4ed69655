"""The run-directory contract (pruner/runs/rundir.py) as the engine writes it and the studio reads it:
one feasibility rule (Budget.feasible) on both sides, the statuses and event kinds a real job
writes, and progress/ETA derived from them through every stage of a real run."""

from __future__ import annotations

import pytest

from pruner.budget import LATENCY_TOLERANCE, Budget
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import run_job
from pruner.runs.rundir import PRUNE, PRUNE_PHASES, SENSITIVITY, Event, RunDir, Status, config_with_kind, run_config
from studio.events import RunView, finetune_note, progress

FT_EPOCHS = 2


# ---------------------------------------------------------------------- one feasibility rule
def test_budget_feasible_gives_only_measured_latency_a_tolerance():
    assert Budget("flops", 0.5).feasible(0.5) and not Budget("flops", 0.5).feasible(0.51)
    assert not Budget("params", 0.4).feasible(0.4 * 1.04)
    assert Budget("latency", 0.6).feasible(0.6 * (1 + LATENCY_TOLERANCE))
    assert not Budget("latency", 0.6).feasible(0.6 * (1 + LATENCY_TOLERANCE) + 1e-6)
    assert not Budget("flops", 0.5).feasible(None)


def test_run_kinds_round_trip_through_config_json(tmp_path):
    rd = RunDir(tmp_path / "a")
    rd.create(config_with_kind({"model": "resnet20"}, SENSITIVITY, ratios=[0.5]))
    assert rd.kind() == SENSITIVITY and run_config(rd.config()) == {"model": "resnet20"}
    rd2 = RunDir(tmp_path / "b")
    rd2.create(config_with_kind({"model": "resnet20"}, PRUNE))
    assert rd2.kind() == PRUNE and rd2.chosen_candidate() is None and rd2.artifact("onnx") is None


# ---------------------------------------------------------------------- a real run, replayed
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny real run with two fine-tuning epochs (digits, random init, CPU)."""
    out = tmp_path_factory.mktemp("contract") / "run"
    config = RunConfig(model="resnet20", weights=None, data="digits", strategy="random", search_evals=3,
                       search_images=50, recal_images=32, report_images=50, latency_repeats=2, export=False,
                       device="cpu", seed=3,
                       finetune=FinetuneConfig(epochs=FT_EPOCHS, batch_size=16, max_batches_per_epoch=6))
    summary = run_job(config, out)
    assert summary["status"] == Status.DONE, summary["error"]
    return RunDir(out)


def _replay(rd: RunDir):
    """(view after each event, that event) for the run's events in order."""
    config = rd.config()
    view = RunView(budget=Budget.parse(config["budget"]))
    for e in rd.iter_events():
        view.add(e)
        yield view, e


def test_a_resumed_search_writes_what_it_replays_once_and_what_diverges_as_it_happens(tmp_path):
    """RunDir.replay_emitter: per kind, an event identical (but its time) to the next one the earlier
    attempts' searches recorded is not written again; the first that differs is, and so is every
    later event of its kind. Statuses, and events outside a search, are never matched."""
    run = RunDir(tmp_path / "run")
    run.create({})
    run.event(Event.STATUS, status=Status.STARTED)
    run.event(Event.LOG, level="info", message="before the search")   # not a search's event
    run.event(Event.STATUS, status=Status.SEARCHING)
    for i in range(3):
        run.event("constrained", step=i, multiplier=1.0 + i)
        run.event(Event.STEP, step=i, best_top1=10.0 * i)
    run.event(Event.STATUS, status=Status.CANCELLED)
    run.event(Event.STATUS, status=Status.SEARCHING)
    emit = run.replay_emitter()
    emit(Event.STATUS, status=Status.STARTING_WORKERS)        # written: a status of this attempt
    emit(Event.LOG, level="info", message="before the search")   # written: not recorded by a search
    for i in range(3):
        emit("constrained", step=i, multiplier=1.0 + i)       # the replay: not written again
    emit(Event.STEP, step=0, best_top1=0.0)
    emit(Event.STEP, step=1, best_top1=99.0)                  # diverged: written ...
    emit(Event.STEP, step=2, best_top1=20.0)                  # ... and so is all that follows
    emit("constrained", step=3, multiplier=4.0)               # past the record: written
    assert emit.skipped == 4
    assert [e["step"] for e in run.events("constrained")] == [0, 1, 2, 3]
    assert [(e["step"], e["best_top1"]) for e in run.events(Event.STEP)] == [(0, 0.0), (1, 10.0), (2, 20.0),
                                                                           (1, 99.0), (2, 20.0)]
    assert [e["message"] for e in run.events(Event.LOG)] == ["before the search"] * 2
    assert run.events(Event.STATUS)[-1]["status"] == Status.STARTING_WORKERS


def test_the_job_writes_only_the_contracts_statuses_and_kinds(finished_run):
    events = list(finished_run.iter_events())
    statuses = [e["status"] for e in events if e["kind"] == Event.STATUS]
    assert set(statuses) <= set(PRUNE_PHASES) | {Status.DONE}
    assert [s for s in statuses if s in PRUNE_PHASES] == sorted((s for s in statuses if s in PRUNE_PHASES),
                                                                 key=PRUNE_PHASES.index)
    kinds = {e["kind"] for e in events}
    assert {Event.STATUS, Event.BASE, Event.CANDIDATE, Event.EPOCH, Event.PROGRESS} <= kinds
    assert kinds <= {v for k, v in vars(Event).items() if k.isupper()}
    # the chosen candidate is the finished search's answer, and it is one the run scored
    chosen = finished_run.chosen_candidate()
    assert chosen == finished_run.search_result()["candidate_id"]
    assert chosen in {e["candidate_id"] for e in events if e["kind"] == Event.CANDIDATE}
    assert finished_run.artifact("checkpoint") == finished_run.artifact_path("checkpoint").resolve()


def test_eta_through_fine_tuning_export_and_report(finished_run):
    """Once fine-tuning has measured a batch, and all through exporting and the final report, the
    progress has an ETA; the fraction never goes back; the fine-tuning text names the running epoch."""
    config = finished_run.config()
    seen: dict[str, int] = {}
    last_fraction = 0.0
    for view, e in _replay(finished_run):
        p = progress(view, config, now=e["time"])
        assert p["fraction"] >= last_fraction - 1e-9, (e, p)
        last_fraction = p["fraction"]
        if view.status == Status.FINE_TUNING and view.stage_progress is not None:
            assert p["eta_s"] is not None, (e, p)
            running = min(FT_EPOCHS, (view.epochs[-1]["epoch"] if view.epochs else 0) + 1)
            assert f"epoch {running}/{FT_EPOCHS}" in p["text"]
            seen["fine-tuning"] = seen.get("fine-tuning", 0) + 1
        if view.status in (Status.EXPORTING, Status.REPORTING):
            assert p["eta_s"] is not None, (e, p)
            seen[view.status] = seen.get(view.status, 0) + 1
    assert seen.get("fine-tuning", 0) >= FT_EPOCHS and seen.get(Status.EXPORTING) and seen.get(Status.REPORTING)


def test_eta_covers_the_whole_run(finished_run):
    """While searching, the ETA is the search's own plus what the run measured before it for the stages
    after: the fine-tuning plan and the original model's report time (the export is off here)."""
    config = finished_run.config()
    plan = finished_run.summary()["finetune_plan"]["seconds"]
    checked = 0
    for view, e in _replay(finished_run):
        p = progress(view, config, now=e["time"])
        if view.status == Status.SEARCHING and p["stage_eta_s"] is not None:
            assert p["eta_s"] == pytest.approx(p["stage_eta_s"] + plan + view.base_seconds)
            assert "run ETA" in p["text"]
            checked += 1
        if view.status == Status.FINE_TUNING and p["stage_eta_s"] is not None:
            assert p["eta_s"] == pytest.approx(p["stage_eta_s"] + view.base_seconds)
        if view.status == Status.SEARCH_DONE:
            assert p["eta_s"] == pytest.approx(plan + view.base_seconds)
    assert checked >= 1


def test_elapsed_leaves_out_the_time_stopped_between_cancel_and_resume():
    events = [{"kind": "status", "status": s, "time": t} for s, t in
              (("searching", 0.0), ("cancelled", 10.0), ("queued", 100.0), ("searching", 101.0), ("done", 111.0))]
    view = RunView.from_events(events)
    assert view.idle_seconds == 90.0 and view.active_seconds() == 21.0
    running = RunView.from_events(events[:4])
    assert running.active_seconds(now=105.0) == 15.0        # 10 s before the cancel, 5 s since the resume
    assert RunView().active_seconds() is None


def test_fine_tuning_chart_note_follows_the_status(finished_run):
    config = finished_run.config()
    notes = {}
    for view, e in _replay(finished_run):
        if not view.epochs:
            notes.setdefault(view.status, finetune_note(view, config))
    assert "starts after the search" in notes[Status.SEARCHING]
    assert "has not started" not in notes[Status.FINE_TUNING] and "running" in notes[Status.FINE_TUNING]
    assert finetune_note(RunView(), {"finetune": {"epochs": 0}}) == "fine-tuning is off (0 epochs)"

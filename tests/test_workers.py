"""Parallel candidate evaluation on Ray actors (pruner/runs/workers.py), on a shared local Ray."""

from __future__ import annotations

import time

import pytest

from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import resume_job, run_job
from pruner.runs.rundir import RunDir

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (a job joins a running Ray and leaves it running). float32 in the job and
    its actors (``PRUNER_BF16=0``, set before Ray starts its workers): bf16 kernels' sums depend on the thread
    count, so on a CPU with native bf16 a candidate scored in an actor (1 thread) can differ in the last image
    from the same candidate scored in the job."""
    import os

    from pruner.settings import BF16_ENV

    before = os.environ.get(BF16_ENV)
    os.environ[BF16_ENV] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop(BF16_ENV, None)
    else:
        os.environ[BF16_ENV] = before


def actors_released(timeout: float = 60.0) -> bool:
    """Every CPU of the shared Ray is free again: the job's actors were stopped."""
    end = time.time() + timeout
    while time.time() < end:
        if ray.available_resources().get("CPU", 0.0) == ray.cluster_resources().get("CPU"):
            return True
        time.sleep(0.5)
    return False


def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", strategy="random", search_evals=12, search_images=60,
                recal_images=32, report_images=40, latency_repeats=2, finetune=FinetuneConfig(epochs=0),
                export=False, device="cpu", seed=5)
    base.update(kw)
    return RunConfig(**base)


def search_of(path) -> tuple[list, dict]:
    run = RunDir(path)
    cands = [(e["candidate_id"], tuple(e["counts"]), e["top1"], e["meta"]["cached"]) for e in run.events("candidate")]
    return cands, run.summary()


@pytest.mark.parametrize("strategy", ["random", "constrained", "purl", "optuna"])
def test_candidates_and_answer_do_not_depend_on_the_number_of_workers(tmp_path, strategy):
    params = {"constrained": {"batch": 4}, "purl": {"steps": 2, "batch": 2},
              "optuna": {"warm_start": "uniform", "batch": 4}}.get(strategy, {})
    results = {}
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        summary = run_job(tiny(strategy=strategy, strategy_params=params, workers=workers), out)
        assert summary["status"] == "done", summary["error"]
        results[workers] = search_of(out)
    (c0, s0), (c1, s1), (c2, s2) = results[0], results[1], results[2]
    assert len(c0) >= 8 and c0 == c1 == c2
    n = s0["search"]["evaluations"]
    assert 8 <= n <= 12 and s1["search"]["evaluations"] == s2["search"]["evaluations"] == n
    assert s0["search"]["best_val_top1"] == s1["search"]["best_val_top1"] == s2["search"]["best_val_top1"]
    assert s0["search"]["workers"] is None
    stats = s2["search"]["workers"]
    on_workers = sum(w["evaluations"] for w in stats)
    # random, purl and optuna propose everything in batches; constrained scores its policy's mean alone, in the job
    assert len(stats) == 2 and (1 <= on_workers < n if strategy == "constrained" else on_workers == n)
    assert len({w["pid"] for w in stats}) == 2                      # two separate processes did the scoring
    assert all(w["evaluations"] >= 1 for w in stats)


def test_workers_report_their_work_as_events_and_stop_with_the_job(tmp_path):
    out = tmp_path / "r"
    summary = run_job(tiny(workers=2), out)
    assert summary["status"] == "done", summary["error"]
    events = RunDir(out).events("workers")
    assert events and all(len(e["workers"]) == 2 for e in events)
    assert events[-1]["workers"][0]["busy_seconds"] > 0
    assert actors_released()                                       # the job's actors are gone


def test_sensitivity_analysis_on_workers_equals_in_process(tmp_path):
    from pruner.runs.job import run_sensitivity

    outs = []
    for workers in (0, 2):
        out = tmp_path / f"s{workers}"
        summary = run_sensitivity(tiny(workers=workers), out, ratios=[0.3, 0.6])
        assert summary["status"] == "done", summary["error"]
        outs.append(__import__("json").loads((out / "sensitivity.json").read_text()))
    assert outs[0]["top1"] == outs[1]["top1"]


def test_cancel_stops_the_workers(tmp_path):
    out = tmp_path / "c"
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return bool(RunDir(out).events("candidate"))   # cancel once the first batch has been scored

    summary = run_job(tiny(search_evals=200, workers=2), out, should_stop=stop)
    assert summary["status"] == "cancelled"
    assert actors_released()


@pytest.mark.parametrize("kw, match", [
    ({"workers": -1}, "workers"),
    ({"workers": 1.5}, "workers"),
    ({"ray_address": "127.0.0.1:6379"}, "--workers"),
    ({"workers": 2, "ray_address": "has space:1"}, "ray_address"),
])
def test_bad_worker_settings_are_refused_before_any_work(kw, match):
    with pytest.raises(PrunerError, match=match):
        tiny(**kw)


@pytest.mark.parametrize("strategy", ["rl", "sensitivity"])
def test_rl_and_sensitivity_propose_in_batches(tmp_path, strategy):
    """rl's samples of one update and sensitivity's probes are scored on the workers, with the
    same candidates as in-process."""
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"{strategy}{workers}"
        summary = run_job(tiny(strategy=strategy, search_evals=16, workers=workers), out)
        assert summary["status"] == "done", summary["error"]
        results[workers] = search_of(out)
    assert results[0][0] == results[2][0]
    stats = results[2][1]["search"]["workers"]
    assert sum(w["evaluations"] for w in stats) >= results[2][1]["search"]["evaluations"] - 1


def test_a_cancelled_run_resumes_on_workers_with_the_same_candidates(tmp_path):
    """Cancel after the first batch, resume with two workers: the candidates are those of an
    uninterrupted in-process run, none lost or duplicated."""
    straight = tmp_path / "straight"
    assert run_job(tiny(workers=0), straight)["status"] == "done"
    out = tmp_path / "resumed"
    first = run_job(tiny(workers=2), out, should_stop=lambda: bool(RunDir(out).events("candidate")))
    assert first["status"] == "cancelled"
    summary = resume_job(out)
    assert summary["status"] == "done", summary["error"]
    assert search_of(out)[0] == search_of(straight)[0]
    assert summary["search"]["evaluations"] == search_of(straight)[1]["search"]["evaluations"]

"""Ray start-up faults (pruner/runs/workers.py): a malformed --ray-address is refused before any work, an
address nobody answers fails with one line and a ``failed`` summary within the deadline, a cancel while
the workers start is a ``cancelled`` summary, and the job queue moves on. Real Ray, loopback addresses only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import run_job
from pruner.runs.manager import JobManager, JobSpec
from pruner.runs.rundir import RunDir, Status
from pruner.runs.workers import RAY_CONNECT_TIMEOUT_ENV

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "127.0.0.1:1"   # loopback, a port nobody listens on


def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", strategy="random", search_evals=4, search_images=50,
                recal_images=32, report_images=50, latency_repeats=2, finetune=FinetuneConfig(epochs=0),
                export=False, device="cpu", seed=3)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def short_connect(monkeypatch):
    """A 2 s connect deadline instead of 15 s (also inherited by the manager's spawned jobs)."""
    monkeypatch.setenv(RAY_CONNECT_TIMEOUT_ENV, "2")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("address", ["💥:99", "127.0.0.1:0", "127.0.0.1:99999", "localhost", "ray://a b:1"])
def test_a_malformed_address_is_one_error_line_before_any_data_loads(tmp_path, address):
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "pruner", "prune", "--model", "resnet20", "--weights", "none",
                           "--data", "digits", "--device", "cpu", "--workers", "2", "--ray-address", address,
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=100,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--ray-address" in lines[0], proc.stderr
    assert not out.exists()                                  # refused before the run directory or data


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "ray://head-1.example:10001", "[::1]:6379", "auto"])
def test_the_forms_ray_joins_are_accepted(address):
    assert tiny(workers=1, ray_address=f" {address} ").ray_address == address


@pytest.mark.timeout(180)
def test_an_unreachable_address_fails_with_one_line_and_a_failed_summary(tmp_path, short_connect):
    out = tmp_path / "r"
    summary = run_job(tiny(workers=2, ray_address=UNREACHABLE), out)
    assert summary["status"] == Status.FAILED
    assert "nobody answers" in summary["error"] and UNREACHABLE in summary["error"]
    assert "\n" not in summary["error"]
    assert RunDir(out).summary()["status"] == Status.FAILED
    assert Status.STARTING_WORKERS in [e["status"] for e in RunDir(out).events("status")]


@pytest.mark.timeout(180)
def test_cancel_while_starting_workers_is_a_cancelled_summary(tmp_path):
    out = tmp_path / "r"

    def stop():   # the user cancels once the job says it is starting its workers
        return Status.STARTING_WORKERS in [e.get("status") for e in RunDir(out).events("status")]

    summary = run_job(tiny(workers=2, ray_address=UNREACHABLE), out, should_stop=stop)   # 15 s deadline
    assert summary["status"] == Status.CANCELLED, summary["error"]
    assert RunDir(out).summary()["status"] == Status.CANCELLED


@pytest.mark.timeout(400)
def test_the_queue_moves_on_after_a_job_that_cannot_reach_ray(tmp_path, short_connect):
    mgr = JobManager(max_parallel=1)
    try:
        a = mgr.submit(JobSpec("prune", tiny(workers=2, ray_address=UNREACHABLE).to_dict(), str(tmp_path / "a")))
        b = mgr.submit(JobSpec("prune", tiny().to_dict(), str(tmp_path / "b")))
        assert mgr.wait(a, timeout=300) and mgr.wait(b, timeout=300)
        first, second = RunDir(tmp_path / "a").summary(), RunDir(tmp_path / "b").summary()
        assert first["status"] == Status.FAILED and "nobody answers" in first["error"]
        assert second["status"] == Status.DONE, second["error"]
    finally:
        mgr.shutdown()

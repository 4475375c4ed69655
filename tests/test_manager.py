"""Background jobs: spawn-started processes, a queue (one at a time per device), file-based cancel."""

import time

from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.manager import JobManager, JobSpec, cancel_requested
from pruner.runs.rundir import RunDir, list_runs


def cfg(**kw):
    base = dict(model="resnet20", weights=None, data="digits", strategy="random", search_evals=3, search_images=60,
                recal_images=32, report_images=60, latency_repeats=3, finetune=FinetuneConfig(epochs=0), export=False)
    base.update(kw)
    return RunConfig(**base).to_dict()


def test_queue_runs_jobs_one_at_a_time_and_cancel(tmp_path):
    mgr = JobManager(max_parallel=1)
    try:
        a = mgr.submit(JobSpec("prune", cfg(), str(tmp_path / "a")))
        b = mgr.submit(JobSpec("prune", cfg(seed=1), str(tmp_path / "b")))
        c = mgr.submit(JobSpec("prune", cfg(search_evals=500, strategy="random"), str(tmp_path / "c")))
        # all three are visible at once (queued runs have a config and a status)
        assert {r.name for r in list_runs(tmp_path)} == {"a", "b", "c"}
        assert RunDir(tmp_path / "c").status() in ("queued", "started", "loading data")
        states = {mgr.state(a), mgr.state(b), mgr.state(c)}
        assert "queued" in states  # one device, one job at a time
        assert mgr.wait(a, timeout=300) and mgr.wait(b, timeout=300)
        assert RunDir(tmp_path / "a").summary()["status"] == "done"
        assert RunDir(tmp_path / "b").summary()["status"] == "done"
        # c is long: cancel it once it has produced candidates
        deadline = time.time() + 300
        while not RunDir(tmp_path / "c").events("candidate") and time.time() < deadline:
            time.sleep(0.5)
        mgr.cancel(c)
        assert cancel_requested(tmp_path / "c")
        assert mgr.wait(c, timeout=300)
        summary = RunDir(tmp_path / "c").summary()
        assert summary["status"] == "cancelled"
        assert summary["search"]["evaluations"] < 500
    finally:
        mgr.shutdown()


def test_cancel_before_start(tmp_path):
    mgr = JobManager(max_parallel=1)
    try:
        first = mgr.submit(JobSpec("prune", cfg(), str(tmp_path / "first")))
        second = mgr.submit(JobSpec("prune", cfg(), str(tmp_path / "second")))
        mgr.cancel(second)
        assert mgr.state(second) == "finished"
        assert RunDir(tmp_path / "second").summary()["status"] == "cancelled"
        assert mgr.wait(first, timeout=300)
    finally:
        mgr.shutdown()


def test_device_slots_follow_the_resolved_device():
    import torch

    from pruner.runs.manager import device_slot

    gpu = torch.cuda.device_count() > 0
    assert device_slot("auto") == device_slot(None) == ("cuda:0" if gpu else "cpu")
    assert device_slot("cuda") == device_slot("CUDA:0") == "cuda:0"
    assert device_slot("cpu") == "cpu" and device_slot("cuda:1") == "cuda:1"
    assert not torch.cuda.is_initialized()   # asking created no CUDA context in this (server) process


def test_auto_and_its_resolved_device_share_one_slot(tmp_path):
    """On this machine ``auto`` is the CPU: an ``auto`` job and a ``cpu`` job do not run side by side."""
    from pruner.runs.manager import device_slot

    explicit = "cuda" if device_slot("auto") != "cpu" else "cpu"
    mgr = JobManager(max_parallel=1)
    try:
        a = mgr.submit(JobSpec("prune", cfg(search_evals=2, device="auto"), str(tmp_path / "a")))
        b = mgr.submit(JobSpec("prune", cfg(search_evals=2, device=explicit), str(tmp_path / "b")))
        seen, deadline = set(), time.time() + 600
        while not (mgr.state(a) == "finished" and mgr.state(b) == "finished"):
            assert time.time() < deadline, seen
            seen.add((mgr.state(a), mgr.state(b)))
            time.sleep(0.05)
        assert ("running", "running") not in seen and ("running", "queued") in seen
        assert RunDir(tmp_path / "a").summary()["status"] == RunDir(tmp_path / "b").summary()["status"] == "done"
    finally:
        mgr.shutdown()


PAGE_LIKE_MAIN = '''
import json, os, sys
with open(sys.argv[2], "a") as fh:          # a page's top-level code: runs on every import
    fh.write(f"{os.getpid()}\\n")
if __name__ == "__main__":
    from pruner.runs.manager import JobManager, JobSpec
    mgr = JobManager()
    out = mgr.submit(JobSpec("prune", json.loads(sys.argv[1]), sys.argv[3]))
    assert mgr.wait(out, timeout=300)
    mgr.shutdown()
    print(os.getpid())
'''


def test_a_job_does_not_rerun_its_parents_main_module(tmp_path):
    """In the studio the parent's __main__ is a Streamlit page; the spawned job must not import it
    again (page code outside Streamlit: warnings in the server log, needless imports)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script, marker, out = tmp_path / "page.py", tmp_path / "imports.txt", tmp_path / "run"
    script.write_text(PAGE_LIKE_MAIN)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(script), json.dumps(cfg()), str(marker), str(out)], cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)}, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert RunDir(out).summary()["status"] == "done"
    assert marker.read_text().split() == [proc.stdout.split()[-1]]   # imported once: by the parent alone

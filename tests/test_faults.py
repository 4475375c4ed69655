"""Faults a long job meets, each caused for real: SIGKILL mid-search then resume, a killed server
whose job goes on, SIGTERM/SIGINT, a second writer, a run directory deleted under the supervisor,
torn and garbage event lines, and running out of memory (a real allocation failure under a
memory limit) followed by a resume with a smaller batch size."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import resume_job, run_job
from pruner.runs.manager import JobManager, JobSpec, request_cancel
from pruner.runs.rundir import RunDir, list_runs
from studio.events import RunView

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
JOB_TIMEOUT = 400   # seconds: one tiny job on a busy two-core machine


def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", strategy="random", search_evals=8, search_images=50,
                recal_images=32, report_images=50, latency_repeats=2, finetune=FinetuneConfig(epochs=0),
                export=False, device="cpu", seed=3)
    base.update(kw)
    return RunConfig(**base)


TINY_CLI = ["--model", "resnet20", "--weights", "none", "--data", "digits", "--device", "cpu", "--strategy", "random",
            "--search-images", "50", "--recal-images", "32", "--report-images", "50", "--no-export"]


def cli(*args, timeout=JOB_TIMEOUT, prefix=("-m", "pruner")):
    return subprocess.run([sys.executable, *prefix, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if line.startswith("error:")]


def wait_until(cond, timeout=JOB_TIMEOUT, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def candidates(path) -> list[tuple]:
    return [(e["candidate_id"], tuple(e["counts"]), e["top1"]) for e in RunDir(path).events("candidate")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def spawn_job_script(cfg: RunConfig, out: Path) -> subprocess.Popen:
    """A job in its own process (as the studio's children and the CLI are)."""
    code = ("import json, sys; from pruner.runs.config import RunConfig; from pruner.runs.job import run_job; "
            "run_job(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2])")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg.to_dict()), str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------- the event log
def test_event_log_skips_torn_garbage_and_non_object_lines(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.create(tiny().to_dict())
    rd.event("status", status="searching")
    with open(rd.events_path, "ab") as fh:
        fh.write(b'[1, 2, 3]\n42\n"text"\nnull\n\xff\xfe not utf-8 \x80\n{"kind": "candidate", "candidate_id": 0}\n')
        fh.write(b'{"kind": "candidate", "candidate_id": 1, "cou')      # torn: its writer died mid-line
    assert [e["kind"] for e in rd.iter_events()] == ["status", "candidate"]
    assert rd.status() == "searching"
    view = RunView(rd.path)
    view.refresh()
    assert view.count == 2 and view.status == "searching"

    rd.event("status", status="fine-tuning")   # a later writer (a resume) starts on a fresh line
    assert [e.get("status") for e in rd.events("status")] == ["searching", "fine-tuning"]
    assert rd.status() == "fine-tuning"
    view.refresh()
    assert view.status == "fine-tuning" and view.count == 3
    assert b'"cou\n{"kind": "status"' in rd.events_path.read_bytes()

    (rd.path / "summary.json").write_bytes(b"[1, 2]")     # a summary that is not an object reads as none
    assert rd.summary() is None and rd.status() == "fine-tuning"


def test_second_writer_is_refused_before_it_writes(tmp_path):
    out = tmp_path / "r"
    cancelled = run_job(tiny(search_evals=2), out, should_stop=lambda: True)
    assert cancelled["status"] == "cancelled"
    rd = RunDir(out)
    assert not rd.interrupted() and rd.holder() is None
    before = rd.events_path.read_bytes()
    with rd.lock():   # another process writes the run (the holder's pid, host and start time are in job.lock)
        assert rd.holder()["pid"] == os.getpid()
        res = cli("prune", "--resume", "--out", out, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        (line,) = error_lines(res.stderr)
        assert "being written by another job" in line and f"pid {os.getpid()}" in line
        mgr = JobManager()
        try:
            with pytest.raises(PrunerError, match="being written by another job"):
                mgr.submit(JobSpec("prune", rd.config(), str(out), resume=True))
        finally:
            mgr.shutdown()
    assert rd.events_path.read_bytes() == before and rd.summary()["status"] == "cancelled"


def test_resume_refuses_settings_that_change_the_search(tmp_path):
    out = tmp_path / "r"
    run_job(tiny(search_evals=2), out, should_stop=lambda: True)
    before = RunDir(out).events_path.read_bytes()
    res = cli("prune", "--resume", "--out", out, "--budget", "flops=0.3", timeout=120)
    assert res.returncode == 2, res.stderr
    (line,) = error_lines(res.stderr)
    assert "--budget cannot change when resuming" in line
    res = cli("prune", "--resume", "--out", out, "--set", "noise=0.5", timeout=120)
    assert res.returncode == 2 and "--set cannot change when resuming" in error_lines(res.stderr)[0]
    assert RunDir(out).events_path.read_bytes() == before


# ---------------------------------------------------------------------- killed jobs
def test_sigkill_mid_search_then_resume_loses_and_duplicates_no_candidate(tmp_path):
    # random search proposes 8 at a time and a CPU scores a batch at once, so candidates arrive in
    # bursts: enough evaluations that the kill lands before the last burst
    cfg = tiny(search_evals=40)
    straight = run_job(cfg, tmp_path / "straight")
    assert straight["status"] == "done", straight["error"]

    out = tmp_path / "killed"
    proc = spawn_job_script(cfg, out)
    try:
        wait_until(lambda: len(RunDir(out).events("candidate")) >= 2, what="two candidates")
        assert RunDir(out).holder()["pid"] == proc.pid and not RunDir(out).interrupted()
    finally:
        proc.kill()
        proc.wait()
    rd = RunDir(out)
    assert rd.summary() is None and rd.interrupted()      # at once: the kernel dropped the dead job's lock
    killed_at = len(rd.events("candidate"))
    assert killed_at < 40
    with open(rd.events_path, "ab") as fh:                # as if it died in the middle of writing a line
        fh.write(b'{"kind": "candidate", "candidate_id": ' + str(killed_at).encode() + b', "counts": [1')

    resumed = resume_job(out)
    assert resumed["status"] == "done", resumed["error"]
    assert candidates(out) == candidates(tmp_path / "straight")        # same ids, structures and scores, in order
    assert resumed["search"]["evaluations"] == straight["search"]["evaluations"]
    assert resumed["pruned"]["macs"] == straight["pruned"]["macs"]
    assert not rd.interrupted() and rd.holder() is None


SERVER = textwrap.dedent("""
    import json, sys, time
    from pruner.runs.manager import JobManager, JobSpec
    from pruner.runs.rundir import RunDir
    if __name__ == "__main__":
        cfg, out = json.loads(sys.argv[1]), sys.argv[2]
        mgr = JobManager()
        mgr.submit(JobSpec("prune", cfg, out))
        while not RunDir(out).events("candidate"):
            time.sleep(0.2)
        print("running", flush=True)
        time.sleep(3600)
""")


def test_sigkill_of_the_server_leaves_its_job_running_and_visible(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    out = tmp_path / "runs" / "a"
    server = subprocess.Popen([sys.executable, str(script), json.dumps(tiny(search_evals=100_000).to_dict()), str(out)],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    child = None
    try:
        assert server.stdout.readline().strip() == "running"
        rd = RunDir(out)
        child = rd.holder()["pid"]
        assert child != server.pid            # the spawned job holds the run's lock, not the server
        server.kill()
        server.wait()
        assert alive(child) and not rd.interrupted()
        # a restarted server: lists the run, sees it going on, refuses to write it too
        assert [r.name for r in list_runs(out.parent)] == ["a"]
        mgr = JobManager()
        try:
            with pytest.raises(PrunerError, match=f"pid {child}"):
                mgr.submit(JobSpec("prune", rd.config(), str(out), resume=True))
        finally:
            mgr.shutdown()
        # the orphan still obeys the run's cancel file and writes its summary (a job that outlives
        # every check above, whatever the machine's speed: it has far more evaluations than it can use)
        request_cancel(out)
        summary = wait_until(lambda: rd.summary(), what="the orphaned job's summary")
        assert summary["status"] == "cancelled", summary.get("error")
        assert summary["search"]["evaluations"] >= 1
        wait_until(lambda: not alive(child) or rd.holder() is None, timeout=60, what="the job to exit")
        assert rd.holder() is None and rd.status() == "cancelled" and not rd.interrupted()
    finally:
        if server.poll() is None:
            server.kill()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


def test_sigterm_to_a_cli_run_writes_a_cancelled_summary(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "pruner", "prune", *TINY_CLI, "--search-evals", "200",
                             "--out", str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: RunDir(out).events("candidate"), what="a candidate")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert "cancelled" in line and "SIGTERM" in line
    summary = RunDir(out).summary()
    assert summary["status"] == "cancelled" and "SIGTERM" in summary["error"]
    assert summary["search"]["evaluations"] >= 1
    assert RunDir(out).events("status")[-1]["status"] == "cancelled"


def test_sigint_to_a_spawned_job_writes_a_cancelled_summary(tmp_path):
    mgr = JobManager()
    try:
        out = mgr.submit(JobSpec("prune", tiny(search_evals=200).to_dict(), str(tmp_path / "r")))
        rd = RunDir(out)
        wait_until(lambda: rd.events("candidate"), what="a candidate")
        os.kill(rd.holder()["pid"], signal.SIGINT)
        assert mgr.wait(out, timeout=120)
        summary = rd.summary()
        assert summary["status"] == "cancelled" and "SIGINT" in summary["error"], summary
        assert mgr.error(out) is None          # the job wrote its own summary
    finally:
        mgr.shutdown()


def delete_while_written(path, timeout=60):
    """`rm -rf` of a directory a live job is writing into: one pass can race the job's next
    file (ENOTEMPTY), so delete until it is gone, as a user repeating the command would."""
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} kept reappearing"
        shutil.rmtree(path, ignore_errors=True)


def test_a_run_directory_deleted_under_the_supervisor_does_not_stall_the_queue(tmp_path):
    mgr = JobManager(max_parallel=1)
    try:
        doomed = mgr.submit(JobSpec("prune", tiny(search_evals=500).to_dict(), str(tmp_path / "doomed")))
        unstartable = mgr.submit(JobSpec("prune", tiny().to_dict(), str(tmp_path / "unstartable"),
                                         options={"not picklable": lambda: None}))
        later = mgr.submit(JobSpec("prune", tiny(search_evals=2).to_dict(), str(tmp_path / "later")))
        wait_until(lambda: RunDir(doomed).events("candidate"), what="a candidate")
        delete_while_written(doomed)           # the job's writes now fail and its process dies
        assert mgr.wait(later, timeout=JOB_TIMEOUT), "the queue stalled"
        assert RunDir(later).summary()["status"] == "done"
        assert mgr.state(doomed) == "finished" and "exited with code" in mgr.error(doomed)
        # a job whose process could not start: its run says why, and the queue went on
        summary = RunDir(unstartable).summary()
        assert summary["status"] == "failed" and "could not start the job" in summary["error"]
        assert "\n" not in summary["error"]
        assert mgr._thread.is_alive()
    finally:
        mgr.shutdown()


# ---------------------------------------------------------------------- out of memory
LIMITED = textwrap.dedent("""
    # The CLI under an address-space limit: allocations past it fail for real, as on a smaller machine.
    import resource, sys
    import sklearn.datasets, torch, pruner.runs.job
    from pruner.cli import main
    vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
    limit = vm + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.exit(main(sys.argv[2:]))
""")


def test_out_of_memory_is_a_one_line_failure_and_a_resume_may_lower_the_batch_size(tmp_path):
    script = tmp_path / "limited.py"
    script.write_text(LIMITED)
    out = tmp_path / "r"
    # fine-tuning ResNet-20 on a batch of 1024 needs a few GB of activations; a batch of 16 needs ~50 MB
    args = ["prune", *TINY_CLI, "--search-evals", "3", "--finetune-epochs", "1", "--max-batches-per-epoch", "2",
            "--out", out]
    # float32 (PRUNER_BF16=0): bf16 autocast, the default on CPUs with native bf16, halves the activations
    env = {**ENV, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "PRUNER_BF16": "0"}
    run = lambda *a: subprocess.run([sys.executable, str(script), "1200", *map(str, a)], capture_output=True,  # noqa
                                    text=True, cwd=ROOT, env=env, timeout=JOB_TIMEOUT)
    res = run(*args, "--batch-size", "1024")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = error_lines(res.stderr)
    assert "out of memory" in line and "while fine-tuning with batch size 1024" in line
    assert "--resume" in line and "--batch-size 512" in line
    rd = RunDir(out)
    summary = rd.summary()
    assert summary["status"] == "failed" and summary["error"] in line and "\n" not in summary["error"]

    res = run("prune", "--resume", "--out", out, "--batch-size", "16")
    assert res.returncode == 0, res.stderr
    summary = rd.summary()
    assert summary["status"] == "done"
    assert summary["overrides"] == {"finetune.batch_size": [1024, 16]}
    assert rd.config()["finetune"]["batch_size"] == 16                 # a later resume keeps it
    assert json.loads((rd.state_dir / "overrides.json").read_text())["resumes"][0]["changes"] == \
        {"finetune.batch_size": [1024, 16]}
    assert rd.events("status")[-1]["status"] == "done"
    assert [e for e in rd.events("status") if e.get("overrides")][0]["overrides"] == {"finetune.batch_size": [1024, 16]}
    assert summary["search"]["evaluations"] == 3                       # the search was replayed, not redone
    assert len(rd.events("epoch")) == 1


def test_cuda_out_of_memory_names_the_gpu():
    """No GPU here: the class and the text torch's CUDA allocator raises, formatted as a job would."""
    import torch

    from pruner.runs.job import _oom_message, _out_of_memory

    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB")
    assert _out_of_memory(exc) and not _out_of_memory(RuntimeError("shape mismatch"))
    msg = _oom_message(exc, "fine-tuning", tiny(finetune=FinetuneConfig(epochs=1, batch_size=256)), "runs/a")
    assert msg.startswith("out of memory on the GPU while fine-tuning with batch size 256")
    assert "--resume --out runs/a --batch-size 128" in msg and "\n" not in msg


def test_onednn_allocation_failure_is_out_of_memory():
    """PyTorch's CPU kernels raise this generic text when a large batch's buffers cannot be allocated (seen in CI
    under the address-space limit above): it gets the same one-line advice, naming what was raised."""
    from pruner.runs.job import _oom_message, _out_of_memory

    exc = RuntimeError("could not create a primitive")
    assert _out_of_memory(exc)
    msg = _oom_message(exc, "fine-tuning", tiny(finetune=FinetuneConfig(epochs=1, batch_size=1024)), "runs/a")
    assert msg.startswith("out of memory on the machine (RAM), as oneDNN's 'could not create a primitive' while "
                          "fine-tuning with batch size 1024")
    assert "--batch-size 512" in msg and "\n" not in msg


# ---------------------------------------------------------------------- the studio after a resume
def test_live_page_follows_a_resumed_run_and_resume_may_lower_the_batch_size(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from studio import state

    root = tmp_path / "runs"
    monkeypatch.setenv("PRUNER_RUNS_DIR", str(root))
    st.cache_resource.clear()
    st.cache_data.clear()
    calls = []
    cancelled = run_job(tiny(search_evals=4, finetune=FinetuneConfig(epochs=1, max_batches_per_epoch=1)),
                        root / "r", should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert cancelled["status"] == "cancelled"
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.switch_page("pages/runs.py").run()
        assert not at.exception
        assert any("cancelled" in str(w.value) for w in at.warning)
        at.number_input(key="runs_resume_bs").set_value(32)
        at.button(key="runs_resume").click().run()
        assert not at.exception and [t.value for t in at.title] == ["Live run"]
        at.switch_page("pages/live_run.py").run()
        assert not at.exception
        status = {m.label: m.value for m in at.metric}["Status"]
        assert status not in ("done", "failed", "cancelled")     # followed as going on, not as the old summary
        assert not any("Interrupted" in str(w.value) for w in at.warning)
        rd = RunDir(root / "r")
        summary = wait_until(lambda: (rd.summary() or {}).get("status") in ("done", "failed") and rd.summary(),
                             what="the resumed run's summary")
        assert summary["status"] == "done", summary.get("error")
        assert summary["overrides"] == {"finetune.batch_size": [128, 32]}
        assert summary["search"]["evaluations"] == 4
    finally:
        state._shared().manager.shutdown(cancel=True)
        st.cache_resource.clear()
        st.cache_data.clear()

"""Background jobs: a queue of runs, each in a spawn-started child process.

The studio (and anything else long-lived) submits :class:`JobSpec`s to a
:class:`JobManager`. A supervisor thread starts queued jobs, at most ``max_parallel``
per device, each in its own *spawned* process (CUDA does not survive ``fork``, and a
CUDA error or out-of-memory in a child cannot take the web server down). Progress is
never passed through the manager: the child writes the run directory, which every reader
(any browser tab, a later server) follows.

Cancel is a file, ``<run>/cancel.request``, checked by the job between candidate
evaluations and fine-tuning batches, so it works from any process and survives restarts.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .rundir import RunDir

CANCEL_FILE = "cancel.request"


def cancel_requested(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CANCEL_FILE).exists()


def request_cancel(run_dir: str | Path) -> None:
    """Ask the job writing ``run_dir`` to stop (it stops within one evaluation)."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / CANCEL_FILE).touch()


@dataclass
class JobSpec:
    kind: str                      # "prune" or "sensitivity"
    config: dict                   # RunConfig.to_dict()
    out: str
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)   # e.g. sensitivity ratios


def _child(spec: JobSpec) -> None:
    """Entry point of the spawned process."""
    from .job import run_job, run_sensitivity

    stop = lambda: cancel_requested(spec.out)  # noqa: E731
    if spec.kind == "sensitivity":
        run_sensitivity(RunConfig.from_dict(spec.config), spec.out, ratios=spec.options.get("ratios"), should_stop=stop)
    else:
        run_job(RunConfig.from_dict(spec.config), spec.out, resume=spec.resume, should_stop=stop)


@dataclass
class Job:
    spec: JobSpec
    device: str
    state: str = "queued"          # queued, running, finished
    process: Any = None
    submitted: float = field(default_factory=time.time)
    exitcode: int | None = None


class JobManager:
    """Queue of background runs; thread-safe; one supervisor thread."""

    def __init__(self, max_parallel: int = 1, poll: float = 0.2):
        self.max_parallel = max_parallel
        self.poll = poll
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ctx = mp.get_context("spawn")
        self._thread = threading.Thread(target=self._supervise, name="pruner-jobs", daemon=True)
        self._stopping = False
        self._thread.start()

    def submit(self, spec: JobSpec) -> str:
        """Queue a job; returns its run directory (the job's id)."""
        key = str(Path(spec.out).resolve())
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state != "finished":
                return key
            device = str(spec.config.get("device", "auto"))
            self._jobs[key] = Job(spec, device)
            if not spec.resume:
                # make the run visible immediately, before its process starts
                RunDir(spec.out).mark_queued({**spec.config, **({"analysis": spec.kind} if spec.kind != "prune" else {})})
        return key

    def cancel(self, run_dir: str | Path) -> None:
        key = str(Path(run_dir).resolve())
        request_cancel(run_dir)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state == "queued":
                job.state = "finished"
                rd = RunDir(run_dir)
                rd.event("status", status="cancelled", error="cancelled before it started")
                rd.write_summary({"status": "cancelled", "error": "cancelled before it started"})

    def state(self, run_dir: str | Path) -> str | None:
        with self._lock:
            job = self._jobs.get(str(Path(run_dir).resolve()))
            return None if job is None else job.state

    def jobs(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(k, j.state) for k, j in self._jobs.items()]

    def active(self) -> int:
        with self._lock:
            return sum(j.state in ("queued", "running") for j in self._jobs.values())

    def wait(self, run_dir: str | Path, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.time() + timeout
        while end is None or time.time() < end:
            if self.state(run_dir) in (None, "finished"):
                return True
            time.sleep(self.poll)
        return False

    def shutdown(self, cancel: bool = True) -> None:
        self._stopping = True
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            if cancel and j.state in ("queued", "running"):
                request_cancel(j.spec.out)
        for j in jobs:
            if j.process is not None:
                j.process.join(timeout=30)
                if j.process.is_alive():
                    j.process.terminate()

    # ------------------------------------------------------------------ supervisor
    def _supervise(self) -> None:
        while not self._stopping:
            with self._lock:
                for job in self._jobs.values():
                    if job.state == "running" and not job.process.is_alive():
                        job.process.join()
                        job.exitcode = job.process.exitcode
                        job.state = "finished"
                        rd = RunDir(job.spec.out)
                        if rd.summary() is None:  # the child died without writing its summary
                            msg = f"the job process exited with code {job.exitcode} (out of memory or killed?); " \
                                  "resume it from the Runs page or with `python -m pruner prune --resume`"
                            rd.event("status", status="failed", error=msg)
                            rd.write_summary({"status": "failed", "error": msg})
                running: dict[str, int] = {}
                for job in self._jobs.values():
                    if job.state == "running":
                        running[job.device] = running.get(job.device, 0) + 1
                for job in sorted(self._jobs.values(), key=lambda j: j.submitted):
                    if job.state == "queued" and running.get(job.device, 0) < self.max_parallel:
                        job.process = self._ctx.Process(target=_child, args=(job.spec,), daemon=False)
                        job.process.start()
                        job.state = "running"
                        running[job.device] = running.get(job.device, 0) + 1
            time.sleep(self.poll)

"""Background jobs: a queue of runs, each in a spawn-started child process.

The studio (and anything else long-lived) submits :class:`JobSpec`s to a
:class:`JobManager`. A supervisor thread starts queued jobs, at most ``max_parallel``
per device, each in its own *spawned* process (CUDA does not survive ``fork``, and a
CUDA error or out-of-memory in a child cannot take the web server down). Progress is
never passed through the manager: the child writes the run directory, which every reader
(any browser tab, a later server) follows.

Devices are slots keyed on the device a job will really use (:func:`device_slot`): ``auto``
and ``cuda`` share the GPU's slot on a GPU machine, ``auto`` is ``cpu`` elsewhere.

Each job holds its run's lock (``job.lock``, see :mod:`pruner.runs.rundir`): the manager
takes it at :meth:`JobManager.submit` (so a run already being written, e.g. by a CLI
``--resume``, is refused at once) and hands the same open file to the child, so a run is
locked from the moment it is queued until its process ends, however it ends.

The supervisor survives any exception: a failure while handling one job is written into
that run when possible (a ``failed`` summary with a one-line error) and the queue goes on.

Cancel is a file, ``<run>/cancel.request``, checked by the job between candidate
evaluations and fine-tuning batches, so it works from any process and survives restarts.

Besides the run kinds (a pruning run, a sensitivity analysis: each job writes a new run), one
job kind works on a run that is already done: :data:`QUANTIZE`, INT8 for a finished pruning run
(:func:`pruner.runs.job.quantize_finished_run`). It is refused at submit unless the run is done
with an exported ONNX model (and the calibration images fit its fine-tune split), runs on the
CPU's slot, is not cancellable (it takes seconds, and a done run gets no cancel request), and
however it ends leaves the run done: a failure, its process's death included, is the summary's
``quantized.error`` (:func:`pruner.runs.job.record_quantize_failure`), never a ``failed`` run.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import shutil
import signal
import sys
import threading
import time
import traceback
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrunerError
from .config import RunConfig
from .rundir import CONFIG_FILE, PRUNE, SENSITIVITY, Event, JobState, RunDir, RunLock, Status, config_with_kind
#: The job kind of INT8 quantization of a finished pruning run (the other jobs' kinds are run kinds).
QUANTIZE = "quantize"


def cancel_requested(run_dir: str | Path) -> bool:
    return RunDir(run_dir).cancel_path.exists()


def request_cancel(run_dir: str | Path) -> None:
    """Ask the job writing ``run_dir`` to stop (it stops within one evaluation)."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    run.cancel_path.touch()


@dataclass
class JobSpec:
    kind: str                      # a run kind (rundir.PRUNE, rundir.SENSITIVITY), or QUANTIZE
    config: dict                   # RunConfig.to_dict() (QUANTIZE: unused, the run's config.json is read)
    out: str
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)   # sensitivity ratios, QUANTIZE's calibration_images


@functools.lru_cache(maxsize=1)
def _gpu_count() -> int:
    import torch

    # device_count asks NVML when it can and never creates a CUDA context in this process
    return torch.cuda.device_count()


def device_slot(device: str | None) -> str:
    """The device a job asking for ``device`` will run on, as a slot name: ``auto`` is ``cuda:0``
    when a GPU is visible and ``cpu`` otherwise, ``cuda`` is ``cuda:0`` (the semantics of
    :func:`pruner.settings.resolve_device`). Names the job will refuse keep their own slot."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda:0" if _gpu_count() > 0 else "cpu"
    if name == "cuda":
        return "cuda:0"
    return name


def _child(spec: JobSpec, lock: RunLock | None = None) -> None:
    """Entry point of the spawned process (``lock``: the run's lock, handed over by the manager)."""
    from .job import resume_job, run_job, run_sensitivity

    if spec.kind == QUANTIZE:
        _quantize_child(spec, lock)
        return
    stop = lambda: cancel_requested(spec.out)  # noqa: E731
    try:
        if spec.kind == SENSITIVITY:
            run_sensitivity(RunConfig.from_dict(spec.config), spec.out, ratios=spec.options.get("ratios"),
                            should_stop=stop, lock=lock)
        elif spec.resume:   # the run's stored config (spec.config is not used)
            resume_job(spec.out, overrides=spec.options.get("overrides"), should_stop=stop, lock=lock)
        else:
            run_job(RunConfig.from_dict(spec.config), spec.out, should_stop=stop, lock=lock)
    except PrunerError as exc:   # refused before writing anything: record it unless another writer has the run
        print(f"error: {exc}", file=sys.stderr)
        record_failure(spec.out, str(exc))
        sys.exit(2)


_RECORDED = 2   # a quantize child's exit code once it wrote its failure into the summary


def _quantize_child(spec: JobSpec, lock: RunLock | None) -> None:
    """A :data:`QUANTIZE` job: whatever goes wrong ends as the summary's ``quantized.error`` (exit 2)."""
    from .job import quantize_finished_run, record_quantize_failure

    try:
        quantize_finished_run(spec.out, calibration_images=spec.options.get("calibration_images"), lock=lock)
    except Exception as exc:  # noqa: BLE001 - a refusal, or a bug: one line in the summary, the run stays done
        message = str(exc) if isinstance(exc, PrunerError) else f"internal error: {type(exc).__name__}: {exc}"
        if not isinstance(exc, PrunerError):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        record_quantize_failure(spec.out, message, lock if lock is not None and lock.held() else None)
        sys.exit(_RECORDED)


def record_failure(run_dir: str | Path, message: str, lock: RunLock | None = None, status: str = Status.FAILED) -> bool:
    """Write a ``failed`` (or ``status``) status and summary into a run nobody else is writing (with
    ``lock`` when the caller holds it). False when the run directory is gone, another process
    writes it, or writing fails; never raises."""
    rd = RunDir(run_dir)
    try:
        if not rd.config_path.exists():
            return False
        with RunLock.holding(rd.lock_path, lock, retry_s=0.5):
            rd.event(Event.STATUS, status=status, error=message)
            rd.write_summary({"status": status, "error": message})
        return True
    except Exception:  # noqa: BLE001 - a missing directory, a live writer: nothing to record
        return False


def _exit_message(exitcode: int | None, *, quantize: bool = False) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    if quantize:
        return (f"the INT8 quantization process {how} before writing its result (out of memory or killed?); the "
                "fp32 model is unchanged: quantize again from the Runs page or with `python -m pruner quantize --run DIR`")
    return (f"the job process {how} before writing its summary (out of memory or killed?); resume it from the Runs "
            "page or with `python -m pruner prune --resume --out DIR`")


@contextmanager
def _bare_main():
    """Start a spawned child with a bare ``__main__``.

    A spawned process re-imports its parent's main module (by its ``__file__``). In the studio
    that is the Streamlit page being run (Streamlit executes each page as ``__main__``), so the
    job would re-run page code outside Streamlit (warnings in the server log, widget calls that
    do nothing, imports it does not need). The job needs only this package; only the supervisor
    thread starts processes, and the swap lasts for the start alone.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


@dataclass
class Job:
    spec: JobSpec
    device: str                    # the device slot (see device_slot)
    state: str = JobState.QUEUED   # JobState: queued, running, finished
    process: Any = None
    submitted: float = field(default_factory=time.time)
    exitcode: int | None = None
    lock: RunLock | None = None    # held while queued; handed to the child when it starts
    error: str | None = None       # what went wrong when the manager had to end the job itself


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
        """Queue a job; returns its run directory (the job's id). A PrunerError (one line) when the
        run is being written by another process, holds a finished run, or the resume is not allowed."""
        key = str(Path(spec.out).resolve())
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state != JobState.FINISHED:
                if spec.kind == QUANTIZE and job.spec.kind != QUANTIZE:
                    raise PrunerError(f"the job of {Path(spec.out).name} is still exiting; quantize it in a moment")
                return key
            rd = RunDir(spec.out)
            if spec.kind == QUANTIZE:
                self._check_quantize(rd, spec)
            elif spec.resume:
                self._check_resume(rd, spec)
            else:
                rd.check_new()
            created = not rd.path.exists()
            lock: RunLock | None = None
            try:
                lock = rd.lock()   # refuses a second writer
                if spec.kind == QUANTIZE:
                    pass   # a done run: its records stay as they are until the job writes its INT8 section
                elif spec.resume:
                    # visible at once as going on again (the Live page polls), and not stopped by an old cancel
                    rd.cancel_path.unlink(missing_ok=True)
                    rd.summary_path.unlink(missing_ok=True)
                    rd.event(Event.STATUS, status=Status.QUEUED, resume=True)
                else:
                    # make the run visible immediately, before its process starts
                    rd.mark_queued(config_with_kind(spec.config, spec.kind))
            except BaseException as exc:
                if lock is not None:
                    lock.release()
                if created:   # leave nothing behind (a directory holding only job.lock would block the name)
                    shutil.rmtree(rd.path, ignore_errors=True)
                if isinstance(exc, OSError):
                    raise PrunerError(f"could not create the run directory {rd.path} ({exc.strerror or exc}): free "
                                      "space on that disk or check the folder's permissions, then start it again") from None
                raise
            slot = "cpu" if spec.kind == QUANTIZE else device_slot(spec.config.get("device"))   # ONNX Runtime, CPU
            self._jobs[key] = Job(spec, slot, lock=lock)
        return key

    @staticmethod
    def _check_quantize(rd: RunDir, spec: JobSpec) -> None:
        """A done pruning run with an exported ONNX model, and calibration images its fine-tune split holds."""
        from ..quantize import check_calibration_images
        from .job import check_quantizable

        summary, _ = check_quantizable(rd)
        images = spec.options.get("calibration_images")
        fit = ((summary.get("data") or {}).get("sizes") or {}).get("fit")
        if images is not None and isinstance(fit, int):
            check_calibration_images(images, fit)

    @staticmethod
    def _check_resume(rd: RunDir, spec: JobSpec) -> None:
        stored = rd.config()
        if stored is None:
            raise PrunerError(f"nothing to resume in {rd.path}: it has no readable {CONFIG_FILE}")
        if spec.kind != PRUNE:
            raise PrunerError("only pruning runs can be resumed; start the analysis again")
        if (rd.summary() or {}).get("status") == Status.DONE:
            raise PrunerError(f"{rd.name} is already done; there is nothing to resume")
        from .job import apply_resume_overrides

        apply_resume_overrides(stored, spec.options.get("overrides"))   # refuses what a resume may not change

    def cancel(self, run_dir: str | Path) -> None:
        key = str(Path(run_dir).resolve())
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.spec.kind == QUANTIZE:   # not cancellable once running; a done run stays done
                if job.state == JobState.QUEUED:
                    job.state = JobState.FINISHED
                    if job.lock is not None:
                        job.lock.release()
                        job.lock = None
                return
        try:
            request_cancel(run_dir)
        except OSError:
            pass
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state == JobState.QUEUED:
                job.state = JobState.FINISHED
                try:
                    rd = RunDir(run_dir)
                    rd.event(Event.STATUS, status=Status.CANCELLED, error="cancelled before it started")
                    rd.write_summary({"status": Status.CANCELLED, "error": "cancelled before it started"})
                except OSError:
                    pass
                finally:
                    if job.lock is not None:
                        job.lock.release()

    def state(self, run_dir: str | Path) -> str | None:
        with self._lock:
            job = self._jobs.get(str(Path(run_dir).resolve()))
            return None if job is None else job.state

    def kind(self, run_dir: str | Path) -> str | None:
        """The kind of this run's latest job here (a run kind, or :data:`QUANTIZE`), None when there is none."""
        with self._lock:
            job = self._jobs.get(str(Path(run_dir).resolve()))
            return None if job is None else job.spec.kind

    def error(self, run_dir: str | Path) -> str | None:
        """Why the manager ended this job itself (e.g. its process could not start), if it did."""
        with self._lock:
            job = self._jobs.get(str(Path(run_dir).resolve()))
            return None if job is None else job.error

    def jobs(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(k, j.state) for k, j in self._jobs.items()]

    def active(self) -> int:
        with self._lock:
            return sum(j.state in JobState.GOING_ON for j in self._jobs.values())

    def wait(self, run_dir: str | Path, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.time() + timeout
        while end is None or time.time() < end:
            if self.state(run_dir) in (None, JobState.FINISHED):
                return True
            time.sleep(self.poll)
        return False

    def shutdown(self, cancel: bool = True) -> None:
        self._stopping = True
        self._thread.join(timeout=10)
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            if j.state == JobState.QUEUED:
                if cancel:
                    self.cancel(j.spec.out)
                elif j.lock is not None:
                    j.lock.release()   # it will not run here: let it show as interrupted
            elif cancel and j.state == JobState.RUNNING and j.spec.kind != QUANTIZE:
                request_cancel(j.spec.out)
        for j in jobs:
            if j.process is not None:
                j.process.join(timeout=30)
                if j.process.is_alive():
                    j.process.terminate()   # SIGTERM: the job writes a cancelled summary
                    j.process.join(timeout=30)

    # ------------------------------------------------------------------ supervisor
    def _supervise(self) -> None:
        while not self._stopping:
            try:
                with self._lock:
                    self._tick()
            except Exception:  # noqa: BLE001 - the queue must go on whatever one pass hit
                traceback.print_exc()
            time.sleep(self.poll)

    def _tick(self) -> None:
        for job in list(self._jobs.values()):
            if job.state == JobState.RUNNING:
                try:
                    self._reap(job)
                except Exception as exc:  # noqa: BLE001
                    self._end(job, f"the job manager lost track of this job ({type(exc).__name__}: {exc}); "
                                   "resume it from the Runs page")
        running: dict[str, int] = {}
        for job in self._jobs.values():
            if job.state == JobState.RUNNING:
                running[job.device] = running.get(job.device, 0) + 1
        for job in sorted(self._jobs.values(), key=lambda j: j.submitted):
            if self._stopping:
                return
            if job.state == JobState.QUEUED and running.get(job.device, 0) < self.max_parallel:
                try:
                    self._start(job)
                except Exception as exc:  # noqa: BLE001
                    self._end(job, f"could not start the job ({type(exc).__name__}: {exc})")
                else:
                    running[job.device] = running.get(job.device, 0) + 1

    def _start(self, job: Job) -> None:
        process = self._ctx.Process(target=_child, args=(job.spec, job.lock), daemon=False)
        with _bare_main():
            process.start()      # the child receives a duplicate of the locked file
        job.process = process
        job.state = JobState.RUNNING
        if job.lock is not None:
            job.lock.hand_over()
            job.lock = None

    def _reap(self, job: Job) -> None:
        if job.process.is_alive():
            return
        job.process.join()
        job.exitcode = job.process.exitcode
        job.state = JobState.FINISHED
        if job.spec.kind == QUANTIZE:
            if job.exitcode not in (0, _RECORDED):   # it died before it could write its INT8 section
                self._end(job, _exit_message(job.exitcode, quantize=True))
        elif RunDir(job.spec.out).summary() is None:  # the child died without writing its summary
            if job.exitcode in (-signal.SIGTERM, -signal.SIGINT):   # stopped before the job could take it
                self._end(job, f"cancelled by {signal.Signals(-job.exitcode).name} before the job started working",
                          status=Status.CANCELLED)
            else:
                self._end(job, _exit_message(job.exitcode))

    def _end(self, job: Job, message: str, status: str = Status.FAILED) -> None:
        """Finish ``job`` with a failure, recorded into its run when that is possible."""
        job.state = JobState.FINISHED
        job.error = message
        lock, job.lock = job.lock, None
        try:
            if job.spec.kind == QUANTIZE:   # the run stays done; the failure is its INT8 section's
                from .job import record_quantize_failure

                record_quantize_failure(job.spec.out, message, lock)
            else:
                record_failure(job.spec.out, message, lock, status=status)
        finally:
            if lock is not None:
                lock.release()

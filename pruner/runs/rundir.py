"""The run directory: the one record of a run that the CLI writes and the page reads.

Layout::

    <run>/config.json     resolved settings (written at start)
    <run>/events.jsonl    one JSON object per line, appended and flushed as the run goes
    <run>/summary.json    written atomically at the end (status done / failed / cancelled)
    <run>/job.lock        the writer's lock (fcntl.flock) and who holds it: pid, host, start time
    <run>/cancel.request  present when someone asked the job to stop
    <run>/notes.json      the studio's tags and note (studio/notes.py; the engine never reads it)
    <run>/state/          resumable state (search steps, fine-tune epochs, a resume's overrides)
    <run>/artifacts/      model.onnx, pruned.pt2, checkpoint.pt, candidates.csv

Every event has ``kind`` (status, candidate, step, epoch, log, ...) and ``time`` (Unix
seconds). A resumed search's replay does not write again the events its earlier attempts
recorded (:class:`ReplayEmitter`), so each update of a search is in the log once. Readers skip
what is not a whole JSON object on one line (a half-written last
line, bytes that are not UTF-8, a JSON array or number); a writer that finds a torn last
line starts its first event on a fresh line.

One writer at a time: whoever is responsible for a run (the job process, or a server's
JobManager while the job waits in its queue) holds an exclusive ``flock`` on ``job.lock``.
The kernel drops the lock when the holder dies, however it dies, so a run that is not
final and whose lock is free was interrupted (:meth:`RunDir.interrupted`), and a second
writer is refused (:meth:`RunDir.lock`).

This module is the whole contract between the engine and its readers (CLI, studio, bench):
the status values a job writes (:class:`Status`, in the order a run passes them), the event
kinds (:class:`Event`), the run kinds (:data:`KINDS`, :meth:`RunDir.kind`), the chosen
candidate (:meth:`RunDir.chosen_candidate`), the artifacts (:meth:`RunDir.artifact`), every file
name in a run directory, a job manager's job states (:class:`JobState`) and what a page calls a
run's liveness (:class:`Liveness`). Nobody else spells these strings or paths
(``tests/test_house.py`` checks the file names).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..atomic import write_bytes_atomic
from ..errors import PrunerError

CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
QUEUED_MARKER = ".queued"
#: archived runs: ``<runs root>/.archive/<name>`` (out of every listing, kept on disk; move one back to restore it)
ARCHIVE_DIR = ".archive"
LOCK_FILE = "job.lock"
CANCEL_FILE = "cancel.request"     # present when someone asked the job to stop
NOTES_FILE = "notes.json"          # the studio's tags and note on the run (studio/notes.py; the engine never reads it)
STATE_DIR = "state"
ARTIFACTS_DIR = "artifacts"
LOCK_RETRY_S = 2.0      # a reader's probe holds the lock for microseconds; a writer retries this long
SEARCH_STATE = "search.json"       # state/search.json: the finished search (the chosen structure)
BASE_STATE = "base.json"           # state/base.json: the unpruned model's report
OVERRIDES_STATE = "overrides.json"   # state/overrides.json: each resume's changed settings
FINETUNE_STATE = "finetune"        # state/finetune/: the fine-tuning's epoch checkpoints
SENSITIVITY_RESULT = "sensitivity.json"
#: The artifacts a finished pruning run leaves in ``<run>/artifacts/`` (summary key -> file name).
ARTIFACTS = {"onnx": "model.onnx", "program": "pruned.pt2", "checkpoint": "checkpoint.pt",
             "candidates": "candidates.csv", "int8": "model.int8.onnx"}


class Status:
    """The ``status`` values of status events (and ``done``/``failed``/``cancelled`` of the summary)."""

    QUEUED = "queued"
    STARTED = "started"
    LOADING_DATA = "loading data"
    LOADING_MODEL = "loading model"
    ANALYSING_GRAPH = "analysing dependency graph"
    MEASURING_BASE = "measuring base model"
    STARTING_WORKERS = "starting workers"
    SEARCHING = "searching"
    SEARCH_DONE = "search done"
    FINE_TUNING = "fine-tuning"
    EXPORTING = "exporting"
    REPORTING = "evaluating on the report split"
    QUANTIZING = "quantizing to INT8"
    ANALYSING_SENSITIVITY = "analysing sensitivity"
    RUNNING = "running"          # a summary's status while it is being built (never written as final)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DAMAGED = "damaged"          # shown for a run directory the readers cannot use (:meth:`RunDir.damage`); never written


#: A pruning run's statuses in the order it passes them (``starting workers`` only with --workers).
PRUNE_PHASES = (Status.QUEUED, Status.STARTED, Status.LOADING_DATA, Status.LOADING_MODEL, Status.ANALYSING_GRAPH,
                Status.MEASURING_BASE, Status.STARTING_WORKERS, Status.SEARCHING, Status.SEARCH_DONE,
                Status.FINE_TUNING, Status.EXPORTING, Status.REPORTING, Status.QUANTIZING)
#: A sensitivity analysis's statuses, in order.
SENSITIVITY_PHASES = (Status.QUEUED, Status.STARTED, Status.LOADING_DATA, Status.LOADING_MODEL,
                      Status.ANALYSING_GRAPH, Status.STARTING_WORKERS, Status.ANALYSING_SENSITIVITY)
FINAL_STATUSES = (Status.DONE, Status.FAILED, Status.CANCELLED)


def is_final(status: str | None) -> bool:
    """Whether ``status`` ends a run (done, failed, cancelled; a damaged run directory has nothing to wait for)."""
    return status in FINAL_STATUSES or status == Status.DAMAGED


class Event:
    """The ``kind`` of the events the engine writes. A strategy may add kinds of its own (named
    after it: ``constrained``, ``purl``, ``joint``, ``prior``); readers keep unknown kinds apart."""

    STATUS = "status"            # status=<Status>, error on a final one
    BASE = "base"                # the unpruned model's report and its layer groups
    CANDIDATE = "candidate"      # one scored structure (Candidate.to_event)
    STEP = "step"                # one strategy update
    EPOCH = "epoch"              # one fine-tuning epoch (finetune's record)
    PROGRESS = "progress"        # within a stage: stage=<Status>, done, total (batches), at most one a second
    LOG = "log"                  # level, message
    SENSITIVITY = "sensitivity"  # one sensitivity point (done, total, group, ratio, top1); first the unpruned (group None)
    WORKERS = "workers"          # the Ray workers' statistics


#: Run kinds: a pruning run, or a per-group sensitivity analysis (config key ``analysis``).
PRUNE, SENSITIVITY = "prune", "sensitivity"
#: summary.json's ``failure`` of a run that failed on its settings (a one-line PrunerError: a missing file, a
#: budget the model cannot reach, ...): resuming it with the same settings fails again, so no page offers it
FAILED_ON_SETTINGS = "settings"


class JobState:
    """A :class:`~pruner.runs.manager.JobManager`'s job (``JobManager.state``): waiting in its queue,
    its process running, or ended (however it ended: the run directory says how)."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    GOING_ON = (QUEUED, RUNNING)   # not finished: the run is being written, or will be


class Liveness:
    """What a page calls a run: finished (a final status), going on (a job writes it or will), or
    interrupted (not final and nobody holds its lock: :meth:`RunDir.interrupted`)."""

    FINAL = "final"
    ACTIVE = "active"
    INTERRUPTED = "interrupted"


def failed_on_settings(summary: dict | None) -> bool:
    """Whether the run failed on its settings (:data:`FAILED_ON_SETTINGS`), not on its machine (out of
    memory, a killed process, a bug): such a run is started again with changed settings, not resumed."""
    return bool(summary) and summary.get("status") == Status.FAILED and summary.get("failure") == FAILED_ON_SETTINGS
KINDS = (PRUNE, SENSITIVITY)
_KIND_KEY = "analysis"            # how config.json records a run that is not a pruning run
_KIND_KEYS = (_KIND_KEY, "ratios")   # the config keys that are about the run kind, not a RunConfig


def config_kind(config: dict | None) -> str:
    """The kind (:data:`KINDS`) of a run with this config.json."""
    return SENSITIVITY if (config or {}).get(_KIND_KEY) == SENSITIVITY else PRUNE


def config_with_kind(config: dict, kind: str, **extra: Any) -> dict:
    """``config`` as written to config.json for a run of ``kind`` (with ``extra`` keys such as ``ratios``)."""
    if kind not in KINDS:
        raise PrunerError(f"unknown run kind {kind!r}; use one of {', '.join(KINDS)}")
    return {**config, **({_KIND_KEY: kind} if kind != PRUNE else {}), **extra}


def run_config(config: dict) -> dict:
    """A config.json without the run-kind keys: the settings a :class:`~pruner.runs.config.RunConfig` takes."""
    return {k: v for k, v in config.items() if k not in _KIND_KEYS}


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples lists, numpy/torch scalars numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):
        try:
            return _clean(value.item())
        except (ValueError, RuntimeError):
            return _clean(value.tolist())
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`pruner.atomic.write_bytes_atomic`: on any
    failure, a full disk included, the temporary file is removed and the error raised)."""
    write_bytes_atomic(path, json.dumps(_clean(data), indent=2).encode())


#: Bounds of what a reader takes from a run directory (a damaged or hostile file cannot exhaust a page):
MAX_JSON_BYTES = 32 * 2**20      # config.json, summary.json, state files: far above any a job writes
MAX_EVENT_LINE = 2**20           # one events.jsonl line; longer lines are skipped
MAX_LOG_MESSAGE = 10_000         # characters of a log event's message the job writes (the rest is cut)


def _loads(data: bytes) -> Any:
    """JSON from bytes, or raises ValueError for anything unreadable: not UTF-8, not JSON, nested
    too deep (RecursionError) or too large to parse (MemoryError). NaN and ±Infinity become None."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=lambda _c: None)
    except (RecursionError, MemoryError) as exc:
        raise ValueError(f"JSON {'nested too deep' if isinstance(exc, RecursionError) else 'too large'}") from None


def read_json_checked(path: Path) -> tuple[dict | None, str | None]:
    """``(object, None)``; ``(None, None)`` when ``path`` does not exist; ``(None, why)`` when it exists
    but is no readable JSON object (too large, not JSON, nested too deep, an array, a directory)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    if len(data) > MAX_JSON_BYTES:
        return None, f"{path.name} is larger than {MAX_JSON_BYTES // 2**20} MiB"
    try:
        obj = _loads(data)
    except ValueError as exc:
        return None, f"{path.name} is not valid JSON ({str(exc).splitlines()[0][:80]})"
    if not isinstance(obj, dict):
        return None, f"{path.name} holds a JSON {type(obj).__name__}, not an object"
    return obj, None


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    return read_json_checked(path)[0]


def _parse_line(line: bytes) -> dict | None:
    """One event line as a dict, or None for anything else (torn, not UTF-8, not a JSON object)."""
    try:
        record = _loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_lines(fh, max_line: int = MAX_EVENT_LINE) -> Iterator[tuple[int, bytes | None]]:
    """The complete lines of an open binary file from its position: ``(offset after the line, line)``,
    ``line`` None for a line longer than ``max_line`` (skipped without holding it in memory). A
    torn last line (no newline yet) ends the iteration, so a caller resumes from the last offset."""
    pos = fh.tell()
    while True:
        line = fh.readline(max_line + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            pos += len(line)
            yield pos, line
            continue
        if len(line) <= max_line:
            return                       # torn: still being written
        size = len(line)
        while True:                      # an overlong line: skip to its end
            chunk = fh.readline(max_line + 1)
            if not chunk:
                return                   # still being written; it will be skipped once complete
            size += len(chunk)
            if chunk.endswith(b"\n"):
                break
        pos += size
        yield pos, None


def read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The events of ``path`` from byte ``offset``: the readable ones, and the offset after the last
    complete line (skipped: overlong lines and lines that are not a JSON object)."""
    events: list[dict] = []
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            for offset, line in read_lines(fh):
                record = None if line is None else _parse_line(line)
                if record is not None:
                    events.append(record)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return events, offset


# ---------------------------------------------------------------------- the shape readers rely on
_NUMBER = (int, float)
#: config.json: each key's type when present (None is always allowed)
CONFIG_SHAPE: dict[str, Any] = {
    "model": str, "weights": str, "data": str, "budget": str, "strategy": str, "device": str, "protocol": str,
    "strategy_params": dict, "finetune": dict, "search_evals": int, "ratios": list, "kind": str,
}
#: summary.json: each key's type when present; the sections' own numeric fields below
SUMMARY_SHAPE: dict[str, Any] = {
    "status": str, "error": str, "failure": str, "seconds": _NUMBER, "base_top1": _NUMBER, "base": dict, "pruned": dict,
    "search": dict, "budget": dict, "data": dict, "preprocess": dict, "artifacts": dict, "sparsity": dict,
    "groups": list, "layers": list, "finetune": list,
}
_SECTION_NUMBERS = {
    "base": ("macs", "params", "top1", "top5", "latency_ms", "ort_latency_ms", "latency_vs_base"),
    "pruned": ("macs", "params", "top1", "top5", "latency_ms", "ort_latency_ms", "latency_vs_base"),
    "search": ("evaluations", "best_val_top1", "seconds"),
    "budget": ("target", "achieved"),
}
_LISTS_OF_OBJECTS = (("groups",), ("layers",), ("finetune",), ("base", "latency"), ("pruned", "latency"))


def _type_name(t: Any) -> str:
    return "a number" if t is _NUMBER else {dict: "an object", list: "a list", str: "a string", int: "an integer"}[t]


def _shape_problem(name: str, data: dict, shape: dict[str, Any]) -> str | None:
    for key, t in shape.items():
        v = data.get(key)
        if v is None:
            continue
        if not isinstance(v, t) or (t is not str and isinstance(v, bool) and t is not _NUMBER):
            return f"{name}: {key!r} is {type(v).__name__}, expected {_type_name(t)}"
    return None


def records_problem(config: dict | None, summary: dict | None) -> str | None:
    """Why a run's config and summary do not have the shape the readers rely on, or None."""
    if config is not None:
        problem = _shape_problem(CONFIG_FILE, config, CONFIG_SHAPE)
        if problem:
            return problem
    if summary is None:
        return None
    problem = _shape_problem(SUMMARY_FILE, summary, SUMMARY_SHAPE)
    if problem:
        return problem
    for section, keys in _SECTION_NUMBERS.items():
        part = summary.get(section) or {}
        for key in keys:
            v = part.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBER)):
                return f"summary.json: '{section}.{key}' is {type(v).__name__}, expected a number"
    for path in _LISTS_OF_OBJECTS:
        v: Any = summary
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, list) and not all(isinstance(x, dict) for x in v):
            return f"summary.json: '{'.'.join(path)}' holds something other than objects"
    return None


class RunLock:
    """An exclusive ``flock`` on ``<run>/job.lock``, held by the one writer of a run.

    The lock belongs to the open file, so it is released when the holder closes it or dies
    (SIGKILL included). A JobManager takes it when it queues a job and hands the very same
    open file to the spawned child (:meth:`__reduce__`), so the run is never unlocked between
    the queue and the job.
    """

    def __init__(self, path: Path, fd: int):
        self.path = Path(path)
        self._fd: int | None = fd

    @classmethod
    @contextlib.contextmanager
    def holding(cls, path: str | Path, lock: "RunLock | None" = None, *, retry_s: float = LOCK_RETRY_S):
        """The run's lock for a ``with`` block: ``lock`` when the caller already holds it (kept held),
        else acquired here (:meth:`acquire`) and released at the end."""
        if lock is not None:
            yield lock
            return
        own = cls.acquire(path, retry_s=retry_s)
        try:
            yield own
        finally:
            own.release()

    @classmethod
    def acquire(cls, path: str | Path, *, retry_s: float = LOCK_RETRY_S) -> "RunLock":
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        end = time.monotonic() + retry_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    os.close(fd)
                    raise PrunerError(f"{path.parent} is being written by another job ({_describe(_read_holder(path))}); "
                                      "wait for it to finish or cancel it first") from None
                time.sleep(0.05)
        lock = cls(path, fd)
        try:
            lock.stamp()
        except BaseException:   # e.g. a full disk: give the lock (and the file) back
            lock.release()
            raise
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def stamp(self) -> None:
        """Write this process as the holder (pid, host, start time) into the lock file."""
        if self._fd is None:
            return
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, info, 0)

    def at_path(self) -> bool:
        """Whether the locked file is still ``<run>/job.lock`` (not a run directory deleted meanwhile)."""
        if self._fd is None:
            return False
        try:
            return os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def release(self) -> None:
        """Unlock and close (the holder info is cleared first)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)

    def hand_over(self) -> None:
        """Close this process's copy without unlocking: the child it was passed to keeps the lock."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __reduce__(self):
        # Only through multiprocessing's spawn: the child receives a duplicate of the open file
        # (same lock), passed by the library's own fd-passing mechanism.
        from multiprocessing import context, reduction

        if self._fd is None or context.get_spawning_popen() is None:
            raise TypeError("a RunLock can only be passed to a process being spawned")
        return _rebuild_lock, (str(self.path), reduction.DupFd(self._fd))

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _rebuild_lock(path: str, dup) -> RunLock:
    lock = RunLock(Path(path), dup.detach())
    lock.stamp()   # the child is the holder now
    return lock


def _read_holder(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read() or b"{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict | None) -> str:
    if not holder or holder.get("pid") is None:
        return "a process starting now"
    started = holder.get("started")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else ""
    return f"pid {holder.get('pid')} on {holder.get('host', '?')}{when}"


class RunDir:
    """Reads and writes one run directory. ``on_event``, when given, is handed every event this
    object writes, once it is in the log (an observer such as the CLI's progress display,
    :mod:`pruner.progress`); the files are the same with or without it."""

    def __init__(self, path: str | Path, on_event: Callable[[dict], None] | None = None):
        self.path = Path(path)
        self.on_event = on_event
        self._lock = threading.Lock()

    # -------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def artifacts_dir(self) -> Path:
        return self.path / ARTIFACTS_DIR

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def cancel_path(self) -> Path:
        return self.path / CANCEL_FILE

    @property
    def notes_path(self) -> Path:
        return self.path / NOTES_FILE

    @property
    def overrides_path(self) -> Path:
        return self.state_dir / OVERRIDES_STATE

    @property
    def finetune_dir(self) -> Path:
        return self.state_dir / FINETUNE_STATE

    @property
    def sensitivity_path(self) -> Path:
        return self.path / SENSITIVITY_RESULT

    @property
    def name(self) -> str:
        return self.path.name

    # -------------------------------------------------------------- the writer's lock
    def lock(self) -> RunLock:
        """Become the one writer of this run (creating the directory), or a one-line PrunerError
        naming the process that writes it now."""
        self.path.mkdir(parents=True, exist_ok=True)
        return RunLock.acquire(self.lock_path)

    def holder(self) -> dict | None:
        """Who writes this run now (``pid``, ``host``, ``started``; empty while it is being
        stamped), or None when nobody holds its lock. Never blocks or takes the lock away."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(self.lock_path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def interrupted(self, status: str | None = None) -> bool:
        """Not finished, and nobody holds its lock: its job died (crash, kill, server restart)."""
        status = status or self.status()
        return status not in FINAL_STATUSES and self.config_path.exists() and self.holder() is None

    # -------------------------------------------------------------- writing
    def check_new(self) -> None:
        """Refuse to start a new run here (before anything is written) when it holds another run or files."""
        if self.summary_path.exists():
            raise PrunerError(f"{self.path} already holds a finished run; choose another --out or delete it")
        if (self.path / QUEUED_MARKER).exists():
            return
        if self.path.is_file():
            raise PrunerError(f"{self.path} is a file; choose another --out")
        if self.path.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
            raise PrunerError(f"{self.path} is not empty; choose another --out, or --resume an interrupted run")

    def create(self, config: dict, *, resume: bool = False) -> None:
        """Start a run here. A finished run directory is never overwritten."""
        if not resume:
            self.check_new()
        queued = self.path / QUEUED_MARKER
        if queued.exists():  # created by JobManager.submit for a job that is starting now
            queued.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        self.artifacts_dir.mkdir(exist_ok=True)
        if not resume or not self.config_path.exists():
            write_json_atomic(self.config_path, config)

    def mark_queued(self, config: dict) -> None:
        """Make a submitted job visible (config + a queued status) before its process starts."""
        self.create(config)
        (self.path / QUEUED_MARKER).touch()
        self.event(Event.STATUS, status=Status.QUEUED)

    def event(self, kind: str, **fields: Any) -> dict:
        """Append one event (flushed and fsynced so readers and resumes see it). When the log
        ends in a torn line (its writer died mid-line), the event starts on a fresh line."""
        if kind == Event.LOG and isinstance(fields.get("message"), str) and len(fields["message"]) > MAX_LOG_MESSAGE:
            cut = len(fields["message"]) - MAX_LOG_MESSAGE
            fields = {**fields, "message": fields["message"][:MAX_LOG_MESSAGE] + f" … ({cut:,} characters cut)"}
        record = {"kind": kind, "time": time.time(), **fields}
        line = json.dumps(_clean(record)).encode() + b"\n"
        with self._lock:
            with open(self.events_path, "ab+") as fh:
                end = fh.seek(0, os.SEEK_END)
                if end > 0:
                    fh.seek(end - 1)
                    if fh.read(1) != b"\n":
                        line = b"\n" + line
                fh.write(line)   # append mode: always at the end
                fh.flush()
                os.fsync(fh.fileno())
            if self.on_event is not None:   # in the lock: an observer sees the events in the log's order
                self.on_event(record)
        return record

    def replay_emitter(self) -> "ReplayEmitter":
        """The writer of a resumed search's own events (``SearchContext.emit``): see :class:`ReplayEmitter`."""
        return ReplayEmitter(self)

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)

    # -------------------------------------------------------------- reading
    def config(self) -> dict | None:
        return read_json(self.config_path)

    def summary(self) -> dict | None:
        return read_json(self.summary_path)

    def events(self, kind: str | None = None, start: int = 0) -> list[dict]:
        return [e for e in self.iter_events(start) if kind is None or e.get("kind") == kind]

    def iter_events(self, start: int = 0) -> Iterator[dict]:
        """Events from line ``start`` on. Skipped: a torn last line (still being written), lines longer
        than :data:`MAX_EVENT_LINE`, and any line that is not a JSON object in UTF-8 (a torn line a
        later writer continued after, garbage bytes, a JSON array or number)."""
        try:
            with open(self.events_path, "rb") as fh:
                for i, (_end, line) in enumerate(read_lines(fh)):
                    record = None if i < start or line is None else _parse_line(line)
                    if record is not None:
                        yield record
        except (FileNotFoundError, NotADirectoryError):
            return

    def damage(self) -> str | None:
        """Why this run directory cannot be shown (its config or summary unreadable, or not of the
        shape the readers rely on), as one line; None when it is sound. Such a run is listed as
        :data:`Status.DAMAGED`, and nothing else of it is read."""
        if self.path.is_symlink():
            return "the run directory is a symbolic link (not followed)"
        config, problem = read_json_checked(self.config_path)
        if problem or config is None:
            return problem or "config.json is missing"
        summary, problem = read_json_checked(self.summary_path)
        return problem or records_problem(config, summary)

    def status(self) -> str:
        """done / failed / cancelled from the summary, else the last status event, else 'unknown'."""
        summary = self.summary()
        if summary:
            return str(summary.get("status", "unknown"))
        last = "unknown"
        for e in self.iter_events():
            if e.get("kind") == Event.STATUS:
                last = str(e.get("status", last))
        return last

    def kind(self) -> str:
        """``prune`` or ``sensitivity`` (:data:`KINDS`), from config.json."""
        return config_kind(self.config())

    @property
    def search_state_path(self) -> Path:
        return self.state_dir / SEARCH_STATE

    def search_result(self) -> dict | None:
        """The finished search (``state/search.json``: counts, candidate_id, evaluations, ...), or None."""
        return read_json(self.search_state_path)

    def chosen_candidate(self, summary: dict | None = None) -> Any:
        """The id of the candidate the run chose: the finished search's answer, else (a cancelled
        run) the best candidate meeting the budget that its summary names, else None."""
        found = self.search_result()
        if found and found.get("candidate_id") is not None:
            return found["candidate_id"]
        summary = self.summary() if summary is None else summary
        return ((summary or {}).get("search") or {}).get("best_candidate")

    def artifact_path(self, key: str) -> Path:
        """Where the job writes artifact ``key`` (:data:`ARTIFACTS`)."""
        return self.artifacts_dir / ARTIFACTS[key]

    def artifact_ref(self, key: str) -> str:
        """Artifact ``key`` as the summary lists it: relative to the run directory."""
        return f"{self.artifacts_dir.name}/{ARTIFACTS[key]}"

    def artifact(self, key: str, summary: dict | None = None) -> Path | None:
        """The existing file of artifact ``key`` (``onnx``, ``program``, ``checkpoint``, ``candidates``,
        and ``summary`` for summary.json itself) as the summary lists it; None when it is missing
        or would lie outside the run directory."""
        if key == "summary":
            rel: Any = self.summary_path.name
        else:
            summary = self.summary() if summary is None else summary
            rel = ((summary or {}).get("artifacts") or {}).get(key)
        if not isinstance(rel, str) or not rel or self.path.is_symlink():
            return None
        root = self.path.resolve()
        path = (root / rel).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None

    def sensitivity_result(self) -> dict | None:
        """A finished sensitivity analysis's table (``sensitivity.json``), or None."""
        return read_json(self.sensitivity_path)


def find_sensitivity(path: str | Path) -> Path | None:
    """The ``sensitivity.json`` that ``path`` names (a finished Sensitivity run directory, or the file
    itself), or None when there is none."""
    p = Path(path).expanduser()
    found = RunDir(p).sensitivity_path if p.is_dir() else p
    return found if found.is_file() else None


def read_sensitivity(path: str | Path) -> tuple[dict, Path]:
    """A finished sensitivity analysis's table from a run directory or its file (what rl's ``start``
    names), and the file; a one-line PrunerError when there is none or it cannot be read."""
    found = find_sensitivity(path)
    if found is None:
        raise PrunerError(f"no sensitivity analysis at {path}: give a finished Sensitivity run directory or its "
                          f"{SENSITIVITY_RESULT}")
    table, problem = read_json_checked(found)
    if table is None:
        raise PrunerError(f"cannot read the sensitivity analysis {found}: {problem or 'it is gone'}; run the analysis "
                          "again")
    return table, found


#: Kinds the job itself writes while a search runs (never a strategy's own record of the search): a
#: resumed search writes them as they come. Candidates are not logged twice by the Evaluator itself
#: (``Evaluator.preload``); workers' statistics are measurements of this attempt.
_NOT_REPLAYED = (Event.STATUS, Event.CANDIDATE, Event.PROGRESS, Event.WORKERS)
_IN_SEARCH = (Status.SEARCHING, Status.STARTING_WORKERS)


def _search_events(events: Iterator[dict]) -> dict[str, list[dict]]:
    """The events a search emitted (those after a ``searching`` status, before the next other
    status), per kind in order, without ``kind`` and ``time``."""
    out: dict[str, list[dict]] = {}
    searching = False
    for e in events:
        kind = e.get("kind")
        if kind == Event.STATUS:
            searching = e.get("status") in _IN_SEARCH
        elif searching and kind not in _NOT_REPLAYED:
            out.setdefault(str(kind), []).append({k: v for k, v in e.items() if k not in ("kind", "time")})
    return out


class ReplayEmitter:
    """Writes a resumed search's events without repeating those the interrupted attempts recorded.

    A resume replays the (deterministic) strategy from the start while the Evaluator serves the
    earlier evaluations from the log, so the strategy emits its events (``step``, ``log``, its own
    kinds such as ``constrained``, ``purl``, ``joint``) again. For each kind, an emitted event that
    is identical (all fields but ``time``) to the next one the earlier attempts recorded, in order,
    is the same fact and is not written again; the first one that differs, or goes past the record,
    is written, and so is every later event of that kind. So ``events.jsonl`` holds each update of
    the search once, in order, however often it was interrupted, and a replay that diverges (a
    different CPU or thread count) is written as it happened.
    """

    def __init__(self, run: RunDir):
        self.run = run
        self._recorded = _search_events(run.iter_events())
        self._next = {kind: 0 for kind in self._recorded}   # a kind's cursor; gone once it diverged
        self.skipped = 0                                      # events not written again

    def __call__(self, kind: str, **fields: Any) -> dict | None:
        pos = self._next.get(kind)
        if pos is not None and kind not in _NOT_REPLAYED:
            recorded = self._recorded[kind]
            if pos < len(recorded) and recorded[pos] == json.loads(json.dumps(_clean(fields))):
                self._next[kind] = pos + 1
                self.skipped += 1
                return None
            del self._next[kind]   # past the record, or different: from here on this kind is new
        return self.run.event(kind, **fields)


#: the free space a new run directory needs to hold its config and first events
MIN_FREE_BYTES = 2**20
_SYSTEM_TREES = ("/proc", "/sys", "/dev")


def check_out_dir(out: str | Path) -> None:
    """That a run directory can be created at ``out``: its nearest existing folder is a writable
    folder outside /proc, /sys and /dev, on a disk with at least :data:`MIN_FREE_BYTES` free."""
    path = Path(out).expanduser().absolute()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if any(path == Path(t) or path.is_relative_to(t) for t in _SYSTEM_TREES):
        raise PrunerError(f"cannot create a run directory at {path}: it is inside a system folder; pass --out a "
                          "folder of your own")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PrunerError(f"cannot create a run directory at {path}: {parent} is not a folder you can write; pass "
                          "--out a writable folder")
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        free = None
    if free is not None and free < MIN_FREE_BYTES:
        raise PrunerError(f"the disk holding {parent} is full ({free:,} bytes free); free some space or pass --out "
                          "a folder on another disk")


def list_runs(root: str | Path) -> list[RunDir]:
    """Run directories under ``root`` (those with a config.json), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [run for run in map(RunDir, root.iterdir()) if not run.path.is_symlink() and run.config_path.is_file()]
    return sorted(runs, key=lambda r: r.config_path.stat().st_mtime, reverse=True)


def _unwritten(path: Path, what: str):
    """The run's lock, taken at once (a run that a job or a queue holds is refused with who holds it)."""
    run = RunDir(path)
    if not run.config_path.is_file() or path.is_symlink():
        raise PrunerError(f"{path} is not a run directory (no {CONFIG_FILE}); nothing was {what}")
    try:
        return RunLock.acquire(run.lock_path, retry_s=0.0)
    except PrunerError as exc:
        raise PrunerError(f"cannot {what.rstrip('d')} {path.name}: {exc}") from None


def archive_run(path: str | Path) -> Path:
    """Move a run that nobody is writing into ``<its folder>/.archive/`` (out of :func:`list_runs`, kept on
    disk); returns where it went (a ``-2``, ``-3``... suffix when that name is archived already)."""
    path = Path(path)
    lock = _unwritten(path, "archived")
    try:
        archive = path.parent / ARCHIVE_DIR
        archive.mkdir(exist_ok=True)
        dest, n = archive / path.name, 1
        while dest.exists():
            n += 1
            dest = archive / f"{path.name}-{n}"
        os.rename(path, dest)   # same file system: atomic; the lock file moves with it
        return dest
    finally:
        lock.release()


def delete_run(path: str | Path) -> None:
    """Remove a run that nobody is writing, with all its files (its artifacts too)."""
    path = Path(path)
    lock = _unwritten(path, "deleted")
    try:
        shutil.rmtree(path)
    finally:
        lock.release()

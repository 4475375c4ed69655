"""The run directory: the one record of a run that the CLI writes and the page reads.

Layout::

    <run>/config.json     resolved settings (written at start)
    <run>/events.jsonl    one JSON object per line, appended and flushed as the run goes
    <run>/summary.json    written atomically at the end (status done / failed / cancelled)
    <run>/state/          resumable state (search steps, fine-tune epochs)
    <run>/artifacts/      model.onnx, pruned.pt2, checkpoint.pt, candidates.csv

Every event has ``kind`` (status, candidate, step, epoch, log, ...) and ``time`` (Unix
seconds). Readers tolerate a half-written last line.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import PrunerError

QUEUED_MARKER = ".queued"
EVENT_KINDS = ("status", "base", "candidate", "step", "epoch", "log", "sensitivity", "constrained", "purl", "joint")


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(_clean(data), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    # -------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def artifacts_dir(self) -> Path:
        return self.path / "artifacts"

    @property
    def name(self) -> str:
        return self.path.name

    # -------------------------------------------------------------- writing
    def create(self, config: dict, *, resume: bool = False) -> None:
        """Start a run here. A finished run directory is never overwritten."""
        if self.summary_path.exists() and not resume:
            raise PrunerError(f"{self.path} already holds a finished run; choose another --out or delete it")
        queued = self.path / QUEUED_MARKER
        if queued.exists():  # created by JobManager.submit for a job that is starting now
            queued.unlink()
        elif self.path.exists() and not resume and any(self.path.iterdir()):
            raise PrunerError(f"{self.path} is not empty; choose another --out, or --resume an interrupted run")
        self.path.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        self.artifacts_dir.mkdir(exist_ok=True)
        if not resume or not self.config_path.exists():
            write_json_atomic(self.config_path, config)

    def mark_queued(self, config: dict) -> None:
        """Make a submitted job visible (config + a queued status) before its process starts."""
        self.create(config)
        (self.path / QUEUED_MARKER).touch()
        self.event("status", status="queued")

    def event(self, kind: str, **fields: Any) -> dict:
        """Append one event (flushed and fsynced so readers and resumes see it)."""
        record = {"kind": kind, "time": time.time(), **fields}
        line = json.dumps(_clean(record))
        with self._lock:
            with open(self.events_path, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return record

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
        """Events from line ``start`` on; a torn last line (still being written) is skipped."""
        try:
            with open(self.events_path) as fh:
                for i, line in enumerate(fh):
                    if i < start or not line.endswith("\n"):
                        continue
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue
        except FileNotFoundError:
            return

    def status(self) -> str:
        """done / failed / cancelled from the summary, else the last status event, else 'unknown'."""
        summary = self.summary()
        if summary:
            return str(summary.get("status", "unknown"))
        last = "unknown"
        for e in self.iter_events():
            if e.get("kind") == "status":
                last = str(e.get("status", last))
        return last


def list_runs(root: str | Path) -> list[RunDir]:
    """Run directories under ``root`` (those with a config.json), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if (p / "config.json").is_file()]
    return sorted(runs, key=lambda r: r.config_path.stat().st_mtime, reverse=True)

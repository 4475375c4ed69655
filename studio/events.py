"""Reading a run directory's events incrementally, with bounded memory, and deriving progress.

Pure Python (no Streamlit): :class:`RunView` follows ``events.jsonl`` from a byte offset so a
page that polls every second reads only what was appended since the last poll, and keeps at
most a fixed number of events of each kind. :func:`progress` turns a view into the phase,
fraction done and ETA shown on the Live run page.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable

FINAL_STATUSES = ("done", "failed", "cancelled")
KNOWN_KINDS = ("status", "base", "candidate", "step", "epoch", "log", "sensitivity")

MAX_CANDIDATES = 20_000
MAX_STEPS = 5_000
MAX_EPOCHS = 2_000
MAX_LOG = 300
MAX_STATUS = 300
MAX_OTHER = 5_000          # per unknown event kind
MAX_SENSITIVITY = 20_000


def is_final(status: str | None) -> bool:
    return status in FINAL_STATUSES


class RunView:
    """Bounded, incrementally updated view of one run's events."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.offset = 0                       # bytes of events.jsonl consumed
        self.count = 0                        # events seen so far (all kinds)
        self.status: str = "unknown"
        self.error: str | None = None
        self.statuses: deque[dict] = deque(maxlen=MAX_STATUS)
        self.base: dict | None = None
        self.candidates: deque[dict] = deque(maxlen=MAX_CANDIDATES)
        self.steps: deque[dict] = deque(maxlen=MAX_STEPS)
        self.epochs: deque[dict] = deque(maxlen=MAX_EPOCHS)
        self.logs: deque[dict] = deque(maxlen=MAX_LOG)
        self.sensitivity: deque[dict] = deque(maxlen=MAX_SENSITIVITY)
        self.other: dict[str, deque[dict]] = {}
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.search_started: float | None = None
        self.finetune_started: float | None = None
        self.evaluations = 0                  # non-cached candidate evaluations
        self.best: dict | None = None         # best candidate so far (highest top1 among feasible ones)

    # ------------------------------------------------------------------ feeding
    @classmethod
    def from_events(cls, events: Iterable[dict]) -> "RunView":
        view = cls()
        for e in events:
            view.add(e)
        return view

    def refresh(self) -> int:
        """Read events appended since the last call; returns how many arrived."""
        if self.path is None:
            return 0
        path = self.path / "events.jsonl"
        try:
            with open(path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return 0
        if not chunk:
            return 0
        end = chunk.rfind(b"\n")
        if end < 0:                 # only a torn line so far
            return 0
        new = 0
        for line in chunk[: end + 1].splitlines():
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(event, dict):
                self.add(event)
                new += 1
        self.offset += end + 1
        return new

    def add(self, e: dict) -> None:
        kind = str(e.get("kind", "unknown"))
        t = e.get("time")
        if isinstance(t, (int, float)):
            self.first_time = t if self.first_time is None else self.first_time
            self.last_time = t
        self.count += 1
        if kind == "status":
            self.statuses.append(e)
            self.status = str(e.get("status", self.status))
            if e.get("error"):
                self.error = str(e["error"])
            if self.status == "searching" and self.search_started is None:
                self.search_started = t
            if self.status == "fine-tuning" and self.finetune_started is None:
                self.finetune_started = t
        elif kind == "base":
            self.base = e
        elif kind == "candidate":
            self.candidates.append(e)
            if not (e.get("meta") or {}).get("cached"):
                self.evaluations += 1
            if e.get("top1") is not None and (self.best is None or _better(e, self.best)):
                self.best = e
        elif kind == "step":
            self.steps.append(e)
        elif kind == "epoch":
            self.epochs.append(e)
        elif kind == "log":
            self.logs.append(e)
        elif kind == "sensitivity":
            self.sensitivity.append(e)
        else:
            self.other.setdefault(kind, deque(maxlen=MAX_OTHER)).append(e)

    # ------------------------------------------------------------------ derived
    @property
    def group_names(self) -> list[str]:
        if not self.base:
            return []
        return [str(g.get("name", i)) for i, g in enumerate(self.base.get("groups") or [])]

    @property
    def group_channels(self) -> list[int]:
        if not self.base:
            return []
        return [int(g.get("channels") or 0) for g in self.base.get("groups") or []]

    @property
    def current_step(self) -> int | None:
        if self.steps:
            return self.steps[-1].get("step")
        if self.candidates:
            return self.candidates[-1].get("step")
        return None

    def log_lines(self, n: int = 40) -> list[str]:
        """The last ``n`` status changes and log messages, oldest first, as text lines."""
        merged = sorted(list(self.statuses) + list(self.logs), key=lambda e: e.get("time") or 0)
        lines = []
        for e in merged[-n:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.get("time") or 0))
            if e.get("kind") == "status":
                extra = f" — {e['error']}" if e.get("error") else ""
                lines.append(f"{stamp}  status   {e.get('status')}{extra}")
            else:
                msg = str(e.get("message", "")).rstrip()
                level = str(e.get("level", "info"))
                lines.append(f"{stamp}  {level:<8} {msg}")
        return lines


def _better(a: dict, b: dict) -> bool:
    """Candidate ``a`` beats ``b``: higher search top-1, then lower cost."""
    return (a.get("top1") or 0, -(a.get("cost") or 0)) > (b.get("top1") or 0, -(b.get("cost") or 0))


def best_feasible(candidates: Iterable[dict], target: float | None, slack: float = 1e-9) -> dict | None:
    """The best candidate meeting ``cost <= target`` (any candidate when ``target`` is None)."""
    best = None
    for c in candidates:
        if c.get("top1") is None:
            continue
        if target is not None and c.get("cost") is not None and c["cost"] > target * (1 + slack):
            continue
        if best is None or _better(c, best):
            best = c
    return best


# ---------------------------------------------------------------------- progress
_PHASE_ORDER = ["queued", "started", "loading data", "loading model", "analysing dependency graph",
                "measuring base model", "searching", "search done", "fine-tuning", "exporting",
                "evaluating on the report split"]


def progress(view: RunView, config: dict | None = None, summary: dict | None = None,
             now: float | None = None, uses_evaluations: bool = True) -> dict[str, Any]:
    """Phase, fraction done (0..1), ETA of the current phase (seconds or None) and a one-line text."""
    config = config or {}
    now = time.time() if now is None else now
    status = (summary or {}).get("status") or view.status
    ft_epochs = int(((config.get("finetune") or {}).get("epochs")) or 0)
    expected = config.get("search_evals") if uses_evaluations else 1
    expected = int(expected) if expected else None
    evals = view.evaluations
    eta: float | None = None
    search_share = 0.65 if ft_epochs > 0 else 0.87
    search_end = 0.05 + search_share

    if config.get("analysis") == "sensitivity" or view.sensitivity:
        last = view.sensitivity[-1] if view.sensitivity else None
        done, total = (last.get("done", 0), last.get("total", 0)) if last else (0, 0)
        frac = 1.0 if status == "done" else (0.05 + 0.95 * done / total if total else 0.02)
        if last and total and view.first_time and done:
            t0 = view.search_started or _status_time(view, "analysing sensitivity") or view.first_time
            rate = max(0.0, (last.get("time", now) - t0)) / done
            eta = rate * (total - done)
        text = f"{status}: {done}/{total} points" if total else status
        return _result(status, frac, eta, text, done=done, total=total)

    if is_final(status):
        frac = 1.0 if status == "done" else _fraction_before(view, ft_epochs, expected, search_end)
    elif status == "searching":
        if expected:
            frac = 0.05 + search_share * min(1.0, evals / expected)
            if evals and view.search_started:
                last_t = view.candidates[-1].get("time", now) if view.candidates else now
                rate = max(0.0, last_t - view.search_started) / evals
                eta = max(0.0, rate * max(0, expected - evals) - max(0.0, now - last_t))
        else:
            frac = 0.05
    elif status in ("search done",):
        frac = search_end
    elif status == "fine-tuning":
        done = len(view.epochs)
        frac = search_end + 0.22 * (done / ft_epochs if ft_epochs else 1.0)
        if done and view.finetune_started:
            rate = max(0.0, view.epochs[-1].get("time", now) - view.finetune_started) / done
            eta = max(0.0, rate * max(0, ft_epochs - done) - max(0.0, now - view.epochs[-1].get("time", now)))
    elif status == "exporting":
        frac = 0.94
    elif status == "evaluating on the report split":
        frac = 0.97
    elif status in _PHASE_ORDER:
        frac = 0.01 * (_PHASE_ORDER.index(status) + 1)
    else:
        frac = 0.0

    parts = [status]
    if view.current_step is not None and not is_final(status):
        parts.append(f"step {view.current_step}")
    if expected and view.candidates:
        parts.append(f"{evals}/{expected} evaluations" if uses_evaluations else f"{evals} evaluations")
    elif view.candidates:
        parts.append(f"{evals} evaluations")
    if status == "fine-tuning" and ft_epochs:
        parts.append(f"epoch {len(view.epochs)}/{ft_epochs}")
    if eta is not None and not is_final(status):
        parts.append(f"ETA {format_seconds(eta)}")
    return _result(status, frac, eta, " · ".join(parts), evaluations=evals, expected=expected)


def _status_time(view: RunView, status: str) -> float | None:
    for e in view.statuses:
        if e.get("status") == status:
            return e.get("time")
    return None


def _fraction_before(view: RunView, ft_epochs: int, expected: int | None, search_end: float) -> float:
    """Where a failed or cancelled run had got to."""
    if view.epochs and ft_epochs:
        return search_end + 0.22 * len(view.epochs) / ft_epochs
    if expected and view.candidates:
        return 0.05 + (search_end - 0.05) * min(1.0, view.evaluations / expected)
    return 0.0


def _result(status, frac, eta, text, **extra) -> dict[str, Any]:
    return {"status": status, "fraction": float(min(1.0, max(0.0, frac))), "eta_s": eta, "text": text, **extra}


def format_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:  # compact: it must fit a metric in a six-column row at laptop width
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def sensitivity_from_events(events: Iterable[dict]) -> dict:
    """Partial sensitivity table (``groups``, ``ratios``, ``top1[group][ratio]``, None where missing)."""
    groups: list[str] = []
    ratios: set[float] = set()
    values: dict[tuple[str, float], float] = {}
    total = done = 0
    for e in events:
        g, r = e.get("group"), e.get("ratio")
        if g is None or r is None:
            continue
        if g not in groups:
            groups.append(g)
        ratios.add(float(r))
        values[(g, float(r))] = e.get("top1")
        total, done = e.get("total", total), e.get("done", done)
    rs = sorted(ratios)
    return {"groups": groups, "ratios": rs, "top1": [[values.get((g, r)) for r in rs] for g in groups],
            "done": done, "total": total}

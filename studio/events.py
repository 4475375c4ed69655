"""Reading a run directory's events incrementally, with bounded memory, and deriving progress.

Pure Python (no Streamlit): :class:`RunView` follows ``events.jsonl`` from a byte offset so a
page that polls every second reads only what was appended since the last poll, and keeps at
most a fixed number of events of each kind. :func:`progress` turns a view into the phase,
fraction done and ETA shown on the Live run page.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pruner.budget import Budget
from pruner.errors import PrunerError
from pruner.progress import EpochPace, finetune_eta, format_seconds, rate_eta, training_search_eta
from pruner.runs.rundir import (EVENTS_FILE, PRUNE_PHASES, SENSITIVITY, Event, RunDir, Status, config_kind, is_final,
                                read_events)

MAX_CANDIDATES = 20_000
MAX_STEPS = 5_000
MAX_EPOCHS = 2_000
MAX_LOG = 300
MAX_STATUS = 300
MAX_OTHER = 5_000          # per unknown event kind
MAX_SENSITIVITY = 20_000
MAX_LOG_LINE = 500          # characters of one log message shown

__all__ = ["RunView", "best_feasible", "budget_of", "finetune_note", "format_seconds", "is_final", "progress",
           "sensitivity_from_events", "status_changed"]


class RunView:
    """Bounded, incrementally updated view of one run's events."""

    def __init__(self, path: str | Path | None = None, budget: Budget | None = None):
        self.path = Path(path) if path is not None else None
        config = RunDir(self.path).config() if self.path is not None else None
        if budget is None and config is not None:
            budget = budget_of(config)
        self.budget = budget                  # judges which candidates count as the best (Budget.feasible)
        self.strategy = str((config or {}).get("strategy") or "")   # when a searching status does not name it
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
        self.status_time: float | None = None     # when the current status began
        self.stage_progress: dict | None = None   # the last progress event of the current status
        self.stage_epochs: list[dict] = []        # epoch events since the current fine-tuning status
        self.base_seconds: float | None = None    # how long the unpruned model's report took (measured)
        self.search_pace: EpochPace | None = None  # this attempt's training epochs (a search that trains: joint)
        self.idle_seconds = 0.0                   # between a cancel (or failure) and the resume that followed
        self._stopped_at: float | None = None
        self.evaluations = 0                  # non-cached candidate evaluations
        self.best: dict | None = None         # best candidate so far meeting the budget (any without one)

    # ------------------------------------------------------------------ feeding
    @classmethod
    def from_events(cls, events: Iterable[dict], budget: Budget | None = None) -> "RunView":
        view = cls(budget=budget)
        for e in events:
            view.add(e)
        return view

    def refresh(self) -> int:
        """Read events appended since the last call; returns how many arrived (the run directory's
        one line reader: torn, overlong and unreadable lines are skipped)."""
        if self.path is None:
            return 0
        events, self.offset = read_events(self.path / EVENTS_FILE, self.offset)
        for event in events:
            self.add(event)
        return len(events)

    def add(self, e: dict) -> None:
        kind = str(e.get("kind", "unknown"))
        t = e.get("time")
        if isinstance(t, (int, float)):
            self.first_time = t if self.first_time is None else self.first_time
            self.last_time = t
        self.count += 1
        if self.search_pace is not None and self.status == Status.SEARCHING:
            self.search_pace.add(e)
        if kind == Event.STATUS:
            self.statuses.append(e)
            self.status = str(e.get("status", self.status))
            if isinstance(t, (int, float)):
                if self._stopped_at is not None:          # resumed: the time stopped is not the run's
                    self.idle_seconds += max(0.0, t - self._stopped_at)
                self._stopped_at = t if is_final(self.status) else None
            self.status_time = t if isinstance(t, (int, float)) else self.status_time
            self.stage_progress = None
            self.stage_epochs = []
            if e.get("error"):
                self.error = str(e["error"])
            if self.status == Status.SEARCHING:
                self.search_started = t if self.search_started is None else self.search_started
                self.search_pace = EpochPace(t if isinstance(t, (int, float)) else None,
                                             str(e.get("strategy") or self.strategy or ""))
            if self.status == Status.FINE_TUNING and self.finetune_started is None:
                self.finetune_started = t
        elif kind == Event.BASE:
            self.base = e
            if isinstance(e.get("report_seconds"), (int, float)):
                self.base_seconds = float(e["report_seconds"])
        elif kind == Event.PROGRESS:
            if e.get("stage") == self.status:
                self.stage_progress = e
        elif kind == Event.CANDIDATE:
            self.candidates.append(e)
            if not (e.get("meta") or {}).get("cached"):
                self.evaluations += 1
            if e.get("top1") is not None:
                self.best = best_feasible([c for c in (self.best, e) if c is not None], self.budget)
        elif kind == Event.STEP:
            self.steps.append(e)
        elif kind == Event.EPOCH:
            self.epochs.append(e)
            if self.status == Status.FINE_TUNING:
                self.stage_epochs.append(e)
        elif kind == Event.LOG:
            self.logs.append(e)
        elif kind == Event.SENSITIVITY:
            self.sensitivity.append(e)
        else:
            self.other.setdefault(kind, deque(maxlen=MAX_OTHER)).append(e)

    # ------------------------------------------------------------------ derived
    def active_seconds(self, now: float | None = None) -> float | None:
        """Wall-clock seconds the run has been going on: from its first event to its last (a finished run)
        or to ``now``, less the time it spent stopped between a cancel and a resume."""
        if self.first_time is None:
            return None
        end = (self.last_time or self.first_time) if is_final(self.status) or now is None else now
        return max(0.0, end - self.first_time - self.idle_seconds)

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
            if e.get("kind") == Event.STATUS:
                extra = f" — {e['error']}" if e.get("error") else ""
                lines.append(f"{stamp}  status   {e.get('status')}{extra}")
            else:
                msg = str(e.get("message", "")).rstrip()
                if len(msg) > MAX_LOG_LINE:   # a huge message would freeze the browser tab
                    msg = msg[:MAX_LOG_LINE] + f" … ({len(msg) - MAX_LOG_LINE:,} characters cut)"
                level = str(e.get("level", "info"))
                lines.append(f"{stamp}  {level:<8} {msg}")
        return lines


@dataclass(frozen=True)
class _Judged:
    """A candidate event as :func:`~pruner.search.base.best_meeting` reads a candidate."""

    event: dict

    @property
    def score(self) -> float:
        """What the search maximised: the event's ``score`` (``--score``), else its top-1."""
        s = self.event.get("score")
        return float(s) if isinstance(s, (int, float)) else float(self.event.get("top1") or 0)

    @property
    def cost(self) -> float | None:
        return self.event.get("cost")


def status_changed(shown: str | None, status: str) -> bool:
    """Whether a run's status moved on from ``shown``, the status a page rendered outside its polling
    fragment (the run picker's label): the page then reruns so the two agree. ``None`` (not shown) never."""
    return shown is not None and shown != status


def budget_of(config: dict | None) -> Budget | None:
    """The run's :class:`~pruner.budget.Budget` from its config.json (None when it has none or a bad one)."""
    text = (config or {}).get("budget")
    if not text:
        return None
    try:
        return Budget.parse(str(text))
    except PrunerError:
        return None


def best_feasible(candidates: Iterable[dict], budget: Budget | None) -> dict | None:
    """The best scored candidate event meeting ``budget``, judged by the engine's own rule
    (:func:`~pruner.search.base.best_meeting`); any scored candidate when ``budget`` is None."""
    from pruner.search.base import best_meeting   # here: reading events does not load the strategies

    best = best_meeting([_Judged(c) for c in candidates if c.get("top1") is not None], budget)
    return None if best is None else best.event


# ---------------------------------------------------------------------- progress
# Where each stage of a pruning run starts and ends on the progress bar (fractions of the run).
_SEARCH_START = 0.05
_FINETUNE_SHARE = 0.22


def progress(view: RunView, config: dict | None = None, summary: dict | None = None,
             now: float | None = None, uses_evaluations: bool = True) -> dict[str, Any]:
    """Phase, fraction done (0..1), ETA of the current stage (seconds or None) and a one-line text.

    The ETA comes from what the run has measured so far: seconds per evaluation while searching (for a
    search that trains the weights, ``joint``, seconds per training epoch once one is done),
    seconds per fine-tuning batch (``progress`` events) and then per epoch while fine-tuning, and
    the unpruned model's report time (the ``base`` event's ``report_seconds``) for exporting and the
    final report, which repeat that work on the pruned model.
    """
    config = config or {}
    now = time.time() if now is None else now
    status = (summary or {}).get("status") or view.status
    if config_kind(config) == SENSITIVITY or view.sensitivity:
        return _sensitivity_progress(view, status, now)
    ft_epochs = int(((config.get("finetune") or {}).get("epochs")) or 0)
    expected = config.get("search_evals") if uses_evaluations else 1
    expected = int(expected) if expected else None
    frac, stage_eta = _stage_position(view, status, ft_epochs, expected, now)
    if status == Status.SEARCHING:   # a search that trains the weights: from its epochs, once one is done
        trained = training_search_eta(view.search_pace, config, now)
        stage_eta = stage_eta if trained is None else trained
    eta = stage_eta
    rest = _after(view, config, status, ft_epochs)
    if rest is not None and not is_final(status) and (stage_eta is not None or status == Status.SEARCH_DONE):
        eta = (stage_eta or 0.0) + rest   # the whole run: this stage and the measured cost of those after it
    text = _progress_text(view, status, ft_epochs, expected, eta, uses_evaluations)
    return _result(status, frac, eta, text, evaluations=view.evaluations, expected=expected, stage_eta_s=stage_eta)


def _sensitivity_progress(view: RunView, status: str, now: float) -> dict[str, Any]:
    """A Sensitivity analysis's progress: points measured of all, ETA at the measured rate."""
    last = view.sensitivity[-1] if view.sensitivity else None
    done, total = (last.get("done", 0), last.get("total", 0)) if last else (0, 0)
    frac = 1.0 if status == Status.DONE else (0.05 + 0.95 * done / total if total else 0.02)
    eta = None
    if last and total and view.first_time and done:
        t0 = view.search_started or _status_time(view, Status.ANALYSING_SENSITIVITY) or view.first_time
        last_t = last.get("time", now)
        eta = rate_eta(t0, done, total, last_t, last_t)
    text = f"{status}: {done}/{total} points" if total else status
    return _result(status, frac, eta, text, done=done, total=total)


def _stage_position(view: RunView, status: str, ft_epochs: int, expected: int | None,
                    now: float) -> tuple[float, float | None]:
    """Where a pruning run's ``status`` puts it on the progress bar (0..1) and its stage's ETA."""
    evals = view.evaluations
    eta: float | None = None
    search_share = 0.65 if ft_epochs > 0 else 0.87
    search_end = _SEARCH_START + search_share
    if is_final(status):
        frac = 1.0 if status == Status.DONE else _fraction_before(view, ft_epochs, expected, search_end)
    elif status == Status.SEARCHING:
        if expected:
            frac = _SEARCH_START + search_share * min(1.0, evals / expected)
            if evals and view.search_started:
                last_t = view.candidates[-1].get("time", now) if view.candidates else now
                eta = rate_eta(view.search_started, evals, expected, last_t, now)
        else:
            frac = _SEARCH_START
    elif status == Status.SEARCH_DONE:
        frac = search_end
    elif status == Status.FINE_TUNING:
        ft_position = _finetune_position(view, ft_epochs)   # epochs done, as a fraction (0..ft_epochs)
        frac = search_end + _FINETUNE_SHARE * (ft_position / ft_epochs if ft_epochs else 1.0)
        eta = _finetune_eta(view, ft_epochs, now)
    elif status == Status.EXPORTING:
        frac = 0.94
        eta = view.base_seconds   # the report that follows repeats the base model's measured report
    elif status == Status.REPORTING:
        frac = 0.97
        if view.base_seconds is not None and view.status_time is not None:
            eta = max(0.0, view.base_seconds - max(0.0, now - view.status_time))
    elif status == Status.QUANTIZING:
        frac = 0.99
    elif status in PRUNE_PHASES:   # the stages before the search share its first 5 %
        frac = _SEARCH_START * PRUNE_PHASES.index(status) / PRUNE_PHASES.index(Status.SEARCHING)
    else:
        frac = 0.0
    return frac, eta


def _progress_text(view: RunView, status: str, ft_epochs: int, expected: int | None, eta: float | None,
                   uses_evaluations: bool) -> str:
    """The progress line: status, search step, evaluations, fine-tuning epoch and batch, run ETA."""
    evals = view.evaluations
    parts = [status]
    if view.current_step is not None and status == Status.SEARCHING:
        parts.append(f"step {view.current_step}")
    if expected and view.candidates:
        parts.append(f"{evals}/{expected} evaluations" if uses_evaluations else f"{evals} evaluations")
    elif view.candidates:
        parts.append(f"{evals} evaluations")
    if status == Status.FINE_TUNING and ft_epochs:
        p = view.stage_progress
        completed = int(view.epochs[-1].get("epoch") or 0) if view.epochs else 0
        running = min(ft_epochs, max(completed + 1, int((p or {}).get("epoch") or 0)))
        batch = f", batch {p.get('batch')}/{p.get('batches')}" if p and p.get("epoch") == running else ""
        parts.append(f"epoch {running}/{ft_epochs}{batch}")
    if eta is not None and not is_final(status):
        parts.append(f"run ETA {format_seconds(eta)}")
    return " · ".join(parts)


def _after(view: RunView, config: dict, status: str, ft_epochs: int) -> float | None:
    """Seconds the stages after ``status`` are expected to take, from what the run measured before its
    search (the ``base`` event): the fine-tuning plan (a timed training step scaled to the recipe) and
    the unpruned model's report time, which exporting and the final report repeat. ``None`` while a
    needed figure is unknown (then the ETA covers the current stage only)."""
    report = view.base_seconds
    plan = ((view.base or {}).get("finetune_plan") or {}).get("seconds")
    finetune = 0.0 if ft_epochs <= 0 else plan
    export = report if config.get("export", True) else 0.0
    if status in (Status.SEARCHING, Status.SEARCH_DONE):
        parts = [finetune, export, report]
    elif status == Status.FINE_TUNING:
        parts = [export, report]
    elif status == Status.EXPORTING:
        parts = [report]
    elif status == Status.REPORTING:
        parts = []
    else:
        return None
    return None if any(x is None for x in parts) else float(sum(parts))


def _finetune_position(view: RunView, ft_epochs: int) -> float:
    """Epochs of fine-tuning done, counting the running epoch's finished batches as a fraction."""
    done = float(view.epochs[-1].get("epoch") or len(view.epochs)) if view.epochs else 0.0
    p = view.stage_progress
    if p and p.get("batches") and p.get("epoch") == int(done) + 1:
        done += min(1.0, float(p.get("batch") or 0) / float(p["batches"]))
    return min(float(ft_epochs), done) if ft_epochs else done


def _finetune_eta(view: RunView, ft_epochs: int, now: float) -> float | None:
    """Seconds of fine-tuning left (:func:`pruner.progress.finetune_eta`, as the CLI's progress shows it)."""
    return finetune_eta(view.status_time, view.stage_epochs, view.stage_progress, ft_epochs, now)


def finetune_note(view: RunView, config: dict | None, summary: dict | None = None) -> str:
    """What the fine-tuning chart says while it has no epoch to plot, from the run's status."""
    epochs = int((((config or {}).get("finetune") or {}).get("epochs")) or 0)
    status = (summary or {}).get("status") or view.status
    if epochs == 0:
        return "fine-tuning is off (0 epochs)"
    if status == Status.FINE_TUNING:
        p = view.stage_progress
        where = f": batch {p.get('batch')}/{p.get('batches')}" if p else ""
        return f"fine-tuning epoch 1/{epochs} is running{where}"
    if is_final(status) or status in (Status.EXPORTING, Status.REPORTING, Status.QUANTIZING):
        return "no fine-tuning epoch finished"
    return f"fine-tuning ({epochs} epoch{'s' if epochs != 1 else ''}) starts after the search"


def _status_time(view: RunView, status: str) -> float | None:
    """When ``status`` first began (None when the view has not seen it)."""
    for e in view.statuses:
        if e.get("status") == status:
            return e.get("time")
    return None


def _fraction_before(view: RunView, ft_epochs: int, expected: int | None, search_end: float) -> float:
    """Where a failed or cancelled run had got to."""
    if view.epochs and ft_epochs:
        return search_end + _FINETUNE_SHARE * len(view.epochs) / ft_epochs
    if expected and view.candidates:
        return _SEARCH_START + (search_end - _SEARCH_START) * min(1.0, view.evaluations / expected)
    return 0.0


def _result(status, frac, eta, text, **extra) -> dict[str, Any]:
    return {"status": status, "fraction": float(min(1.0, max(0.0, frac))), "eta_s": eta, "text": text, **extra}


def sensitivity_from_events(events: Iterable[dict]) -> dict:
    """Partial sensitivity table (``groups``, ``ratios``, ``top1[group][ratio]``, None where missing, and
    ``base_top1``, the unpruned model's score, which the analysis reports before its first point)."""
    groups: list[str] = []
    ratios: set[float] = set()
    values: dict[tuple[str, float], float] = {}
    total = done = 0
    base_top1 = None
    for e in events:
        g, r = e.get("group"), e.get("ratio")
        if g is None and r is not None and e.get("top1") is not None:
            base_top1 = e["top1"]
            total = e.get("total", total)
            continue
        if g is None or r is None:
            continue
        if g not in groups:
            groups.append(g)
        ratios.add(float(r))
        values[(g, float(r))] = e.get("top1")
        total, done = e.get("total", total), e.get("done", done)
    rs = sorted(ratios)
    out = {"groups": groups, "ratios": rs, "top1": [[values.get((g, r)) for r in rs] for g in groups],
           "done": done, "total": total}
    if base_top1 is not None:
        out["base_top1"] = base_top1
    return out

"""Progress of a job on the command line, from the events it writes to ``events.jsonl``.

A job hands every event it writes to an observer (``run_job(..., on_event=...)``, through
:class:`~pruner.runs.rundir.RunDir`'s ``on_event``); the run directory stays the one record.
:class:`Tracker` turns the events into the state a display needs (phase, evaluations done of
``--search-evals``, the best candidate meeting the budget by the engine's own rule
:func:`~pruner.search.base.best_meeting`, fine-tuning epoch and batch, the current phase's ETA
and, once the first batches are measured, the expected fine-tuning time). Two displays draw it:

* ``bar``: a live `rich` display on a terminal (phase, bar, counts, best so far, ETA), with one
  permanent line per finished phase, epoch and the expected fine-tuning time;
* ``plain``: lines for logs: one per phase change, at most one per tenth of a phase's work
  (evaluations, fine-tuning batches, sensitivity points; one per :data:`PLAIN_EVERY_S` when the
  amount of work is not known), one per epoch and the expected fine-tuning time; no escape codes.

:func:`open_progress` picks one for ``--progress auto|bar|plain|none`` (auto: ``bar`` when the
display's stream, stderr, is a terminal, else ``plain``). The ETA helpers (:func:`rate_eta`,
:func:`finetune_eta`, :func:`training_search_eta` with :class:`EpochPace`: a search that trains the
weights, ``joint``) and :func:`format_seconds` are shared with the studio's progress (``studio/events.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator

from .budget import Budget
from .errors import PrunerError
from .runs.estimate import FINAL_STRUCTURES
from .runs.rundir import PRUNE, SENSITIVITY, Event, Status, is_final

#: ``--progress`` choices.
MODES = ("auto", "bar", "plain", "none")
#: Plain lines: at most one per this many seconds for work of unknown size.
PLAIN_EVERY_S = 30.0

EventFn = Callable[[dict], None]


# ---------------------------------------------------------------------- ETA (shared with the studio)
def rate_eta(t0: float | None, done: float, total: float, last_t: float, now: float) -> float | None:
    """Seconds left of ``total`` units when the ``done`` first took ``last_t - t0`` (less the time
    since ``last_t``); None before a unit is done."""
    if t0 is None or not done:
        return None
    rate = max(0.0, last_t - t0) / done
    return max(0.0, rate * max(0.0, total - done) - max(0.0, now - last_t))


def finetune_eta(t0: float | None, epochs: list[dict], progress: dict | None, ft_epochs: int,
                 now: float) -> float | None:
    """Seconds of fine-tuning left, the stage having begun at ``t0``: from the ``epochs`` (epoch
    events) finished since then (training and validation), else from the running epoch's measured
    seconds per batch (``progress``, the stage's last progress event); None before either."""
    if t0 is None or not ft_epochs:
        return None
    if epochs:
        last = epochs[-1]
        per_epoch = max(0.0, float(last.get("time", now)) - t0) / len(epochs)
        left = max(0, ft_epochs - int(last.get("epoch") or 0))
        return max(0.0, per_epoch * left - max(0.0, now - float(last.get("time", now))))
    p = progress
    if p and p.get("batch") and p.get("batches"):
        per_batch = max(0.0, float(p.get("time", now)) - t0) / float(p["batch"])
        epoch = int(p.get("epoch") or 1)
        left = (float(p["batches"]) - float(p["batch"])) + float(p["batches"]) * max(0, ft_epochs - epoch)
        return max(0.0, per_batch * left - max(0.0, now - float(p.get("time", now))))
    return None


class EpochPace:
    """How fast a search that trains the weights (a strategy in
    :data:`~pruner.runs.estimate.TRAINS_DURING_SEARCH`: ``joint``) goes in this attempt, from its events:
    the strategy writes one event of its own kind per training epoch (``{epoch, ...}``, from 0). Built at
    the attempt's ``searching`` status (``t0``, ``kind``: the strategy) and fed every later event.

    ``done`` is the latest epoch event's epoch + 1 (a resumed search trains every epoch again, so the epochs
    since ``t0`` are that many even when the replay wrote no event); ``per_structure`` the seconds per
    structure scored in the latest epoch seen whole (from its start, the epoch event before it or ``t0``,
    to its last fresh candidate, over its fresh candidates: the weight statistics, the teacher outputs of
    the new weights and the scoring, what the final scoring repeats)."""

    def __init__(self, t0: float | None, kind: str | None):
        self.t0, self.kind = t0, kind
        self.done = 0
        self.last_t: float | None = None
        self.per_structure: float | None = None
        self._start, self._scored, self._scored_t = t0, 0, t0

    def add(self, e: dict) -> None:
        t = e.get("time")
        if not isinstance(t, (int, float)):
            return
        if e.get("kind") == Event.CANDIDATE and not (e.get("meta") or {}).get("cached"):
            self._scored, self._scored_t = self._scored + 1, float(t)
        elif self.kind and e.get("kind") == self.kind and isinstance(e.get("epoch"), int):
            if self._start is not None and e["epoch"] == self.done and self._scored:
                self.per_structure = max(0.0, self._scored_t - self._start) / self._scored
            self.done, self.last_t, self._start, self._scored = e["epoch"] + 1, float(t), float(t), 0

    def eta(self, epochs: int, now: float) -> float | None:
        """Seconds left of the search: the measured seconds per epoch (``t0`` to the latest epoch event, over
        the epochs done) × the epochs left, plus the final scoring (``FINAL_STRUCTURES`` × seconds per
        structure, :mod:`pruner.runs.estimate`), less the time since the latest epoch event; None before the
        first epoch event."""
        if self.t0 is None or self.last_t is None or not self.done:
            return None
        per_epoch = max(0.0, self.last_t - self.t0) / self.done
        final = FINAL_STRUCTURES * (self.per_structure or 0.0)
        return max(0.0, per_epoch * max(0, epochs - self.done) + final - max(0.0, now - self.last_t))


def training_search_eta(pace: EpochPace | None, config: dict, now: float) -> float | None:
    """The searching stage's ETA of a run whose strategy trains the weights during its search (the one rule,
    used by the CLI's :class:`Tracker` and the studio's ``studio.events.progress``): :meth:`EpochPace.eta`
    with the run's ``epochs`` (its strategy parameter, else the declared default). None for other
    strategies and before the first epoch event (then the rate of evaluations stands)."""
    from .runs.estimate import search_training

    if pace is None or not pace.done:
        return None
    training = search_training(str(config.get("strategy") or ""), config.get("strategy_params"))
    return None if training is None else pace.eta(int(training["epochs"]), now)


def format_seconds(s: float | None) -> str:
    """``42 s``, ``3m 05s``, ``2h 07m`` (``—`` for None, NaN, ±inf or a non-number from a damaged record)."""
    if not isinstance(s, (int, float)) or not math.isfinite(s):
        return "—"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:  # compact: it must fit a metric in a six-column row at laptop width
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def plan_text(plan: dict | None) -> str:
    """A ``finetune_plan`` (:func:`pruner.finetune.finetune_plan`) in one line: the expected time and
    what it is made of (empty for None or a damaged record)."""
    try:
        t = plan["timing"]
        teacher = f" + {1000 * float(t['teacher_s']):.2f} teacher" if plan.get("distillation") else ""
        return (f"fine-tuning expected to take at most about {format_seconds(float(plan['seconds']))} "
                f"({int(plan['epochs'])} epoch{'s' if int(plan['epochs']) != 1 else ''} x {int(plan['batches'])} "
                f"batches of {int(plan['batch_size'])}; {t['device']}: {1000 * float(t['train_s']):.2f} ms/image "
                f"train{teacher}, unpruned model)")
    except (KeyError, TypeError, ValueError):
        return ""


# ---------------------------------------------------------------------- state
@dataclass(frozen=True)
class Scored:
    """A candidate as :func:`~pruner.search.base.best_meeting` judges it."""

    top1: float
    cost: float | None
    score: float          # what the search maximises (top-1 unless --score says otherwise)


@dataclass(frozen=True)
class FinetuneEstimate:
    """The expected fine-tuning time of this stage, from its first measured batches."""

    seconds: float
    epochs: int
    batches: int
    per_batch: float
    measured: int


class Tracker:
    """A job's progress from its events (:meth:`add`), for either kind of run (``prune``, ``sensitivity``)."""

    def __init__(self, config: dict, kind: str = PRUNE):
        from .search import strategy_class

        self.kind = kind
        self.config = config
        self.budget: Budget | None = None
        self.expected: int | None = None      # evaluations the search may make (None: not known)
        self.ft_epochs = 0
        if kind == PRUNE:
            self.budget = Budget.parse(str(config["budget"])) if config.get("budget") else None
            uses = strategy_class(str(config.get("strategy", "rl"))).uses_evaluations
            self.expected = int(config["search_evals"]) if uses and config.get("search_evals") else None
            self.ft_epochs = int((config.get("finetune") or {}).get("epochs") or 0)
        self.status = "unknown"
        self.first_time: float | None = None
        self.status_time: float | None = None
        self.evaluations = 0                  # fresh candidate evaluations (cached ones are not counted)
        self.best: Scored | None = None       # the best candidate meeting the budget so far
        self._search_t0: float | None = None  # this attempt's search began, with these evaluations done
        self._search_done0 = 0
        self.last_candidate_time: float | None = None
        self.ft_progress: dict | None = None  # the fine-tuning stage's last progress event
        self.ft_epoch_events: list[dict] = []  # epoch events since the fine-tuning stage began
        self.estimate: FinetuneEstimate | None = None
        self.plan: dict | None = None         # the fine-tuning's expected time, timed before the search
        self.points = (0, 0)                  # sensitivity points done, total
        self.last_point_time: float | None = None
        self.base_seconds: float | None = None
        self.pace: EpochPace | None = None    # this attempt's training epochs (a strategy that trains, joint)

    def add(self, e: dict) -> None:
        kind, t = e.get("kind"), e.get("time")
        t = float(t) if isinstance(t, (int, float)) else time.time()
        self.first_time = t if self.first_time is None else self.first_time
        if self.pace is not None and self.status == Status.SEARCHING:
            self.pace.add({**e, "time": t})
        if kind == Event.STATUS:
            status = str(e.get("status"))
            if status != self.status:
                self.status, self.status_time = status, t
                self.ft_progress, self.ft_epoch_events = None, []
                if status in (Status.SEARCHING, Status.ANALYSING_SENSITIVITY):
                    self._search_t0, self._search_done0 = t, self.evaluations
                if status == Status.SEARCHING:
                    self.pace = EpochPace(t, str(e.get("strategy") or self.config.get("strategy") or ""))
        elif kind == Event.BASE:
            if isinstance(e.get("report_seconds"), (int, float)):
                self.base_seconds = float(e["report_seconds"])
            self.plan = e.get("finetune_plan") if isinstance(e.get("finetune_plan"), dict) else self.plan
        elif kind == Event.CANDIDATE:
            if not (e.get("meta") or {}).get("cached"):
                self.evaluations += 1
                self.last_candidate_time = t
            if e.get("top1") is not None and self.budget is not None:
                from .search.base import best_meeting

                score = e.get("score") if isinstance(e.get("score"), (int, float)) else e["top1"]
                new = Scored(float(e["top1"]), e.get("cost"), float(score))
                self.best = best_meeting([c for c in (self.best, new) if c is not None], self.budget)
        elif kind == Event.PROGRESS and e.get("stage") == self.status == Status.FINE_TUNING:
            self.ft_progress = e
            if self.estimate is None and e.get("batch") and e.get("batches") and self.status_time is not None:
                per_batch = max(0.0, t - self.status_time) / float(e["batch"])
                epochs = max(1, self.ft_epochs - int(e.get("epoch") or 1) + 1)   # a resume starts later
                self.estimate = FinetuneEstimate(per_batch * epochs * int(e["batches"]), epochs, int(e["batches"]),
                                                 per_batch, int(e["batch"]))
        elif kind == Event.EPOCH and self.status == Status.FINE_TUNING:
            self.ft_epoch_events.append(e)
        elif kind == Event.SENSITIVITY:
            self.points = (int(e.get("done") or 0), int(e.get("total") or 0))
            self.last_point_time = t

    # ------------------------------------------------------------------ derived
    def work(self) -> tuple[float, float | None]:
        """The current phase's work: units done and the total (None: not known or no units)."""
        if self.status == Status.SEARCHING:
            return float(self.evaluations), (float(self.expected) if self.expected else None)
        if self.status == Status.ANALYSING_SENSITIVITY:
            done, total = self.points
            return float(done), (float(total) if total else None)
        if self.status == Status.FINE_TUNING and self.ft_epochs:
            p = self.ft_progress
            if p and p.get("batches"):
                batches = float(p["batches"])
                return (int(p.get("epoch") or 1) - 1) * batches + float(p.get("batch") or 0), batches * self.ft_epochs
            done = float(self.ft_epoch_events[-1].get("epoch") or 0) if self.ft_epoch_events else 0.0
            return done, float(self.ft_epochs)
        return 0.0, None

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left in the current phase, from what this run measured (None when not known)."""
        now = time.time() if now is None else now
        trained = training_search_eta(self.pace, self.config, now) if self.status == Status.SEARCHING else None
        if trained is not None:
            return trained
        if self.status == Status.SEARCHING and self.expected and self.last_candidate_time is not None:
            return rate_eta(self._search_t0, self.evaluations - self._search_done0,
                            self.expected - self._search_done0, self.last_candidate_time, now)
        if self.status == Status.ANALYSING_SENSITIVITY and self.points[1] and self.last_point_time is not None:
            done, total = self.points
            return rate_eta(self._search_t0, done, total, self.last_point_time, now)
        if self.status == Status.FINE_TUNING:
            return finetune_eta(self.status_time, self.ft_epoch_events, self.ft_progress, self.ft_epochs, now)
        if self.status == Status.EXPORTING:
            return self.base_seconds   # the report that follows repeats the base model's measured report
        if self.status == Status.REPORTING and self.base_seconds is not None and self.status_time is not None:
            return max(0.0, self.base_seconds - max(0.0, now - self.status_time))
        return None

    def counts_text(self) -> str:
        """The current phase's counts: ``evaluations 3/10``, ``epoch 1/3, batch 20/390``, ``points 9/90``."""
        if self.status == Status.SEARCHING:
            return f"evaluations {self.evaluations}/{self.expected}" if self.expected else \
                f"evaluations {self.evaluations}"
        if self.status == Status.ANALYSING_SENSITIVITY:
            done, total = self.points
            return f"points {done}/{total}" if total else ""
        if self.status == Status.FINE_TUNING and self.ft_epochs:
            p = self.ft_progress
            done = int(self.ft_epoch_events[-1].get("epoch") or 0) if self.ft_epoch_events else 0
            running = min(self.ft_epochs, max(done + 1, int((p or {}).get("epoch") or 0)))
            batch = f", batch {p.get('batch')}/{p.get('batches')}" if p and p.get("epoch") == running else ""
            return f"epoch {running}/{self.ft_epochs}{batch}"
        return ""

    def best_text(self) -> str:
        """``best top-1 91.20% within flops=0.5`` (a search only; empty elsewhere)."""
        if self.kind != PRUNE or self.budget is None or self.status != Status.SEARCHING:
            return ""
        if self.best is None:
            return f"no candidate within {self.budget} yet" if self.evaluations else ""
        return f"best top-1 {self.best.top1:.2f}% within {self.budget}"

    def estimate_text(self) -> str:
        est = self.estimate
        if est is None:
            return ""
        return (f"fine-tuning expected to take about {format_seconds(est.seconds)} ({est.epochs} epoch"
                f"{'s' if est.epochs != 1 else ''} x {est.batches} batches x {est.per_batch:.2f} s a batch, "
                f"measured on {est.measured} batch{'es' if est.measured != 1 else ''})")

    def stamp(self, t: float | None) -> str:
        """Time since the first event, ``[mm:ss]``."""
        s = max(0, int((t if t is not None else time.time()) - (self.first_time or 0)))
        return f"[{s // 60:02d}:{s % 60:02d}]"


def _eta_part(tracker: Tracker, now: float) -> str:
    eta = tracker.eta(now)
    return f"ETA {format_seconds(eta)}" if eta is not None and not is_final(tracker.status) else ""


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------- displays
class _Display:
    """An observer of a job's events drawing a :class:`Tracker`; a display that fails to draw goes
    quiet (it never stops the job)."""

    def __init__(self, tracker: Tracker, stream: IO[str]):
        self.tracker, self.stream = tracker, stream
        self._lock = threading.Lock()
        self._broken = False
        self._estimated = False
        self._planned = False

    def __call__(self, event: dict) -> None:
        if self._broken:
            return
        with self._lock:
            before = self.tracker.status
            self.tracker.add(event)
            try:
                self.show(event, before)
            except Exception:  # noqa: BLE001 (a closed terminal or pipe: the job goes on without a display)
                self._broken = True

    def plan_line(self) -> str | None:
        """The fine-tuning's expected time timed before the search, once."""
        if self._planned or self.tracker.plan is None:
            return None
        self._planned = True
        return plan_text(self.tracker.plan) or None

    def estimate_line(self) -> str | None:
        """The expected fine-tuning time, once (when it becomes known)."""
        if self._estimated or self.tracker.estimate is None:
            return None
        self._estimated = True
        return self.tracker.estimate_text()

    def epoch_line(self, e: dict, now: float) -> str:
        t = self.tracker
        val = f"val top-1 {e['val_top1']:.2f}%" if isinstance(e.get("val_top1"), (int, float)) else ""
        loss = f"loss {e['loss']:.4f}" if isinstance(e.get("loss"), (int, float)) else ""
        took = f"{format_seconds(e.get('seconds'))}" if isinstance(e.get("seconds"), (int, float)) else ""
        return (f"fine-tuning: epoch {e.get('epoch')}/{t.ft_epochs or e.get('epochs')} done"
                + (f" in {took}" if took else "") + (": " + _join(loss, val) if loss or val else "")
                + (f"; {_eta_part(t, now)}" if _eta_part(t, now) and e.get("epoch") != t.ft_epochs else ""))

    def show(self, event: dict, before: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class PlainDisplay(_Display):
    """Lines for logs (no escape codes): phase changes, at most one line per tenth of a phase's work
    (or per :data:`PLAIN_EVERY_S` for work of unknown size), epochs, the expected fine-tuning time."""

    def __init__(self, tracker: Tracker, stream: IO[str], every_s: float = PLAIN_EVERY_S):
        super().__init__(tracker, stream)
        self.every_s = every_s
        self._tenth = 0
        self._pending = ""      # the last progress line held back by the rate limit
        self._last_line: float | None = None

    def _print(self, t: float | None, text: str) -> None:
        self.stream.write(f"{self.tracker.stamp(t)} {text}\n")
        self.stream.flush()
        self._last_line = t

    def show(self, e: dict, before: str) -> None:
        tr, t, kind = self.tracker, e.get("time"), e.get("kind")
        now = float(t) if isinstance(t, (int, float)) else time.time()
        if kind == Event.STATUS and tr.status != before:
            if self._pending:   # the closing counts of the phase that ended, when rate limiting held them back
                self._print(now, self._pending)
            self._tenth, self._pending = 0, ""
            self._print(now, f"phase: {tr.status}")
        elif kind == Event.BASE:
            line = self.plan_line()
            if line:
                self._print(now, line)
        elif kind == Event.LOG and e.get("level") == "warning":
            self._print(now, f"warning: {e.get('message')}")
        elif kind == Event.EPOCH and tr.status == Status.FINE_TUNING:
            self._print(now, self.epoch_line(e, now))
        elif kind in (Event.CANDIDATE, Event.SENSITIVITY) or (kind == Event.PROGRESS and tr.status == Status.FINE_TUNING):
            line = self.estimate_line()
            if line:
                self._print(now, line)
            text = f"{tr.status}: " + _join(tr.counts_text(), tr.best_text(), _eta_part(tr, now))
            done, total = tr.work()
            if total:
                tenth = int(10 * min(done, total) // total)
                due = tenth > self._tenth
                self._tenth = max(tenth, self._tenth)
            else:
                due = self._last_line is None or now - self._last_line >= self.every_s
            if due:
                self._print(now, text)
            self._pending = "" if due else text


class BarDisplay(_Display):
    """A live `rich` display on a terminal: phase, bar, counts, best so far, elapsed and ETA, with a
    permanent line per phase (the search's and the analysis's closing counts), epoch and the
    expected fine-tuning time. The live part is gone once the run ends (:meth:`close`)."""

    def __init__(self, tracker: Tracker, stream: IO[str]):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        super().__init__(tracker, stream)

        class EtaColumn(ProgressColumn):
            """The engine's ETA of the phase (measured by the run, as the studio shows it), redrawn live."""

            def render(self, task) -> Text:
                return Text(_eta_part(tracker, time.time()), style="progress.remaining")

        self.console = Console(file=stream, force_terminal=True, highlight=False)
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[best]}"),
                                 TimeElapsedColumn(), EtaColumn(), console=self.console, transient=True,
                                 refresh_per_second=4, redirect_stdout=False, redirect_stderr=True)
        self._task = None
        self._closed = False
        self._phase_line = ""   # the closing counts of the phase shown now

    def _line(self, text: str, t: float | None = None) -> None:
        self.progress.console.print(f"{self.tracker.stamp(t)} {text}", markup=False, highlight=False)

    def show(self, e: dict, before: str) -> None:
        tr, kind = self.tracker, e.get("kind")
        t = e.get("time")
        now = float(t) if isinstance(t, (int, float)) else time.time()
        if self._closed:
            return
        self.progress.start()   # (once: a started display ignores it)
        if kind == Event.STATUS and tr.status != before:
            if self._phase_line:
                self._line(self._phase_line, now)
                self._phase_line = ""
            self._line(f"phase: {tr.status}", now)
            if self._task is not None:
                self.progress.remove_task(self._task)
            self._task = None
            if is_final(tr.status):
                self.close()
                return
        if kind == Event.EPOCH and tr.status == Status.FINE_TUNING:
            self._line(self.epoch_line(e, now), now)
        if kind == Event.LOG and e.get("level") == "warning":
            self._line(f"warning: {e.get('message')}", now)
        for line in (self.plan_line(), self.estimate_line()):
            if line:
                self._line(line, now)
        done, total = tr.work()
        fields = {"counts": tr.counts_text(), "best": tr.best_text()}
        if self._task is None:
            self._task = self.progress.add_task(tr.status, total=total, completed=done, **fields)
        else:
            self.progress.update(self._task, total=total, completed=done, **fields)
        if tr.status in (Status.SEARCHING, Status.ANALYSING_SENSITIVITY) and fields["counts"]:
            self._phase_line = f"{tr.status}: " + _join(fields["counts"], fields["best"])

    def close(self) -> None:
        self._closed = True
        self.progress.stop()


def choose_mode(mode: str, stream: IO[str]) -> str:
    """``--progress``'s display for ``stream``: ``auto`` is ``bar`` on a terminal (not ``TERM=dumb``), else ``plain``."""
    if mode not in MODES:
        raise PrunerError(f"--progress {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty and os.environ.get("TERM") != "dumb" else "plain"


@contextlib.contextmanager
def open_progress(mode: str, config: dict, *, kind: str = PRUNE, stream: IO[str] | None = None,
                  earlier: Iterable[dict] = ()) -> Iterator[EventFn | None]:
    """The observer to hand a job (``on_event``) for ``--progress mode`` (None for ``none``), drawing
    on ``stream`` (default stderr, so stdout keeps only the summary). ``earlier``: the events a
    resumed run wrote before (counted, not shown). The display is closed when the block ends."""
    stream = sys.stderr if stream is None else stream
    chosen = choose_mode(mode, stream)
    if chosen == "none":
        yield None
        return
    if kind not in (PRUNE, SENSITIVITY):
        raise PrunerError(f"unknown run kind {kind!r}; use {PRUNE} or {SENSITIVITY}")
    tracker = Tracker(config, kind)
    for e in earlier:
        tracker.add(e)
    if tracker.status != "unknown":
        tracker.status, tracker.first_time = "resuming", None   # this attempt's phases are shown from the start
    display: _Display = BarDisplay(tracker, stream) if chosen == "bar" else PlainDisplay(tracker, stream)
    try:
        yield display
    finally:
        with contextlib.suppress(Exception):
            display.close()


__all__ = ["BarDisplay", "EpochPace", "FinetuneEstimate", "MODES", "PlainDisplay", "Scored",
           "Tracker", "choose_mode", "finetune_eta", "format_seconds", "open_progress", "plan_text", "rate_eta",
           "training_search_eta"]


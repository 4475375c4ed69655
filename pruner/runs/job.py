"""The pipeline of one run: search → fine-tune with distillation → ONNX export and check → report.

:func:`run_job` (a new run from a config) and :func:`resume_job` (a run directory) are the single
code path behind ``python -m pruner prune``, the Python API and the studio's background jobs; their
stages are the methods of :class:`_Pipeline`, each writing its status
(:class:`~pruner.runs.rundir.Status`) first. It writes the run directory as it goes, stops within
one candidate evaluation (or one fine-tuning batch) when ``should_stop`` says so, and
:func:`resume_job` continues an interrupted run: finished search evaluations are replayed
from ``events.jsonl`` without re-evaluating (and the replayed strategy's events are not
written twice: :class:`~pruner.runs.rundir.ReplayEmitter`), the finished search is read from
``state/search.json``, and fine-tuning restarts from its last epoch checkpoint.

A job is the one writer of its run directory (it holds ``job.lock``; a second writer is
refused before it writes anything). SIGTERM and SIGINT (Ctrl-C) cancel it like a cancel
request, so it still writes a ``cancelled`` summary; running out of memory is a one-line
``failed`` summary saying what to lower. A resume may change the fine-tuning settings and
the reporting (:data:`RESUME_OVERRIDES`), never what the search means.
"""

from __future__ import annotations

import copy
import errno
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .. import __version__
from ..atomic import torch_save_atomic
from ..budget import Budget, cost_floor
from ..csv_cells import SafeWriter
from ..data import DataBundle, ImageTensors, batches, load_data
from ..errors import CancelledError, PrunerError
from ..evaluate import accuracy
from ..export import export_onnx, save_pruned_program
from ..finetune import TIMING_BATCH, finetune, finetune_plan, time_steps
from ..measure import ort_latency_ms
from ..models import build_model, parse_model_spec
from ..models.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint  # noqa: F401 (re-exported)
from ..pruning.graph import model_graph
from ..pruning.space import PruningRecord, frozen_note
from ..pruning.sparsity import make_permanent, measure_sparsity, onnx_sparsity
from ..quantize import check_calibration_images, quantize_int8, verify_int8
from ..search import SearchContext, make_strategy, run_search
from ..search.base import best_meeting
from ..search.evaluator import Evaluator, EvaluatorSettings
from .config import RunConfig
from .rundir import (BASE_STATE, CONFIG_FILE, FAILED_ON_SETTINGS, PRUNE, SENSITIVITY, SENSITIVITY_RESULT, SUMMARY_FILE,
                     Event, RunDir, RunLock, Status, config_with_kind, read_json, read_sensitivity, run_config,
                     write_json_atomic)
from .session import Session, StopFn
from .workers import attach_workers

EventFn = Callable[[dict], None]

# Settings a resume may change: how the chosen structure is fine-tuned and reported. Everything
# else (model, data, split, budget, strategy and its parameters, search sizes, seed, device)
# defines the search the resumed run continues, so changing it is refused.
RESUME_OVERRIDES = ("finetune.epochs", "finetune.lr", "finetune.momentum", "finetune.weight_decay",
                    "finetune.batch_size", "finetune.kd_temperature", "finetune.kd_weight",
                    "finetune.max_batches_per_epoch", "finetune.warmup", "report_images", "export", "workers", "ray_address",
                    "scoring_threads", "quantize", "calibration_images")


def apply_resume_overrides(stored: dict, overrides: dict | None) -> tuple[RunConfig, dict]:
    """The run's stored config with ``overrides`` (dotted keys such as ``finetune.batch_size``)
    applied and validated, and the changes made (``{key: [old, new]}``, equal values left out).
    A key outside :data:`RESUME_OVERRIDES` is a PrunerError."""
    new = copy.deepcopy(stored)
    changes: dict = {}
    for key, value in (overrides or {}).items():
        if key not in RESUME_OVERRIDES:
            raise PrunerError(f"a resume cannot change {key}: it would change what the search means; start a new "
                              f"run instead (a resume may change {', '.join(RESUME_OVERRIDES)})")
        *parents, leaf = key.split(".")
        node = new
        for part in parents:
            node = node.setdefault(part, {})
        if node.get(leaf) != value:
            changes[key] = [node.get(leaf), value]
            node[leaf] = value
    return RunConfig.from_dict(new), changes


class _StopOnSignal:
    """SIGTERM/SIGINT while a job runs (main thread only): the first one raises CancelledError
    where the job is, so it takes the cancel path and writes a ``cancelled`` summary; once the
    job is writing its summary (:meth:`disarm`) signals are only noted."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._armed = False
        self._old: dict = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            self._armed = True
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            return
        self.received = signal.Signals(signum).name
        if self._armed:
            raise CancelledError(f"stopped by {self.received}")

    def disarm(self) -> None:
        self._armed = False

    def __exit__(self, *exc) -> None:
        self._armed = False
        for sig, old in self._old.items():
            if old is not None:   # None: a handler installed from C, which cannot be put back
                signal.signal(sig, old)

    @property
    def message(self) -> str:
        return f"cancelled by {self.received}; resume the run to continue it"


# oneDNN (PyTorch's CPU kernels) reports a failed allocation for a layer's buffers as this generic error; on a
# machine short of RAM it is what a large fine-tuning batch raises instead of "out of memory"
_ONEDNN_ALLOCATION = "could not create a primitive"


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text
                                              or _ONEDNN_ALLOCATION in text)


def _oom_message(exc: BaseException, phase: str, config: RunConfig, out: str | Path) -> str:
    where = "the GPU" if "CUDA" in str(exc) else "the machine (RAM)"
    if _ONEDNN_ALLOCATION in str(exc):
        where += ", as oneDNN's 'could not create a primitive'"
    bs = config.finetune.batch_size
    if phase == Status.FINE_TUNING:
        return (f"out of memory on {where} while fine-tuning with batch size {bs}: resume with a smaller batch size "
                f"(python -m pruner prune --resume --out {out} --batch-size {max(1, bs // 2)}, or Resume on the Runs "
                "page)")
    return (f"out of memory on {where} while {phase}: the search scores --search-images images "
            f"(now {config.search_images}) in batches of up to {EvaluatorSettings().batch_size}, so start a new run with fewer search images or "
            f"smaller images; fine-tuning uses --batch-size (now {bs}), which a resume may lower")


#: errno values of a write that failed because of the disk, not the program
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


def _write_failure(exc: BaseException, out: str | Path) -> str | None:
    """A one-line message for a write that failed on a full, read-only or failing disk (an OSError,
    or torch's zip writer's RuntimeError on a full disk); None for anything else."""
    disk = isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS
    if not disk and isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "file write failed" in str(exc)):
        try:
            disk = shutil.disk_usage(out).free < 16 * 2**20
        except OSError:
            disk = False
    if not disk:
        return None
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no space left on the device"
    return (f"could not write to {out} ({why}): free some space on that disk, then resume the run "
            f"(python -m pruner prune --out {out} --resume, or Resume on the Runs page)")


def _record_overrides(run: RunDir, config: RunConfig, changes: dict) -> None:
    """A resume's changed settings: into config.json (so a later resume keeps them) and the history
    in ``state/overrides.json``."""
    write_json_atomic(run.config_path, config.to_dict())
    path = run.overrides_path
    history = (read_json(path) or {}).get("resumes", [])
    history.append({"time": time.time(), "changes": changes})
    write_json_atomic(path, {"resumes": history})
def _layers(base: nn.Module, pruned: nn.Module) -> list[dict]:
    after = dict(pruned.named_modules())
    rows = []
    for name, m in base.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            p = after.get(name)
            before_ch = getattr(m, "out_channels", getattr(m, "out_features", None))
            after_ch = getattr(p, "out_channels", getattr(p, "out_features", None)) if p is not None else None
            rows.append({"name": name, "before": before_ch, "after": after_ch})
    return rows


def _write_candidates_csv(path: Path, run: RunDir, names: list[str], budget: Budget | None = None) -> None:
    """Every candidate, with whether it meets ``budget`` (``Budget.feasible``: only those can be the best)
    and whether it is a sensitivity probe (one group pruned alone, not a solution)."""
    rows = run.events(Event.CANDIDATE)
    with open(path, "w", newline="") as fh:
        w = SafeWriter(fh)
        w.writerow(["candidate_id", "step", "top1", "kl", "score", "reward", "cost", "meets_budget", "probe", "macs",
                    "params", "latency_ms", *names])
        for e in rows:
            meets = None if budget is None else budget.feasible(e.get("cost"))
            probe = (e.get("meta") or {}).get("probe") is not None
            w.writerow([e.get("candidate_id"), e.get("step"), e.get("top1"), e.get("kl"), e.get("score"), e.get("reward"),
                        e.get("cost"), meets, probe, e.get("macs"), e.get("params"), e.get("latency_ms"),
                        *e.get("keep_ratios", [])])


def _take_lock(run: RunDir, lock: RunLock | None) -> RunLock:
    """The lock handed over by a JobManager (still on this run directory), else a fresh one."""
    if lock is not None and lock.at_path():
        return lock
    if lock is not None:   # the run directory was deleted or replaced while the job was queued
        lock.release()
    return run.lock()


def run_job(config: RunConfig, out: str | Path, *, should_stop: StopFn | None = None, lock: RunLock | None = None,
            on_event: EventFn | None = None) -> dict:
    """Run the whole pipeline of a new run with ``config`` into the run directory ``out``; returns the
    summary (also on failure). An interrupted run is continued by :func:`resume_job`.

    ``lock`` is the run's lock when a JobManager hands it over; without it the job takes the lock
    itself. Refusals (another writer, a finished or non-empty directory) raise PrunerError before
    anything is written. ``on_event`` is handed every event the job writes, once it is in
    ``events.jsonl`` (the CLI's progress display: :mod:`pruner.progress`).
    """
    run = RunDir(out, on_event=on_event)
    run.check_new()
    return _run_locked(config, run, resume=False, should_stop=should_stop, changes={}, lock=lock)


def resume_job(out: str | Path, *, overrides: dict | None = None, should_stop: StopFn | None = None,
               lock: RunLock | None = None, on_event: EventFn | None = None) -> dict:
    """Continue the interrupted run in ``out`` with its stored config and ``overrides`` (see
    :func:`apply_resume_overrides`); returns the summary (a done run's at once). A run directory
    without a readable config or a forbidden override is a PrunerError before anything is written;
    ``should_stop``, ``lock``, ``on_event`` as in :func:`run_job`."""
    run = RunDir(out, on_event=on_event)
    if not run.config_path.exists():
        raise PrunerError(f"nothing to resume in {out}: it has no {CONFIG_FILE}")
    stored = run.config()
    if stored is None:
        raise PrunerError(f"cannot resume {out}: its {CONFIG_FILE} is unreadable")
    config, changes = apply_resume_overrides(stored, overrides)
    return _run_locked(config, run, resume=True, should_stop=should_stop, changes=changes, lock=lock)


def _run_locked(config: RunConfig, run: RunDir, *, resume: bool, should_stop: StopFn | None, changes: dict,
                lock: RunLock | None) -> dict:
    lock = _take_lock(run, lock)
    try:
        if resume and run.summary() and run.summary().get("status") == Status.DONE:
            return run.summary()
        with _StopOnSignal() as signals:
            return _run_job(config, run, resume=resume, should_stop=should_stop, changes=changes, signals=signals)
    finally:
        lock.release()


def _run_job(config: RunConfig, run: RunDir, *, resume: bool, should_stop: StopFn | None, changes: dict,
             signals: _StopOnSignal) -> dict:
    run.create(config.to_dict(), resume=resume)
    if changes:
        _record_overrides(run, config, changes)
    if resume and run.summary_path.exists():
        run.summary_path.unlink()  # an interrupted/cancelled run is being continued
    user_stop = should_stop or (lambda: False)
    pipeline = _Pipeline(config, run, resume=resume, stop=lambda: signals.received is not None or user_stop())
    summary = pipeline.summary
    if changes:
        summary["overrides"] = changes
    try:
        run.event(Event.STATUS, status=Status.STARTED, resume=resume, **({"overrides": changes} if changes else {}))
        if changes:
            run.event(Event.LOG, level="info", message="resumed with " + ", ".join(
                f"{k} {old} -> {new}" for k, (old, new) in changes.items()))
        pipeline.prepare()
        found = pipeline.search()
        pruned, record = pipeline.finetune(found)
        onnx_path = pipeline.export(pruned, record)
        pipeline.report(pruned, onnx_path)
        if config.quantize:
            pipeline.quantize()
        summary["status"] = Status.DONE
        signals.disarm()
    except CancelledError:
        signals.disarm()
        summary["status"] = Status.CANCELLED
        summary["error"] = signals.message if signals.received else "cancelled by the user"
        pipeline.cancelled_search()
    except PrunerError as exc:
        signals.disarm()
        summary["status"] = Status.FAILED
        summary["error"] = str(exc)
        summary["failure"] = FAILED_ON_SETTINGS   # a resume with the same settings would fail again
    except Exception as exc:  # out of memory, or a bug: keep the traceback in the log, a one-line error
        signals.disarm()
        summary["status"] = Status.FAILED
        if _out_of_memory(exc):
            summary["error"] = _oom_message(exc, run.status(), config, run.path)
        else:
            summary["error"] = _write_failure(exc, run.path) or f"internal error: {type(exc).__name__}: {exc}"
        try:
            run.event(Event.LOG, level="error", message=traceback.format_exc())
        except OSError:
            pass   # the disk is full: the summary below says so, if it can be written at all
    signals.disarm()
    if summary["status"] == Status.FAILED and signals.received:   # the signal surfaced as another error
        summary.update(status=Status.CANCELLED, error=signals.message)
    summary["seconds"] = time.time() - pipeline.t_start
    try:
        run.event(Event.STATUS, status=summary["status"], error=summary["error"])
        run.write_summary(summary)
    except OSError as exc:   # a full disk at the very end: the caller (CLI, manager) gets the one line
        raise PrunerError(_write_failure(exc, run.path) or f"cannot write the summary of {run.path}: {exc}") from None
    return summary


class _BatchProgress:
    """``finetune``'s per-batch callback as ``progress`` events: at most one every ``every_s``
    seconds, and the last batch of each epoch (what the studio's fine-tuning ETA is measured from)."""

    def __init__(self, run: RunDir, epochs: int, every_s: float = 1.0):
        self.run, self.epochs, self.every_s = run, epochs, every_s
        self._last = time.monotonic()

    def __call__(self, epoch: int, batch: int, batches: int) -> None:
        now = time.monotonic()
        if batch >= batches or now - self._last >= self.every_s:
            self._last = now
            self.run.event(Event.PROGRESS, stage=Status.FINE_TUNING, epoch=epoch, epochs=self.epochs, batch=batch,
                           batches=batches)


class _Pipeline:
    """The stages of one pruning run, in order: :meth:`prepare` (data, model, pruning space, the
    unpruned model's report), :meth:`search`, :meth:`finetune`, :meth:`export`, :meth:`report`.
    Each writes its status event first and its part of ``summary``; each resumes from the run
    directory's state where the interrupted run left it."""

    def __init__(self, config: RunConfig, run: RunDir, *, resume: bool, stop: StopFn):
        self.config, self.run, self.resume, self.stop = config, run, resume, stop
        self.t_start = time.time()
        self.summary: dict = {"status": Status.RUNNING, "error": None, "version": __version__,
                              "protocol": config.protocol,
                              "budget": {"kind": config.budget_obj.kind, "target": config.budget_obj.value}}
        self.session: Session | None = None
        self.evaluator: Evaluator | None = None
        self.base: dict = {}
        self.artifacts: dict = {}   # into the summary once the run is done

    @property
    def base_state(self) -> Path:
        return self.run.state_dir / BASE_STATE

    # ------------------------------------------------------------------ prepare
    def prepare(self) -> None:
        config, run, summary = self.config, self.run, self.summary
        session = self.session = Session(config, run)
        config.budget_obj.check_reachable(cost_floor(session.space, config.budget_obj.kind))  # before any scoring
        data = session.data
        if config.quantize:   # a calibration count the fine-tune split cannot give: refused before any search
            check_calibration_images(config.calibration_images, len(data.fit))
        summary["data"] = data.describe()
        summary["preprocess"] = {"mean": list(data.mean), "std": list(data.std), "input_size": list(data.input_size)}
        summary["groups"] = [g.to_dict() for g in session.space.groups]
        summary["frozen"] = session.space.frozen_report()
        note = frozen_note(summary["frozen"])
        if note and not self.resume:
            run.event(Event.LOG, level="warning", message=note)
        run.event(Event.STATUS, status=Status.MEASURING_BASE)
        base = read_json(self.base_state) if self.resume else None
        if base is None:
            t0 = time.perf_counter()
            base = session.report(session.model)
            base["report_seconds"] = time.perf_counter() - t0   # what the final report's ETA is measured from
            write_json_atomic(self.base_state, base)
        self.base = summary["base"] = base
        plan = self.finetune_plan()
        if plan:
            summary["finetune_plan"] = plan
        run.event(Event.BASE, groups=[g.to_dict() for g in session.space.groups], **base,
                  **({"finetune_plan": plan} if plan else {}))

    def finetune_plan(self) -> dict | None:
        """The fine-tuning's expected seconds, from a short timing of the unpruned model on the run's
        device (:func:`~pruner.finetune.time_steps`), before the search: None without fine-tuning or
        when the timing fails (it is a nicety: the run goes on)."""
        config, session = self.config, self.session
        ft = config.finetune
        if ft.epochs <= 0:
            return None
        try:
            timing = time_steps(session.model, session.data.input_size, session.data.num_classes,
                                device=session.device, batch_size=min(TIMING_BATCH, ft.batch_size), amp=ft.amp,
                                channels_last=ft.channels_last)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory at this batch: the fine-tuning will say
            self.run.event(Event.LOG, level="warning", message=f"could not time a fine-tuning step ({exc})")
            return None
        return finetune_plan(timing, ft, len(session.data.fit))

    # ------------------------------------------------------------------ search
    def search(self) -> dict:
        """The chosen structure (``state/search.json``): searched now, or read back on a resume."""
        config, run, session = self.config, self.run, self.session
        found = run.search_result() if self.resume else None
        if found is None:
            found = self._search()
        if found.get("model"):
            saved = torch.load(run.path / found["model"], map_location=session.device, weights_only=True)
            session.model.load_state_dict(saved["state_dict"])
            session.ranking = list(saved["ranking"])
        search = {"strategy": config.strategy, "evaluations": found["evaluations"],
                  "best_val_top1": found["best_val_top1"], "seconds": found["seconds"],
                  "round_to": session.space.round_to, "workers": found.get("workers"),
                  "scoring_threads": found.get("scoring_threads"),
                  "params": make_strategy(config.strategy, **config.strategy_params).params,
                  "answer_is_start": bool(found.get("answer_is_start")),
                  "start_source": found.get("start_source")}
        if found.get("latency_check"):
            search["latency_check"] = found["latency_check"]
        if search["answer_is_start"]:
            search["note"] = (f"the answer is the search's starting point ({found.get('start_source')}): no "
                              f"other candidate scored higher in {found['evaluations']} evaluations")
        self.summary["search"] = search
        run.event(Event.STATUS, status=Status.SEARCH_DONE, **search)
        return found

    def _search(self) -> dict:
        config, run, session = self.config, self.run, self.session
        run.event(Event.STATUS, status=Status.SEARCHING, strategy=config.strategy)
        evaluator = self.evaluator = session.evaluator(
            max_evals=config.search_evals, should_stop=self.stop,
            on_candidate=lambda c: run.event(Event.CANDIDATE, **c.to_event()))
        emit = run.event
        if self.resume:   # the replay: earlier evaluations served from the log, its events not written twice
            evaluator.preload(run.events(Event.CANDIDATE))
            emit = run.replay_emitter()
        strategy = make_strategy(config.strategy, **config.strategy_params)
        ctx = SearchContext(evaluator, seed=config.seed, scores=session.scores, importance=config.importance,
                            emit=lambda kind, **f: emit(kind, **f), read_analysis=read_sensitivity)
        t0 = time.perf_counter()
        with attach_workers(evaluator, config, emit=ctx.emit) as pool:
            if pool is not None:   # the workers' start-up ("starting workers") is over: searching again
                run.event(Event.STATUS, status=Status.SEARCHING, strategy=config.strategy, workers=config.workers)
            best = run_search(strategy, ctx)
            worker_stats = pool.stats() if pool is not None else None
        found = {"counts": best.counts, "candidate_id": best.id, "best_val_top1": best.top1,
                 "score": config.score, "best_score": best.score, "best_kl": best.kl,
                 "evaluations": evaluator.evaluations, "seconds": time.perf_counter() - t0,
                 "cost": best.cost, "verified_cost": best.meta.get("verified_latency"),
                 "latency_check": best.meta.get("latency_check"),
                 "timing": evaluator.timing, "answer_is_start": bool(best.meta.get("is_start")),
                 "start_source": best.meta.get("start_source"),
                 "workers": worker_stats, "scoring_threads": None if pool is not None else evaluator.scoring_threads()}
        if evaluator.model_version > 0:  # the strategy trained the weights (joint): prune those
            torch_save_atomic({"state_dict": {k: v.detach().cpu() for k, v in evaluator.model.state_dict().items()},
                               "ranking": [r.cpu() for r in evaluator.ranking]}, run.state_dir / "search_model.pt")
            found["model"] = "state/search_model.pt"
        write_json_atomic(run.search_state_path, found)
        return found

    def cancelled_search(self) -> None:
        """A cancelled search's summary: the best candidate meeting the budget so far (Budget.feasible)."""
        if self.evaluator is None:
            return
        b = best_meeting(self.evaluator.candidates, self.config.budget_obj)
        self.summary["search"] = {
            "strategy": self.config.strategy, "evaluations": self.evaluator.evaluations,
            "best_val_top1": b.top1 if b else None, "best_counts": b.counts if b else None,
            "best_candidate": b.id if b else None, "seconds": time.time() - self.t_start,
            "note": None if b else "no candidate meeting the budget was evaluated before cancel"}

    # ------------------------------------------------------------------ fine-tune
    def finetune(self, found: dict) -> tuple[nn.Module, PruningRecord]:
        """The chosen structure built, recalibrated and (with epochs) fine-tuned from the last checkpoint."""
        config, run, session = self.config, self.run, self.session
        pruned, record = session.build_pruned(found["counts"])
        ft_dir = run.finetune_dir
        done_epochs = sorted(int(p.stem.split("-")[1]) for p in ft_dir.glob("epoch-*.pt")) if self.resume else []
        if config.finetune.epochs > 0:
            run.event(Event.STATUS, status=Status.FINE_TUNING, epochs=config.finetune.epochs)
            teacher = copy.deepcopy(session.model)
            val = session.data.search.subset(min(config.search_images, len(session.data.search)))
            self.summary["finetune"] = finetune(
                pruned, session.data, config.finetune, teacher=teacher, device=session.device, eval_data=val,
                on_epoch=lambda rec: run.event(Event.EPOCH, **rec), checkpoint_dir=ft_dir,
                start_epoch=done_epochs[-1] if done_epochs else 0, should_stop=self.stop,
                on_batch=_BatchProgress(run, config.finetune.epochs))
        pruned.eval()
        if session.sparse:  # masks folded into the weights, the budget checked on the zeros they hold
            self.summary["sparsity"] = measure_sparsity(make_permanent(pruned), session.space, config.budget_obj)
        return pruned, record

    # ------------------------------------------------------------------ export
    def export(self, pruned: nn.Module, record: PruningRecord) -> Path | None:
        """ONNX (verified in ONNX Runtime) and ``.pt2`` when ``export`` is on, and the checkpoint;
        returns the ONNX file (None without export)."""
        config, run, session, data = self.config, self.run, self.session, self.session.data
        run.event(Event.STATUS, status=Status.EXPORTING)
        artifacts = self.artifacts
        onnx_path = None
        if config.export:
            onnx_path = run.artifact_path("onnx")
            rep = export_onnx(pruned, onnx_path, input_size=data.input_size, mean=data.mean, std=data.std,
                              class_names=data.classes, sample=self._sample(),
                              metadata={"model": config.model, "budget": config.budget, "strategy": config.strategy})
            self.summary["onnx_max_abs_diff"] = rep.max_abs_diff
            if session.sparse:
                self.summary["sparsity"]["onnx"] = onnx_sparsity(onnx_path)
            save_pruned_program(pruned, run.artifact_path("program"), input_size=data.input_size)
            artifacts.update({"onnx": run.artifact_ref("onnx"), "program": run.artifact_ref("program")})
        save_checkpoint(run.artifact_path("checkpoint"), session, pruned, record)
        artifacts["checkpoint"] = run.artifact_ref("checkpoint")
        return onnx_path

    def _sample(self) -> torch.Tensor:
        data = self.session.data
        sample_x, _ = next(batches(data.report.subset(8), 8, mean=data.mean, std=data.std))
        return sample_x

    # ------------------------------------------------------------------ report
    def report(self, pruned: nn.Module, onnx_path: Path | None) -> None:
        """The pruned model on the report split (accuracy, cost, latency paired with the original),
        the original's ONNX Runtime latency when missing, the budget achieved, layers, candidates.csv."""
        config, run, session, summary, base = self.config, self.run, self.session, self.summary, self.base
        data = session.data
        run.event(Event.STATUS, status=Status.REPORTING)
        summary["pruned"] = session.report(pruned, onnx_path=onnx_path, reference=session.model)
        if base.get("ort_latency_ms") is None and config.export:
            base_onnx = run.state_dir / "base.onnx"
            export_onnx(session.model, base_onnx, input_size=data.input_size, mean=data.mean, std=data.std,
                        class_names=data.classes, sample=self._sample())
            base["ort_latency_ms"] = ort_latency_ms(base_onnx, data.input_size, batch_size=1,
                                                    repeats=config.latency_repeats)
            base_onnx.unlink(missing_ok=True)
            write_json_atomic(self.base_state, base)
        summary["budget"]["achieved"] = _achieved(config, summary, session.budget_batch)
        if config.budget_obj.kind == "latency":  # where the budget was measured (the search's device and batch)
            summary["budget"].update(device=summary["pruned"]["latency_device"], batch=session.budget_batch)
        summary["layers"] = _layers(session.model, pruned)
        summary["graph"] = model_graph(pruned, data.input_size)   # None: torch.fx cannot trace it
        _write_candidates_csv(run.artifact_path("candidates"), run, session.space.names, config.budget_obj)
        self.artifacts["candidates"] = run.artifact_ref("candidates")
        summary["artifacts"] = self.artifacts

    # ------------------------------------------------------------------ quantize
    def quantize(self) -> None:
        """INT8 (``--quantize int8``): the exported model quantized, calibrated on the fine-tune split and
        verified on the report split. A failure is the summary's ``quantized.error``; the fp32 artifacts
        and the rest of the summary stay as they are and the run is still done."""
        self.run.event(Event.STATUS, status=Status.QUANTIZING, calibration_images=self.config.calibration_images)
        self.summary["quantized"] = quantize_run(self.run, self.config, self.session.data, self.session.model,
                                                 self.artifacts)


def calibration_set(data: DataBundle, images: int) -> ImageTensors:
    """The images INT8 calibration sees: the first ``images`` of the fine-tune split (``fit``, stored in a
    seeded random order), never the report split the INT8 model is verified on."""
    check_calibration_images(images, len(data.fit))
    return data.fit.subset(images)


def report_set(data: DataBundle, config: RunConfig) -> ImageTensors:
    """The report split as a run reports on it (capped at ``report_images``)."""
    rep = data.report
    return rep.subset(min(config.report_images, len(rep))) if config.report_images else rep


def quantize_run(run: RunDir, config: RunConfig, data: DataBundle, original: nn.Module, artifacts: dict) -> dict:
    """Quantize a run's exported ``model.onnx`` to ``model.int8.onnx`` (:func:`pruner.quantize.quantize_int8`)
    and verify it beside the fp32 model (:func:`pruner.quantize.verify_int8`; ONNX Runtime CPU latency
    timed in interleaved pairs against the fp32 pruned model and the ``original`` model's ONNX, at batch
    1 and ``latency_batch`` when set). Returns the summary's ``quantized`` section; on failure
    ``{"error": ...}`` (and ``artifacts`` without ``int8``), never raising a PrunerError."""
    fp32 = run.artifact_path("onnx")
    out = run.artifact_path("int8")
    artifacts.pop("int8", None)
    t0 = time.perf_counter()
    try:
        if not fp32.is_file():
            raise PrunerError("the run has no exported ONNX model to quantize; run it again without --no-export")
        calib = calibration_set(data, config.calibration_images)
        rep = quantize_int8(fp32, out, batches(calib, 32, mean=data.mean, std=data.std))
        original_onnx = run.state_dir / "base.onnx"
        try:
            export_onnx(original, original_onnx, input_size=data.input_size, mean=data.mean, std=data.std,
                        class_names=data.classes,
                        sample=next(batches(data.report.subset(8), 8, mean=data.mean, std=data.std))[0])
            check = verify_int8(out, fp32, list(batches(report_set(data, config), 256, mean=data.mean, std=data.std)),
                                data.input_size, original_path=original_onnx,
                                latency_batches=[1] if (config.latency_batch or 1) == 1 else [1, config.latency_batch],
                                repeats=config.latency_repeats)
        finally:
            original_onnx.unlink(missing_ok=True)
    except PrunerError as exc:
        out.unlink(missing_ok=True)
        run.event(Event.LOG, level="warning", message=f"INT8 quantization failed: {exc}")
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a bug in the quantizer must not lose the finished run
        out.unlink(missing_ok=True)
        run.event(Event.LOG, level="error", message=traceback.format_exc())
        return {"error": f"internal error while quantizing: {type(exc).__name__}: {exc}"}
    artifacts["int8"] = run.artifact_ref("int8")
    return {**check, "size_bytes": rep.size_bytes, "size_fp32_bytes": rep.size_fp32_bytes, "format": "QDQ",
            "per_channel": rep.per_channel, "quantized_nodes": rep.quantized_nodes,
            "calibration": {"split": "fit", "images": rep.calibration_images, "method": rep.method},
            "seconds": time.perf_counter() - t0}


def check_quantizable(run: RunDir) -> tuple[dict, dict]:
    """A finished pruning run with an exported ONNX model (what INT8 for a finished run needs): its
    ``(summary, config.json)``, else a one-line PrunerError saying what is missing."""
    summary, stored = run.summary(), run.config()
    if stored is None or summary is None:
        raise PrunerError(f"{run.path} is not a finished run (no {CONFIG_FILE} or {SUMMARY_FILE}); pass a prune run's "
                          "directory")
    if run.kind() != PRUNE or summary.get("status") != Status.DONE:
        raise PrunerError(f"{run.path} is not a finished pruning run (status {summary.get('status')}); quantize a "
                          "done run")
    if run.artifact("onnx", summary) is None:
        raise PrunerError(f"{run.name} has no exported ONNX model to quantize; run it again without --no-export")
    return summary, stored


def quantize_finished_run(out: str | Path, *, calibration_images: int | None = None,
                          lock: RunLock | None = None) -> dict:
    """``python -m pruner quantize --run DIR`` (and the JobManager's ``quantize`` jobs): INT8 for a finished
    run, its data split rebuilt from the run's config; the summary gets ``quantized`` (and
    ``artifacts.int8``). Returns that section. ``lock``: the run's lock when a JobManager hands it over."""
    run = RunDir(out)
    summary, stored = check_quantizable(run)
    config = RunConfig.from_dict(run_config(stored))
    if calibration_images is not None:
        config.calibration_images = calibration_images
    config = RunConfig.from_dict({**config.to_dict(), "quantize": "int8"})   # validates the count
    lock = _take_lock(run, lock)
    try:
        data = load_data(config.data, config.data_root, protocol=config.protocol, val_size=config.val_size,
                         seed=config.seed, image_size=config.image_size)
        check_calibration_images(config.calibration_images, len(data.fit))
        spec = parse_model_spec(config.model, num_classes=data.num_classes, weights=config.weights,
                                trust_checkpoint=config.trust_checkpoint)
        original = build_model(spec).eval()
        artifacts = dict(summary.get("artifacts") or {})
        section = quantize_run(run, config, data, original, artifacts)
        summary = run.summary() or summary
        summary["quantized"], summary["artifacts"] = section, artifacts
        run.write_summary(summary)
    finally:
        lock.release()
    return section


def record_quantize_failure(out: str | Path, message: str, lock: RunLock | None = None) -> bool:
    """A failed INT8 quantization of a finished run, written as the summary's ``quantized.error`` (one line;
    ``artifacts.int8`` dropped, everything else of the summary kept) with ``lock`` when the caller holds it.
    False when the run is not a done pruning run, another process writes it, or writing fails; never raises."""
    run = RunDir(out)
    try:
        with RunLock.holding(run.lock_path, lock, retry_s=0.5):
            summary = run.summary()
            if not summary or summary.get("status") != Status.DONE:
                return False
            artifacts = dict(summary.get("artifacts") or {})
            if artifacts.pop("int8", None) is not None:
                run.artifact_path("int8").unlink(missing_ok=True)
            summary["quantized"], summary["artifacts"] = {"error": message}, artifacts
            run.event(Event.LOG, level="warning", message=f"INT8 quantization failed: {message}")
            run.write_summary(summary)
        return True
    except Exception:  # noqa: BLE001 - a missing directory, a live writer: nothing to record
        return False


def _achieved(config: RunConfig, summary: dict, batch: int = 1) -> float:
    """The budget's kind, pruned over base: exact for MACs and params; for latency the paired
    measurement on the run's device at the budget's ``batch`` (two separately timed medians
    drift apart with the machine's speed)."""
    kind = config.budget_obj.kind
    if kind == "sparsity":  # zeros measured on the final weights (at least the target)
        return summary["sparsity"]["sparsity"]
    if kind == "latency":
        return next(e["vs_base"] for e in summary["pruned"]["latency"] if e["batch"] == batch)
    key = {"flops": "macs", "params": "params"}[kind]
    return summary["pruned"][key] / summary["base"][key]


def run_sensitivity(config: RunConfig, out: str | Path, *, ratios=None, should_stop: StopFn | None = None,
                    lock: RunLock | None = None, on_event: EventFn | None = None) -> dict:
    """Per-group sensitivity analysis into the run directory ``out`` (``sensitivity.json``);
    ``on_event`` is handed every event written (as in :func:`run_job`)."""
    run = RunDir(out, on_event=on_event)
    run.check_new()
    lock = _take_lock(run, lock)
    try:
        with _StopOnSignal() as signals:
            return _run_sensitivity(config, run, ratios=ratios, should_stop=should_stop, signals=signals)
    finally:
        lock.release()


def _run_sensitivity(config: RunConfig, run: RunDir, *, ratios, should_stop: StopFn | None,
                     signals: _StopOnSignal) -> dict:
    from ..sensitivity import DEFAULT_RATIOS, analyse

    run.create(config_with_kind(config.to_dict(), SENSITIVITY, ratios=list(ratios or DEFAULT_RATIOS)))
    user_stop = should_stop or (lambda: False)
    stop = lambda: signals.received is not None or user_stop()  # noqa: E731
    t_start = time.time()
    summary: dict = {"status": Status.RUNNING, "error": None, "analysis": SENSITIVITY, "protocol": config.protocol}
    try:
        run.event(Event.STATUS, status=Status.STARTED)
        session = Session(config, run)
        evaluator = session.evaluator(max_evals=None, should_stop=stop)
        with attach_workers(evaluator, config, emit=run.event):
            run.event(Event.STATUS, status=Status.ANALYSING_SENSITIVITY)
            result = analyse(evaluator, ratios or DEFAULT_RATIOS,
                             progress=lambda done, total, point: run.event(Event.SENSITIVITY, done=done, total=total,
                                                                           **point))
        write_json_atomic(run.sensitivity_path, result.to_dict())
        summary.update({"status": Status.DONE, "sensitivity": SENSITIVITY_RESULT, "evaluations": result.evaluations,
                        "base_top1": result.base_top1, "timing": evaluator.timing})
        signals.disarm()
    except CancelledError:
        signals.disarm()
        summary.update({"status": Status.CANCELLED,
                        "error": signals.message if signals.received else "cancelled by the user"})
    except PrunerError as exc:
        signals.disarm()
        summary.update({"status": Status.FAILED, "error": str(exc)})
    except Exception as exc:
        signals.disarm()
        error = (_oom_message(exc, run.status(), config, run.path) if _out_of_memory(exc)
                 else f"internal error: {type(exc).__name__}: {exc}")
        summary.update({"status": Status.FAILED, "error": error})
        run.event(Event.LOG, level="error", message=traceback.format_exc())
    signals.disarm()
    if summary["status"] == Status.FAILED and signals.received:
        summary.update(status=Status.CANCELLED, error=signals.message)
    summary["seconds"] = time.time() - t_start
    run.event(Event.STATUS, status=summary["status"], error=summary["error"])
    run.write_summary(summary)
    return summary

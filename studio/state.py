"""State shared by the pages: the runs root, the one JobManager, run ids in the URL, run listings.

The :class:`~pruner.runs.manager.JobManager` lives in ``st.cache_resource``: one per server
process, shared by every browser session (two tabs see the same jobs). It never calls
Streamlit; pages only read run directories, so a refreshed page, another tab or a restarted
server all see the same runs.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from pruner.runs.manager import QUANTIZE, JobManager, JobSpec
from pruner.runs.rundir import (CONFIG_FILE, PRUNE, SENSITIVITY, JobState, Liveness, RunDir, Status, config_kind, is_final,
                                list_runs, run_config)

from .markup import plain_md
from .results import fmt  # noqa: F401 (pages format numbers as state.fmt)

RUNS_ENV = "PRUNER_RUNS_DIR"
QUERY_KEY = "run"
UPLOADS = "uploads"

PAGES = {
    "new": "pages/new_run.py",
    "live": "pages/live_run.py",
    "sensitivity": "pages/sensitivity.py",
    "runs": "pages/runs.py",
}


def runs_root() -> Path:
    """``$PRUNER_RUNS_DIR`` (default ``./runs``), created when missing."""
    root = Path(os.environ.get(RUNS_ENV) or "runs").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def uploads_dir() -> Path:
    path = runs_root() / UPLOADS
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Shared:
    manager: JobManager
    lock: threading.Lock


@st.cache_resource(show_spinner=False)
def _shared() -> Shared:
    # One manager per server process, shared by all sessions; it lives as long as the server.
    return Shared(JobManager(max_parallel=1), threading.Lock())


def job_manager() -> JobManager:
    return _shared().manager


# ---------------------------------------------------------------------- run ids
MAX_NAME_BYTES = 255   # a file name's limit on every common file system
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def valid_run_name(name: str) -> bool:
    return bool(_NAME_OK.match(name or "")) and name != UPLOADS


def run_name_problem(name: str) -> str | None:
    """Why a user-typed run name cannot be used (``None`` when it is empty or fine)."""
    if name and not valid_run_name(name):
        return (f"The run name {name!r} may only use letters, digits, '.', '_' and '-' (start with a letter or "
                "digit).")
    if name and (runs_root() / name).exists():
        return f"A run named {name!r} already exists; choose another name or leave it empty."
    return None


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:40] or "run"


def new_run_name(*parts: str) -> str:
    """A fresh, unused run directory name: ``YYYYmmdd-HHMMSS-<parts>``."""
    base = "-".join([time.strftime("%Y%m%d-%H%M%S"), *(slug(p) for p in parts if p)])
    root = runs_root()
    name, k = base, 2
    while (root / name).exists():
        name, k = f"{base}-{k}", k + 1
    return name


def run_path(name: str | None) -> Path | None:
    """The run directory of ``name`` under the runs root, or None when it is not a run.

    Any direct child of the runs root is accepted (runs made with the CLI may have names that
    :func:`valid_run_name` refuses for new runs, such as spaces); nothing outside it is.
    """
    if (not isinstance(name, str) or not name or name in (".", "..", UPLOADS) or any(c in name for c in "/\\\0")
            or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES):
        return None
    path = runs_root() / name
    try:   # a symbolic link under the runs root is not followed (it may lead anywhere)
        return path if not path.is_symlink() and (path / CONFIG_FILE).is_file() else None
    except OSError:
        return None


def submit(kind: str, config: dict, name: str, options: dict | None = None, resume: bool = False) -> str:
    """Queue a background job writing ``<runs root>/<name>``; returns the run name."""
    shared = _shared()
    out = runs_root() / name
    with shared.lock:
        # (a resumed run's old cancel request and summary are cleared by the manager, which refuses a run
        # that another process is writing)
        if not resume and out.exists() and any(out.iterdir()):
            from pruner.errors import PrunerError
            raise PrunerError(f"a run named {name!r} already exists in {runs_root()}; choose another name")
        shared.manager.submit(JobSpec(kind=kind, config=config, out=str(out), resume=resume, options=options or {}))
    return name


def cancel(name: str) -> None:
    path = run_path(name)
    if path is not None:
        job_manager().cancel(path)


def remove(name: str, *, delete: bool) -> str | None:
    """Archive (``delete=False``: moved to the runs root's ``.archive`` folder) or delete the run ``name``;
    the reason in one line when it cannot be (a job is writing it, it is gone), else None."""
    from pruner.errors import PrunerError
    from pruner.runs.rundir import archive_run, delete_run

    path = run_path(name)
    if path is None:
        return f"There is no run named {name!r} any more."
    if job_manager().state(path) in JobState.GOING_ON:
        return f"{name} is queued or running: cancel it first."
    try:
        delete_run(path) if delete else archive_run(path)
    except (PrunerError, OSError) as exc:
        return plain_md(str(exc))
    return None


def job_state(name: str) -> str | None:
    """queued / running / finished for jobs of this server process, None for others."""
    path = run_path(name)
    return None if path is None else job_manager().state(path)


# ---------------------------------------------------------------------- INT8 for a finished run
def can_quantize(rd: RunDir, summary: dict | None) -> bool:
    """A done pruning run with an exported ONNX model and no INT8 model yet: what Quantize to INT8 is offered for."""
    summary = summary or {}
    return (rd.kind() == PRUNE and summary.get("status") == Status.DONE and rd.artifact("onnx", summary) is not None
            and rd.artifact("int8", summary) is None)


def quantizing(rd: RunDir) -> bool:
    """Whether an INT8 quantization of this done run is queued or going on: a job of this server, or another
    process (``python -m pruner quantize --run``) holding the run's lock (not a pruning job still exiting here)."""
    if rd.status() != Status.DONE:
        return False
    manager = job_manager()
    if manager.state(rd.path) in JobState.GOING_ON:
        return manager.kind(rd.path) == QUANTIZE
    return rd.holder() is not None


def try_quantize(name: str, calibration_images: int) -> str | None:
    """Queue INT8 quantization of the finished run ``name`` (a :data:`~pruner.runs.manager.QUANTIZE` job);
    ``None``, or why it was refused as one line (never a traceback)."""
    from pruner.errors import PrunerError

    path = run_path(name)
    if path is None:
        return f"The run directory of {name} has disappeared; pick another run."
    try:
        with _shared().lock:
            job_manager().submit(JobSpec(kind=QUANTIZE, config={}, out=str(path),
                                         options={"calibration_images": int(calibration_images)}))
    except PrunerError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. the run folder is not writable
        return f"Could not start the INT8 quantization: {type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------- attaching to a run
def attach(name: str) -> None:
    """Make ``name`` the current run of this session and of the URL (a refresh re-attaches)."""
    st.session_state["run_id"] = name
    if st.query_params.get(QUERY_KEY) != name:
        st.query_params[QUERY_KEY] = name


def forget(name: str) -> None:
    """This session stops naming ``name`` (archived or deleted): not the current run, not in the URL."""
    if st.session_state.get("run_id") == name:
        st.session_state.pop("run_id", None)
    if st.query_params.get(QUERY_KEY) == name:
        del st.query_params[QUERY_KEY]


def requested_run(kind: str | None = None) -> str | None:
    """The run named in the URL, else this session's last run, if it exists (and is of ``kind``)."""
    for name in (st.query_params.get(QUERY_KEY), st.session_state.get("run_id")):
        if name and run_path(name) is not None and (kind is None or run_kind(name) == kind):
            return name
    return None


# ---------------------------------------------------------------------- listing
def run_kind(name_or_rd: str | RunDir) -> str:
    rd = name_or_rd if isinstance(name_or_rd, RunDir) else RunDir(runs_root() / name_or_rd)
    return rd.kind()


def all_runs(kind: str | None = None) -> list[RunDir]:
    """Every run under the runs root, newest first (optionally only ``prune`` or ``sensitivity`` runs)."""
    runs = [rd for rd in list_runs(runs_root()) if rd.name != UPLOADS]
    if kind is not None:
        runs = [rd for rd in runs if run_kind(rd) == kind]
    return runs


def liveness(rd: RunDir, status: str | None = None) -> str:
    """``final``; ``active`` (queued or running here, or a process of any server or CLI holds the
    run's lock); or ``interrupted`` (not finished and nobody holds its lock: its process died)."""
    status = status or rd.status()
    if is_final(status):
        return Liveness.FINAL
    if job_manager().state(rd.path) in JobState.GOING_ON:
        return Liveness.ACTIVE
    return Liveness.INTERRUPTED if rd.interrupted(status) else Liveness.ACTIVE


def default_run(kind: str) -> str | None:
    """Newest run of ``kind`` still going, else the newest of ``kind``."""
    runs = all_runs(kind)
    for rd in runs:
        if not is_final(rd.status()):
            return rd.name
    return runs[0].name if runs else None


def strategy_uses_evaluations(name: str) -> bool:
    """Whether more evaluations can help ``name`` (an unknown name, e.g. from an old run, counts as yes)."""
    from pruner.search import strategy_class, strategy_names   # the search code: only where a page asks

    return strategy_class(name).uses_evaluations if name in strategy_names() else True


def _evaluations_text(cfg: dict) -> str:
    """What the run's evaluation setting means: a one-shot strategy (uniform, global) evaluates
    once whatever the cap; the others up to the cap (``None``: no cap)."""
    if not strategy_uses_evaluations(str(cfg.get("strategy"))):
        return "1 evaluation"
    cap = cfg.get("search_evals")
    return "no evaluation cap" if cap is None else f"up to {cap} evaluations"


def describe_config(cfg: dict | None) -> str:
    if not cfg:
        return ""
    ft = (cfg.get("finetune") or {}).get("epochs", 0)
    md = plain_md
    parts = [f"**{md(cfg.get('model'))}**", f"weights {md(cfg.get('weights') or 'random init')}",
             f"data {md(cfg.get('data'))}"]
    if config_kind(cfg) == SENSITIVITY:
        if cfg.get("ratios"):   # a queued analysis's config does not list them yet
            parts.append(f"ratios {md(', '.join(str(r) for r in cfg['ratios']))}")
    else:
        parts += [f"budget {md(cfg.get('budget'))}", f"strategy {md(cfg.get('strategy'))}",
                  md(_evaluations_text(cfg)), f"{md(ft)} fine-tune epoch(s)"]
    parts.append(f"device {md(cfg.get('device'))}")
    return " · ".join(str(p) for p in parts)




def try_submit(kind: str, config: dict, name: str, *, options: dict | None = None, resume: bool = False,
               what: str = "start the job") -> tuple[str | None, str | None]:
    """:func:`submit`, with any failure as a one-line message for the page (never a traceback):
    ``(run name, None)`` or ``(None, message)``."""
    from pruner.errors import PrunerError

    try:
        return submit(kind, config, name, options=options, resume=resume), None
    except PrunerError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. the runs folder is not writable
        return None, f"Could not {what}: {type(exc).__name__}: {exc}"


def resume_config(cfg: dict) -> dict:
    """A pruning run's config as a resume submits it (without the analysis-only keys)."""
    return run_config(cfg or {})


def short_model_name(model: str) -> str:
    """The model part of a new run's automatic name (``file:x/net.py:build`` → ``build``)."""
    return model.rsplit(":", 1)[-1] if model.startswith("file:") else model

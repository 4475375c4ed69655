"""Runs as rows and series: what the Runs page's table, comparison and the Live run page read from run directories.

Pure functions (no Streamlit; the pages cache them keyed on :func:`stamp`), unit-tested against
real run directories in ``tests/test_results.py``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pruner.runs.rundir import PRUNE, RunDir, Status, config_kind

from . import results
from .events import budget_of
from .notes import read_notes


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def stamp(rd: RunDir) -> tuple:
    """Changes whenever the run directory's records change (the cache key of anything read from it)."""
    return (_mtime(rd.config_path), _mtime(rd.summary_path), _size(rd.events_path),
            _mtime(rd.notes_path))


def short_model(spec: str | None) -> str:
    """``file:/x/y/net.py:build`` → ``net.py:build``; other specs unchanged."""
    if not spec:
        return ""
    if spec.startswith("file:"):
        rest = spec[5:]
        path, _, factory = rest.rpartition(":")
        return f"{Path(path or rest).name}:{factory}" if path else Path(rest).name
    return spec


def short_data(data: str | None) -> str:
    """An ImageFolder path → its folder name; dataset names unchanged."""
    if not data:
        return ""
    return Path(data).name if ("/" in data or "\\" in data) else data


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def table_row(rd: RunDir, created: float | None = None) -> dict[str, Any]:
    """The Runs table's row of one run (``created``: when its config was written); a run directory whose
    records cannot be used is a ``damaged`` row with the reason, and nothing else of it is read."""
    created = created if created is not None else _mtime(rd.config_path)
    problem = rd.damage()
    if problem:
        return {"name": rd.name, "kind": "—", "status": Status.DAMAGED, "model": "", "data": "", "strategy": "—",
                "budget": "—", "base top-1 (%)": None, "pruned top-1 (%)": None, "MACs (M)": None,
                "MACs kept (%)": None, "params (M)": None, "latency (ms)": None, "tags": "",
                "created": datetime.fromtimestamp(created) if created else None, "error": problem}
    cfg = rd.config() or {}
    summary = rd.summary() or {}
    kind = config_kind(cfg)
    status = summary.get("status") or rd.status()
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    kept = _ratio(pruned.get("macs"), base.get("macs"))
    created = created if created is not None else _mtime(rd.config_path)
    return {
        "name": rd.name, "kind": kind, "status": status, "model": short_model(cfg.get("model")),
        "data": short_data(cfg.get("data")),
        "strategy": cfg.get("strategy") if kind == PRUNE else "—",
        "budget": cfg.get("budget") if kind == PRUNE else "—",
        # one split per column: a pruning run's report-split figure; an analysis scores the search split, which
        # its own page shows (the Runs table does not put the two splits in one column)
        "base top-1 (%)": base.get("top1") if kind == PRUNE else None,
        "pruned top-1 (%)": pruned.get("top1"),
        "MACs (M)": pruned["macs"] / 1e6 if pruned.get("macs") is not None else None,
        "MACs kept (%)": 100.0 * kept if kept is not None else None,
        "params (M)": pruned["params"] / 1e6 if pruned.get("params") is not None else None,
        "latency (ms)": (results.latency(summary) or {}).get("ms"),
        "tags": ", ".join(read_notes(rd.path)["tags"]),
        "created": datetime.fromtimestamp(created) if created else None,
        "error": summary.get("error"),
    }


#: the comparison's two tables (``compare_row`` keys): what each run achieved, and what it cost in time
COMPARE_RESULT = ("name", "status", "strategy", "budget", "achieved", "base top-1 (%)", "pruned top-1 (%)",
                  "± (points)", "Δ top-1 (points)", "report images", "fine-tune images / epoch", "MACs (M)",
                  "params (M)")
COMPARE_SPEED = ("name", "latency (ms)", "latency vs original", "timed on", "ORT latency (ms)", "evaluations",
                 "search time (s)", "total time (s)")
#: the INT8 columns each table gets when a compared run has an INT8 model (:func:`compare_columns`)
COMPARE_INT8_RESULT = ("INT8 top-1 (%)",)
COMPARE_INT8_SPEED = ("INT8 ORT latency (ms)", "INT8 speed-up")


def compare_row(name: str, status: str | None, cfg: dict | None, summary: dict | None) -> dict[str, Any]:
    """One run of the comparison: results, costs and times (keys of :data:`COMPARE_RESULT` and :data:`COMPARE_SPEED`,
    and the INT8 ones, ``None`` for a run without an INT8 model: :data:`COMPARE_INT8_RESULT`, :data:`COMPARE_INT8_SPEED`)."""
    cfg, summary = cfg or {}, summary or {}
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    search = summary.get("search") or {}
    top1_b, top1_p = base.get("top1"), pruned.get("top1")
    lat = results.latency(summary) or {}
    q = results.int8(summary) or {}
    return {
        "name": name, "status": status, "strategy": cfg.get("strategy"), "budget": cfg.get("budget"),
        "achieved": (summary.get("budget") or {}).get("achieved"),
        "base top-1 (%)": top1_b, "pruned top-1 (%)": top1_p,
        "± (points)": results.standard_error(top1_p, pruned.get("report_images")),
        "report images": pruned.get("report_images"),
        "fine-tune images / epoch": _images_per_epoch(summary),
        "Δ top-1 (points)": top1_p - top1_b if top1_p is not None and top1_b is not None else None,
        "MACs (M)": pruned["macs"] / 1e6 if pruned.get("macs") else None,
        "params (M)": pruned["params"] / 1e6 if pruned.get("params") else None,
        "latency (ms)": lat.get("ms"), "latency vs original": lat.get("ratio"), "timed on": lat.get("where"),
        "ORT latency (ms)": pruned.get("ort_latency_ms"),
        "evaluations": search.get("evaluations"), "search time (s)": search.get("seconds"),
        "total time (s)": summary.get("seconds"),
        "INT8 top-1 (%)": q.get("top1"), "INT8 ORT latency (ms)": q.get("ms"), "INT8 speed-up": q.get("speedup"),
    }


def _images_per_epoch(summary: dict) -> int | None:
    plan = summary.get("finetune_plan") or {}
    if not plan:
        return None
    return int(plan.get("batches") or 0) * int(plan.get("batch_size") or 0) if plan.get("epochs") else 0


def compare_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The comparison's two tables' columns: :data:`COMPARE_RESULT` and :data:`COMPARE_SPEED`, each with its
    INT8 columns when any compared run has an INT8 model."""
    has_int8 = any(r.get(k) is not None for r in rows for k in COMPARE_INT8_RESULT + COMPARE_INT8_SPEED)
    return ([*COMPARE_RESULT, *(COMPARE_INT8_RESULT if has_int8 else ())],
            [*COMPARE_SPEED, *(COMPARE_INT8_SPEED if has_int8 else ())])


CANDIDATE_FIELDS = ("candidate_id", "step", "macs", "top1", "cost", "reward")
EPOCH_FIELDS = ("epoch", "loss", "val_top1")


def run_series(rd: RunDir) -> dict[str, Any]:
    """What the comparison charts overlay for one run: its candidates (search), epochs (fine-tuning),
    the original's MACs and the chosen candidate."""
    cands, epochs, base_macs = [], [], None
    for e in rd.iter_events():
        kind = e.get("kind")
        if kind == "candidate":
            cands.append({**{k: e.get(k) for k in CANDIDATE_FIELDS},
                          "probe": (e.get("meta") or {}).get("probe") is not None})
        elif kind == "epoch":
            epochs.append({k: e.get(k) for k in EPOCH_FIELDS})
        elif kind == "base" and base_macs is None:
            base_macs = e.get("macs")
    summary = rd.summary() or {}
    base_macs = (summary.get("base") or {}).get("macs") or base_macs
    return {"name": rd.name, "candidates": cands, "epochs": epochs, "base_macs": base_macs,
            "chosen_id": rd.chosen_candidate(summary), "budget": budget_of(rd.config())}


# ---------------------------------------------------------------------- config diff
def flatten(cfg: dict | None, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"finetune": {"epochs": 2}}`` → ``{"finetune.epochs": 2}``."""
    out: dict[str, Any] = {}
    for key, value in (cfg or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def config_diff(configs: dict[str, dict | None], *, all_settings: bool = False) -> list[dict[str, str]]:
    """One row per setting whose value differs between the runs (every setting with ``all_settings``):
    ``{"setting": key, <run name>: value, ...}``, values as text ("—" where a run lacks the setting)."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys: list[str] = []
    for f in flat.values():
        keys += [k for k in f if k not in keys]
    rows = []
    for key in sorted(keys):
        values = [_shown(f.get(key)) for f in flat.values()]
        if all_settings or len(set(values)) > 1:
            rows.append({"setting": key, **dict(zip(flat, values))})
    return rows


# ---------------------------------------------------------------------- resume
def resume_overrides(finetune: dict | None, batch_size: int, epochs: int) -> dict[str, int]:
    """The fine-tuning settings a resume changes (``RESUME_OVERRIDES`` keys), only those that differ."""
    ft = finetune or {}
    return {key: int(value) for key, value, old in (("finetune.batch_size", batch_size, ft.get("batch_size")),
                                                    ("finetune.epochs", epochs, ft.get("epochs")))
            if old is None or int(value) != int(old)}


# ---------------------------------------------------------------------- the Runs table's filters
def tags_of(row: dict) -> list[str]:
    return [t for t in str(row.get("tags") or "").split(", ") if t]


def all_tags(rows: list[dict]) -> list[str]:
    """Every tag used on the listed runs, sorted."""
    return sorted({t for r in rows for t in tags_of(r)})


def filter_rows(rows: list[dict], kinds: list[str] | None = None, tags: list[str] | None = None) -> list[dict]:
    """The rows of the ``kinds`` shown (``None``: all; damaged runs, of no known kind, always) that carry
    every tag in ``tags``."""
    return [r for r in rows if (kinds is None or r.get("kind") in kinds or r.get("status") == Status.DAMAGED)
            and set(tags or ()) <= set(tags_of(r))]

"""Shaping a run's summary for the pages: one story per figure, whichever page shows it.

Pure functions (no Streamlit), unit-tested in ``tests/test_results.py``.
"""

from __future__ import annotations

from typing import Any


def latency(summary: dict | None, batch: int | None = None) -> dict[str, Any] | None:
    """The pruned model's PyTorch latency told one way everywhere.

    The ratio is the *paired* one (pruned and original timed alternately on the same device,
    so a machine whose speed drifts cancels out); the milliseconds are derived from it (the
    original's ms x the ratio), never a separately timed figure that drifted; the device and
    batch say where it was timed. ``batch`` picks a throughput entry (default: batch 1).
    Runs from before paired timing fall back to the ratio of the two separately timed ms.
    """
    summary = summary or {}
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    if not pruned:
        return None
    entries = [e for e in pruned.get("latency") or [] if isinstance(e, dict)]
    entry = next((e for e in entries if batch is not None and e.get("batch") == batch), None)
    if entry is not None:
        ratio, ref_ms = entry.get("vs_base"), entry.get("reference_ms")
        device, at = entry.get("device"), entry.get("batch")
        fallback_ms = entry.get("ms")
    else:
        ratio, ref_ms = pruned.get("latency_vs_base"), base.get("latency_ms")
        device, at = pruned.get("latency_device"), pruned.get("latency_batch")
        fallback_ms = pruned.get("latency_ms")
    if ratio is None and fallback_ms and ref_ms:
        ratio = fallback_ms / ref_ms
    ms = ref_ms * ratio if ratio is not None and ref_ms is not None else fallback_ms
    device, at = device or "cpu", at or 1
    return {"ms": ms, "ratio": ratio, "base_ms": ref_ms, "device": device, "batch": at,
            "where": f"{device}, batch {at}", "label": f"PyTorch latency ({device}, batch {at})"}


def workers_table(stats: list[dict] | None) -> list[dict[str, Any]]:
    """Rows for the Ray workers of a run (``workers`` events, ``summary["search"]["workers"]``):
    where each ran, how many candidates it scored, and its utilisation (busy time over its life)."""
    rows = []
    for i, w in enumerate(stats or []):
        if not isinstance(w, dict):
            continue
        busy, alive = w.get("busy_seconds"), w.get("alive_seconds")
        rows.append({"worker": i, "host": w.get("host"), "pid": w.get("pid"), "device": w.get("device"),
                     "threads": w.get("threads"), "candidates": w.get("evaluations"),
                     "busy (s)": busy,
                     "utilisation (%)": 100.0 * busy / alive if busy is not None and alive else None})
    return rows

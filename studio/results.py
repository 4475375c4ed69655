"""Shaping a run's summary for the pages: one story per figure, whichever page shows it.

Pure functions (no Streamlit), unit-tested in ``tests/test_results.py``.
"""

from __future__ import annotations

from typing import Any

from pruner.runs.rundir import Status


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


def _share(pruned: dict, base: dict, key: str) -> str | None:
    return f"{pruned[key] / base[key]:.0%} of original" if base.get(key) and pruned.get(key) is not None else None


def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    """A number for the page (``—`` when missing, the value as text when it does not take ``spec``)."""
    if value is None:
        return "—"
    try:
        return f"{value:{spec}}{suffix}"
    except (TypeError, ValueError):
        return str(value)


def metrics(summary: dict | None, *, top5: bool = True, ort: bool = True) -> list[dict[str, Any]]:
    """The result metrics of a finished run, one dict per metric (``label``, ``value``, ``delta``,
    ``neutral``: a delta that is a share, not better/worse, and ``help``): the same figures, told the
    same way, on the Live run and Runs pages. Empty when the run has no pruned model."""
    summary = summary or {}
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    if not pruned:
        return []
    top1, base_top1 = pruned.get("top1"), base.get("top1")
    out = [{"label": "Top-1 (report split)", "value": fmt(top1, ".2f", " %"), "neutral": False,
            "delta": None if top1 is None or base_top1 is None else f"{top1 - base_top1:+.2f} pts",
            "help": f"Original: {fmt(base_top1, '.2f', ' %')}"}]
    if top5:
        out.append({"label": "Top-5", "value": fmt(pruned.get("top5"), ".2f", " %"), "delta": None, "neutral": True})
    out.append({"label": "MACs", "value": fmt((pruned.get("macs") or 0) / 1e6, ",.2f", " M"),
                "delta": _share(pruned, base, "macs"), "neutral": True})
    out.append({"label": "Parameters", "value": fmt((pruned.get("params") or 0) / 1e6, ",.3f", " M"),
                "delta": _share(pruned, base, "params"), "neutral": True})
    lat = latency(summary) or {}
    out.append({"label": lat.get("label", "PyTorch latency"), "value": fmt(lat.get("ms"), ".2f", " ms"),
                "delta": f"{lat['ratio']:.0%} of original" if lat.get("ratio") is not None else None, "neutral": True,
                "help": "Pruned and original timed alternately on the same device (their ratio); the ms is the "
                        "original's ms times that ratio"})
    if ort:
        out.append({"label": f"ONNX Runtime latency ({pruned.get('ort_latency_device', 'cpu')}, batch "
                             f"{pruned.get('ort_latency_batch', 1)})",
                    "value": fmt(pruned.get("ort_latency_ms"), ".2f", " ms"),
                    "delta": _share(pruned, base, "ort_latency_ms"), "neutral": True})
    return out


def status_banner(status: str | None, *, liveness: str, error: str | None = None, noun: str = "run",
                  hint: str = "") -> tuple[str, str] | None:
    """What a page says about a run that is not simply going on or done: ``(level, text)`` with level
    ``error`` / ``warning``, or ``None``. ``liveness`` is :func:`studio.state.liveness`'s answer."""
    if status == Status.FAILED:
        return "error", f"The {noun} failed: {error or 'unknown error'}"
    if status == Status.CANCELLED:
        return "warning", _sentences(f"The {noun} was cancelled: {error or 'cancelled by the user'}", hint)
    if status != Status.DONE and liveness == "interrupted":
        return "warning", _sentences(f"Interrupted: no process is running this {noun} any more (its job was killed, "
                                     "or the server stopped)", hint)
    return None


def _sentences(*parts: str) -> str:
    """Parts joined as sentences, each ending in one full stop."""
    return " ".join(p.rstrip().rstrip(".") + "." for p in parts if p and p.strip())


def result_captions(summary: dict | None) -> list[str]:
    """The lines under a finished run's result metrics: for weight sparsity the zeros measured on the
    final weights and the dense vs compressed sizes; then the budget achieved, the original's top-1
    and the ONNX check."""
    summary = summary or {}
    base, b, lines = summary.get("base") or {}, summary.get("budget") or {}, []
    sp = summary.get("sparsity")
    if sp:
        onnx = sp.get("onnx") or {}
        line = (f"Sparsity ({sp.get('pattern')}): {fmt(sp.get('sparsity'), '.4f')} of {sp.get('prunable_weights')} "
                f"conv/linear weights are zero · {sp.get('nonzero_params')} non-zero parameters · "
                f"{fmt((sp.get('dense_bytes') or 0) / 1e6, '.3f', ' MB')} dense, "
                f"{fmt((sp.get('bitmask_bytes') or 0) / 1e6, '.3f', ' MB')} as bitmask + values, "
                f"{fmt((sp.get('csr_bytes') or 0) / 1e6, '.3f', ' MB')} as CSR")
        if onnx.get("bytes") is not None:
            line += (f" · ONNX {fmt(onnx['bytes'] / 1e6, '.3f', ' MB')}, zipped "
                     f"{fmt((onnx.get('zipped_bytes') or 0) / 1e6, '.3f', ' MB')} ({onnx.get('zeros')} zero weights)")
        lines.append(line)
    achieved_of = "of the prunable weights at zero" if b.get("kind") == "sparsity" else "of the original"
    lines.append(f"Budget {b.get('kind')}={b.get('target')}: achieved {fmt(b.get('achieved'), '.3f')} {achieved_of} · "
                 f"original top-1 {fmt(base.get('top1'), '.2f', ' %')} · "
                 f"ONNX max |diff| vs PyTorch {fmt(summary.get('onnx_max_abs_diff'), '.2e')}")
    return lines

"""Shaping a run's summary for the pages: one story per figure, whichever page shows it.

Pure functions (no Streamlit), unit-tested in ``tests/test_results.py``.
"""

from __future__ import annotations

import math
from typing import Any

from pruner.runs.rundir import Liveness, Status


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
    if entry is None:
        entry = next((e for e in entries if e.get("batch") == at), {})
    iqr = entry.get("vs_base_iqr") if isinstance(entry.get("vs_base_iqr"), list) else None
    return {"ms": ms, "ratio": ratio, "base_ms": ref_ms, "device": device, "batch": at, "iqr": iqr,
            "where": f"{device}, batch {at}", "label": f"PyTorch latency ({device}, batch {at})"}


#: a latency ratio whose interquartile range is wider than this share of it is flagged as noisy
WIDE_SPREAD = 0.2


def budget_missed(summary: dict | None) -> str | None:
    """The banner of a latency-budget run whose answer missed the budget when re-timed (none of the most
    accurate candidates predicted to meet it did), with what the user can do; None when it met it."""
    check = ((summary or {}).get("search") or {}).get("latency_check") or {}
    if check.get("met") is not False:
        return None
    return "This model misses its latency budget. " + (check.get("advice") or "")[:1].upper() + \
        (check.get("advice") or "")[1:] + "."


def latency_flags(summary: dict | None) -> list[str]:
    """What the page says under a latency figure that should not be trusted as it stands: a wide spread
    of the paired ratios (the machine was busy), or a pruned model timed slower than the original
    although it has fewer MACs."""
    lat = latency(summary) or {}
    ratio, iqr = lat.get("ratio"), lat.get("iqr")
    out = []
    if ratio and iqr and len(iqr) == 2 and (iqr[1] - iqr[0]) > WIDE_SPREAD * ratio:
        out.append(f"The latency ratio's spread is wide (middle half of the paired timings {iqr[0]:.0%}–{iqr[1]:.0%} "
                   f"of the original): the machine was busy while it was timed; time it again on a quiet machine")
    pruned, base = (summary or {}).get("pruned") or {}, (summary or {}).get("base") or {}
    if ratio and ratio > 1.0 and pruned.get("macs") and base.get("macs") and pruned["macs"] < base["macs"]:
        out.append(f"Timed at {ratio:.0%} of the original although it keeps {pruned['macs'] / base['macs']:.0%} of the "
                   f"MACs: at batch {lat.get('batch')} on {lat.get('device')} the time is not in the convolutions "
                   "(overheads, or a busy machine)")
    return out


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


def standard_error(top1: Any, images: Any) -> float | None:
    """One binomial standard error (points) of a top-1 of ``top1`` % measured on ``images`` images."""
    if not isinstance(top1, (int, float)) or not isinstance(images, int) or isinstance(images, bool) or images < 1:
        return None
    p = min(1.0, max(0.0, top1 / 100.0))
    return 100.0 * math.sqrt(p * (1.0 - p) / images)


def run_size(summary: dict | None) -> str | None:
    """How large the run's result is: the report images the top-1 was measured on (with its ± one
    standard error) and the images fine-tuning saw per epoch, out of the fit images — so a quick
    run's figure is read as what it is. ``None`` before there is a result."""
    summary = summary or {}
    pruned = summary.get("pruned") or {}
    if pruned.get("top1") is None:
        return None
    parts = []
    n = pruned.get("report_images")
    se = standard_error(pruned.get("top1"), n)
    if n:
        parts.append(f"top-1 on {n:,} report images (± {se:.2f} points, one binomial standard error)")
    plan = summary.get("finetune_plan") or {}
    fit = ((summary.get("data") or {}).get("sizes") or {}).get("fit")
    if plan.get("epochs"):
        per_epoch = int(plan.get("batches") or 0) * int(plan.get("batch_size") or 0)
        share = f" of the {fit:,} fit images" if fit else ""
        parts.append(f"fine-tuned {plan['epochs']} epoch(s) of {plan.get('batches')} batches × {plan.get('batch_size')} "
                     f"= {per_epoch:,} images per epoch{share}")
    elif not summary.get("finetune"):
        parts.append("not fine-tuned")
    return "Run size: " + " · ".join(parts) if parts else None


def metrics(summary: dict | None, *, top5: bool = True, ort: bool = True) -> list[dict[str, Any]]:
    """The result metrics of a finished run, one dict per metric (``label``, ``value``, ``delta``,
    ``neutral``: a delta that is a share, not better/worse, and ``help``): the same figures, told the
    same way, on the Live run and Runs pages. Empty when the run has no pruned model."""
    summary = summary or {}
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    if not pruned:
        return []
    top1, base_top1 = pruned.get("top1"), base.get("top1")
    se = standard_error(top1, pruned.get("report_images"))
    out = [{"label": "Top-1 (report split)",
            "value": fmt(top1, ".2f", " %") + (f" ± {se:.2f}" if se is not None else ""), "neutral": False,
            "delta": None if top1 is None or base_top1 is None else f"{top1 - base_top1:+.2f} pts",
            "help": f"Original: {fmt(base_top1, '.2f', ' %')}" + (
                f". Measured on {pruned['report_images']:,} report images; ± one binomial standard error"
                if se is not None else "")}]
    if top5:
        out.append({"label": "Top-5", "value": fmt(pruned.get("top5"), ".2f", " %"), "delta": None, "neutral": True})
    out.append({"label": "MACs", "value": fmt((pruned.get("macs") or 0) / 1e6, ",.2f", " M"),
                "delta": _share(pruned, base, "macs"), "neutral": True})
    out.append({"label": "Parameters", "value": fmt((pruned.get("params") or 0) / 1e6, ",.3f", " M"),
                "delta": _share(pruned, base, "params"), "neutral": True})
    lat = latency(summary) or {}
    iqr = lat.get("iqr")
    spread = f" (middle half {iqr[0]:.0%}–{iqr[1]:.0%})" if iqr else ""
    out.append({"label": lat.get("label", "PyTorch latency"), "value": fmt(lat.get("ms"), ".2f", " ms"),
                "delta": f"{lat['ratio']:.0%} of original" if lat.get("ratio") is not None else None, "neutral": True,
                "help": "Pruned and original timed alternately on the same device: the median of the per-pair "
                        f"ratios{spread}; the ms is the original's median ms in those pairs "
                        f"({fmt(lat.get('base_ms'), '.2f', ' ms')}) times that ratio"})
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
    if status != Status.DONE and liveness == Liveness.INTERRUPTED:
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
    size = run_size(summary)
    if size:
        lines.append(size)
    lines.append(f"Budget {b.get('kind')}={b.get('target')}: achieved {fmt(b.get('achieved'), '.3f')} {achieved_of} · "
                 f"original top-1 {fmt(base.get('top1'), '.2f', ' %')} · "
                 f"ONNX max |diff| vs PyTorch {fmt(summary.get('onnx_max_abs_diff'), '.2e')}")
    return lines


# ---------------------------------------------------------------------- INT8
def _mb(n: Any) -> float | None:
    return n / 1e6 if isinstance(n, (int, float)) and not isinstance(n, bool) else None


def _inverse(ratio: Any) -> float | None:
    return 1.0 / ratio if isinstance(ratio, (int, float)) and ratio > 0 else None


def int8(summary: dict | None) -> dict[str, Any] | None:
    """A run's INT8 model (the summary's ``quantized`` section, :func:`pruner.runs.job.quantize_run`) told one
    way everywhere: ``None`` without one; ``{"error": ...}`` when it failed; else its top-1 beside the fp32
    pruned model's (both in ONNX Runtime on the same report images) and the PyTorch report top-1, ONNX
    Runtime CPU latency of the INT8, fp32 pruned and original models at batch 1 (each pair timed
    alternately; ``speedup``: fp32 ms over INT8 ms), the file sizes and the calibration."""
    q = (summary or {}).get("quantized")
    if not isinstance(q, dict) or not q:
        return None
    if q.get("error"):
        return {"error": str(q["error"])}
    entries = [e for e in q.get("ort_latency") or [] if isinstance(e, dict)]
    lat = next((e for e in entries if e.get("batch") == 1), entries[0] if entries else {})
    top1, top1_fp32 = q.get("top1"), q.get("top1_fp32")
    size, size_fp32 = q.get("size_bytes"), q.get("size_fp32_bytes")
    calib = q.get("calibration") or {}
    return {
        "error": None, "top1": top1, "top1_fp32": top1_fp32,
        "delta": top1 - top1_fp32 if top1 is not None and top1_fp32 is not None else None,
        "top1_pytorch": ((summary or {}).get("pruned") or {}).get("top1"),
        "agreement": q.get("agreement"), "images": q.get("images"),
        "device": lat.get("device") or "cpu", "batch": lat.get("batch") or 1,
        "ms": lat.get("ms"), "fp32_ms": lat.get("fp32_ms"), "original_ms": lat.get("original_ms"),
        "vs_fp32": lat.get("vs_fp32"), "vs_original": lat.get("vs_original"),
        "speedup": _inverse(lat.get("vs_fp32")), "speedup_original": _inverse(lat.get("vs_original")),
        "size_mb": _mb(size), "size_fp32_mb": _mb(size_fp32),
        "size_ratio": size / size_fp32 if _mb(size) is not None and _mb(size_fp32) else None,
        "calibration_images": calib.get("images"), "method": calib.get("method"), "split": calib.get("split"),
        "format": q.get("format"), "per_channel": q.get("per_channel"), "quantized_nodes": q.get("quantized_nodes"),
    }


def int8_metrics(summary: dict | None) -> list[dict[str, Any]]:
    """The INT8 model's metrics (as :func:`metrics`: ``label``, ``value``, ``delta``, ``neutral``, ``help``):
    top-1 beside the fp32 pruned model's, ONNX Runtime latency of INT8 / fp32 pruned / original, sizes.
    Empty without an INT8 model (or when it failed: :func:`int8`'s ``error``)."""
    q = int8(summary)
    if not q or q["error"]:
        return []
    where = f"{q['device']}, batch {q['batch']}"
    x = lambda v: f"{v:.2f}× faster" if v is not None else None  # noqa: E731
    return [
        {"label": "INT8 top-1 (report split)", "value": fmt(q["top1"], ".2f", " %"), "neutral": False,
         "delta": fmt(q["delta"], "+.2f", " pts vs fp32") if q["delta"] is not None else None,
         "help": f"ONNX Runtime, on the {fmt(q['images'], 'd')} report images the fp32 model is scored on; "
                 f"same class as fp32 for {fmt(q['agreement'], '.1f', ' %')} of them"},
        {"label": "fp32 pruned top-1 (ONNX Runtime)", "value": fmt(q["top1_fp32"], ".2f", " %"), "delta": None,
         "neutral": True, "help": f"PyTorch on the report split: {fmt(q['top1_pytorch'], '.2f', ' %')}"},
        {"label": "INT8 file size", "value": fmt(q["size_mb"], ",.3f", " MB"), "neutral": True,
         "delta": f"{q['size_ratio']:.0%} of fp32" if q["size_ratio"] is not None else None,
         "help": f"fp32 pruned model.onnx: {fmt(q['size_fp32_mb'], ',.3f', ' MB')}"},
        {"label": f"INT8 ORT latency ({where})", "value": fmt(q["ms"], ".2f", " ms"), "neutral": True,
         "delta": x(q["speedup"]) and f"{x(q['speedup'])} than fp32",
         "help": "ONNX Runtime on the CPU, INT8 and fp32 pruned timed alternately (their ratio)"},
        {"label": f"fp32 pruned ORT latency ({where})", "value": fmt(q["fp32_ms"], ".2f", " ms"), "delta": None,
         "neutral": True},
        {"label": f"Original ORT latency ({where})", "value": fmt(q["original_ms"], ".2f", " ms"), "neutral": True,
         "delta": x(q["speedup_original"]) and f"INT8 {x(q['speedup_original'])}",
         "help": "The unpruned fp32 model, timed alternately with the INT8 one"},
    ]


def int8_caption(summary: dict | None) -> str | None:
    """The line under the INT8 metrics: how the model was quantized and calibrated, and where it was verified."""
    q = int8(summary)
    if not q or q["error"]:
        return None
    weights = "per-channel" if q["per_channel"] else "per-tensor"
    return (f"{q['format'] or 'QDQ'} INT8 ({weights} weights, {fmt(q['quantized_nodes'], 'd')} quantized tensors), "
            f"calibrated on {fmt(q['calibration_images'], 'd')} fine-tune images ({q['method'] or 'minmax'}); "
            f"verified in ONNX Runtime on {fmt(q['images'], 'd')} report images")


def event_line(kind: str, event: dict) -> str:
    """A strategy event that happens once (e.g. ``prior``, where a search starts) as one line of its
    scalar fields, instead of a chart of single dots."""
    parts = []
    for k, v in event.items():
        if k in ("kind", "time") or isinstance(v, (list, dict)) or v is None:
            continue
        parts.append(f"{k} {fmt(v, '.4g') if isinstance(v, float) else v}")
    return f"{kind}: " + " · ".join(parts)

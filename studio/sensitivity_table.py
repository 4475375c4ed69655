"""A sensitivity analysis shaped for the page: ratios typed by the user, the matrix completed, table and CSV.

Pure functions (no Streamlit), unit-tested in ``tests/test_results.py``. The engine owns the
ratio syntax (:func:`pruner.sensitivity.parse_ratios`); this module only turns its error into
the message the page shows.
"""

from __future__ import annotations

import io
from typing import Any

from pruner.errors import PrunerError
from pruner.sensitivity import parse_ratios as _parse_ratios
from pruner.csv_cells import SafeWriter


def parse_ratios(text: str) -> tuple[list[float], str | None]:
    """``"0.2, 0.4"`` → sorted distinct fractions in (0, 1), or the reason the text is not that."""
    try:
        return _parse_ratios(text), None
    except PrunerError as exc:
        return [], str(exc)


def _at(sens: dict, key: str, gi: int, ri: int) -> Any:
    m = sens.get(key) or []
    return m[gi][ri] if gi < len(m) and ri < len(m[gi]) else None


def complete(sens: dict, base_top1: float | None = None) -> tuple[dict, str]:
    """The analysis with its ``drop`` matrix (derived from top-1 and the unpruned top-1 when missing),
    and which matrix to show: ``"drop"`` when there is one, else ``"top1"``."""
    sens = dict(sens)
    if base_top1 is not None and sens.get("base_top1") is None:
        sens["base_top1"] = base_top1
    if sens.get("drop") is None and sens.get("base_top1") is not None:
        sens["drop"] = [[None if v is None else sens["base_top1"] - v for v in row] for row in sens.get("top1") or []]
    return sens, ("drop" if sens.get("drop") is not None else "top1")


def table(sens: dict, value: str) -> list[dict[str, Any]]:
    """One row per layer group, one column per ratio: the top-1 drop (points) or top-1 (%)."""
    rows = []
    channels = sens.get("channels") or []
    for gi, g in enumerate(sens.get("groups") or []):
        row: dict[str, Any] = {"group": g}
        if channels:
            row["channels"] = channels[gi] if gi < len(channels) else None
        for ri, r in enumerate(sens.get("ratios") or []):
            v = _at(sens, value, gi, ri)
            row[f"{r:.0%} removed"] = None if v is None else round(v, 2)
        rows.append(row)
    return rows


CSV_COLUMNS = ("group", "channels", "ratio", "top1", "drop", "macs_saved")


def to_csv(sens: dict) -> str:
    """The long form (one line per group and ratio) that spreadsheets and pandas read."""
    buf = io.StringIO()
    w = SafeWriter(buf)
    w.writerow(CSV_COLUMNS)
    channels = sens.get("channels") or []
    for gi, g in enumerate(sens.get("groups") or []):
        for ri, r in enumerate(sens.get("ratios") or []):
            w.writerow([g, channels[gi] if gi < len(channels) else None, r, _at(sens, "top1", gi, ri),
                        _at(sens, "drop", gi, ri), _at(sens, "macs_saved", gi, ri)])
    return buf.getvalue()

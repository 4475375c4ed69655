"""CSV that a spreadsheet cannot execute: the one writer of every CSV the project produces.

A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``@SUM(1+1)``). Such cells are written
with a leading apostrophe, as OWASP's CSV-injection advice recommends; numbers are written as they are.
"""

from __future__ import annotations

import csv
from typing import Any, Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value``, with a text that a spreadsheet would evaluate prefixed by ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeWriter:
    """``csv.writer`` whose rows pass through :func:`safe_cell`."""

    def __init__(self, fh, **kwargs: Any):
        self._w = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[Any]) -> None:
        self._w.writerow([safe_cell(v) for v in row])

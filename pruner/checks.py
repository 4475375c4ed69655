"""Checks of single settings, shared by the run settings, fine-tuning settings and strategy
hyperparameters, so a number out of range reads the same wherever it is caught."""

from __future__ import annotations

import math
from typing import Any

from .errors import PrunerError


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def range_text(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
               high_open: bool = False) -> str:
    """``an integer >= 1``, ``a number in (0, 1]``, ...: the allowed values in words."""
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        return f"{noun} in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{noun} {'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{noun} {'<' if high_open else '<='} {_num(high)}"
    return noun


def check_number(name: str, value: Any, kind: type, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False,
                 flag: str | None = None) -> Any:
    """``value`` as ``kind`` (``int``: a whole number; ``float``: a finite number) if it lies in the
    range (``*_open``: that end exclusive), else a one-line ``PrunerError`` naming the setting (and
    its command-line ``flag``) and the allowed range. ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    label = f"{name} ({flag})" if flag else name
    problem = PrunerError(f"{label} must be {range_text(kind, low, high, low_open=low_open, high_open=high_open)}"
                          f", got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise problem
    if kind is int:
        if float(value) != int(value):
            raise problem
        value = int(value)
    else:
        value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise problem
    if high is not None and (value >= high if high_open else value > high):
        raise problem
    return value

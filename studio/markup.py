"""Text from a run directory (model names, paths, errors, notes) shown in Markdown elements as plain text.

Streamlit renders Markdown in ``st.markdown``, captions, alerts and labels; a user-controlled string
such as ``![x](http://host/beacon.png)`` would make the browser fetch that address. Every such string
passes through :func:`plain_md`, which backslash-escapes each Markdown (and Streamlit directive,
LaTeX) character so that it reads exactly as written. Rules: ``docs/security.md``.
"""

from __future__ import annotations

import re
from typing import Any

_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|<>~$:])")     # inline syntax, anywhere in the text
_LEADING = re.compile(r"^(\s*)(\d*)([-+=>]|(?<=\d)[.)])")               # block syntax (a list, a heading) at its start
MAX_SHOWN = 2_000   # characters of one string shown; the rest is cut


def plain_md(value: Any, limit: int = MAX_SHOWN) -> str:
    """``value`` as Markdown source that renders as its literal text (cut to ``limit`` characters)."""
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[:limit] + f" … ({len(text) - limit:,} characters cut)"
    text = " ".join(text.split("\n")) if "\n" in text else text
    text = _SPECIAL.sub(r"\\\1", text)
    return _LEADING.sub(lambda m: m.group(1) + m.group(2) + "\\" + m.group(3), text)

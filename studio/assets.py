"""The static files the studio serves, in ``assets/`` at the repository root.

| file | used for |
|---|---|
| ``icon.png`` | the page icon (a local file: the browser needs no internet for it) |
| ``studio.css`` | the studio's own styles (wider pages, metrics that wrap instead of ending in "…") |
| ``example_model.py`` | an example user model offered next to the "upload a .py" field |
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ICON = ASSETS / "icon.png"
CSS = ASSETS / "studio.css"
EXAMPLE_MODEL = ASSETS / "example_model.py"


def css() -> str:
    """The studio's stylesheet as text ('' when the file is missing: the pages still work)."""
    try:
        return CSS.read_text(encoding="utf-8")
    except OSError:
        return ""


def example_model() -> bytes:
    return EXAMPLE_MODEL.read_bytes()

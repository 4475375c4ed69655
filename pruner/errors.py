"""User-facing errors.

Every problem a user can cause (bad path, corrupt checkpoint, budget out of range, ...)
is raised as a :class:`PrunerError` whose message names the problem *and* what to do.
The CLI prints ``error: <message>`` and exits non-zero; the Streamlit pages show it with
``st.error``. Anything else that escapes is a bug.
"""

from __future__ import annotations


class PrunerError(Exception):
    """An error caused by input the user can fix; the message says how."""


class CancelledError(PrunerError):
    """Raised inside long work when the user asked to cancel."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`PrunerError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise PrunerError(message)

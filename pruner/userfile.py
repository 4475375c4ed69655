"""User code: importing a function from a user's Python file (``file:`` models, ``python:`` cost
functions), and which settings name such code.

Importing runs the file's code, so it happens only with consent (docs/security.md): a
:class:`~pruner.runs.config.RunConfig` that names user code must say ``trust_code=True`` (the
CLI sets it: naming the file on one's own command line is consent; the studio sets it only
after the "I trust this file: run its code" box is ticked), and the studio never imports
user code in the web server process: model summaries are built in a child process
(:mod:`pruner.model_summary`) and runs in job processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from .errors import PrunerError


CODE_PREFIXES = ("file:", "python:")
CONSENT_HINT = ("it runs only with your consent: in the studio tick \"I trust this file: run its code\"; in Python "
                "pass trust_code=True (on the command line, naming the file is consent)")


def code_references(model: str | None, strategy_params: dict | None = None) -> list[str]:
    """The settings that name user Python code: a ``file:`` model, ``python:`` strategy parameters."""
    refs = [model] if isinstance(model, str) and model.strip().startswith("file:") else []
    for value in (strategy_params or {}).values():
        if isinstance(value, str) and value.strip().startswith(CODE_PREFIXES):
            refs.append(value.strip())
    return refs


def import_function(path: str | Path, name: str, *, what: str, syntax: str) -> Callable:
    """Import ``path`` and return its callable ``name``.

    ``what`` names the file in messages ("model file"); ``syntax`` is the option's form
    ("file:PATH.py:FACTORY"), quoted when the function is missing.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise PrunerError(f"{what} {path} does not exist; check the path in {syntax}")
    module_name = "pruner_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PrunerError(f"could not import {what} {path}: {type(exc).__name__}: {exc}; fix the file") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module_name]
        raise PrunerError(f"{path} has no function {name!r} (it defines: {', '.join(found) or 'nothing'}); "
                          f"name the function after the last ':' in {syntax}")
    return fn

"""Importing a function from a user's Python file (``file:`` models, ``python:`` cost functions).

Importing runs the file's code: it is the user's own file, named on their command line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from .errors import PrunerError


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

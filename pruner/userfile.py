"""User code: importing a function from a user's Python file (``file:`` models, ``python:`` cost
functions), and which settings name such code.

Importing runs the file's code, so it happens only with consent (docs/security.md): a
:class:`~pruner.runs.config.RunConfig` that names user code must say ``trust_code=True`` (the
CLI sets it: naming the file on one's own command line is consent; the studio sets it only
after the "I trust this file: run its code" box is ticked), and the studio never imports
user code in the web server process: model summaries are built in a child process
(:mod:`pruner.model_summary`) and runs in job processes.

Listing an uploaded file's functions (:func:`factories_in`) runs no user code either, but
parsing is not free: ``ast`` needs hundreds of bytes of memory per byte of source, and a
deeply nested expression overflows the parser. So a file over :data:`MAX_SOURCE_BYTES` is
refused before anything reads it, and the parse runs in a child interpreter limited to
:data:`PARSE_TIMEOUT_S` seconds and :data:`PARSE_MEMORY_BYTES` of address space, which answers
in JSON; answers are kept by the file's sha256, so the same bytes are parsed once per process.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from .errors import PrunerError


CODE_PREFIXES = ("file:", "python:")
CONSENT_HINT = ("it runs only with your consent: in the studio tick \"I trust this file: run its code\"; in Python "
                "pass trust_code=True (on the command line, naming the file is consent)")

#: The largest model file the studio accepts (real model code is a few kB to a hundred kB).
MAX_SOURCE_BYTES = 1 << 20
#: Limits of the child process that parses an uploaded file: wall-clock seconds, address space.
#: A 1 MiB file of one-line statements, the worst case under the cap, needs about 0.8 GB and 5 s.
PARSE_TIMEOUT_S = 20.0
PARSE_MEMORY_BYTES = 1 << 30
#: How many distinct files' parse answers are kept (each a list of names or one message).
PARSE_CACHE_ENTRIES = 256
#: Parse children started by this process (the cache makes a rerun start none).
parses_started = 0

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
_PARSED: OrderedDict[str, dict[str, Any]] = OrderedDict()
_LOCK = threading.Lock()


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


# ---------------------------------------------------------------------- listing a file's functions
def size_text(n: int) -> str:
    """A byte count for messages: ``1 GiB``, ``9.54 MiB``, ``120 KiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def factories_in(source: bytes, filename: str, *, timeout: float = PARSE_TIMEOUT_S) -> list[str]:
    """Public top-level functions and classes of an uploaded model file (candidate factories).

    The file is parsed, never imported, in a bounded child process (see the module's doc); a
    file over :data:`MAX_SOURCE_BYTES` is refused first. Every problem is a one-line
    :class:`PrunerError`.
    """
    if len(source) > MAX_SOURCE_BYTES:
        size, cap = size_text(len(source)), size_text(MAX_SOURCE_BYTES)
        if size == cap:  # just over: the rounded sizes read the same
            size, cap = f"{len(source):,} bytes", f"{cap} ({MAX_SOURCE_BYTES:,} bytes)"
        raise PrunerError(f"{filename} is {size}, over the {cap} limit for a model file; upload only the Python "
                          "source that defines the model factory")
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:
        raise PrunerError(f"{filename} is not a UTF-8 text file; upload the Python source (.py) that defines "
                          "the model factory") from None
    if "\x00" in text:
        raise PrunerError(f"{filename} contains null bytes, so it is not Python source; upload the .py text file "
                          "that defines the model factory")
    digest = hashlib.sha256(source).hexdigest()
    with _LOCK:
        answer = _PARSED.get(digest)
        if answer is not None:
            _PARSED.move_to_end(digest)
    if answer is None:
        answer = _parse_in_child(source, timeout)
        if not answer.get("transient"):
            with _LOCK:
                _PARSED[digest] = answer
                while len(_PARSED) > PARSE_CACHE_ENTRIES:
                    _PARSED.popitem(last=False)
    return _factories(answer, filename)


def _factories(answer: dict[str, Any], filename: str) -> list[str]:
    """The child's answer as the factory list, or the :class:`PrunerError` it stands for."""
    problem = answer.get("problem")
    if problem == "syntax":
        where = f"line {answer['line']}: " if answer.get("line") else ""
        raise PrunerError(f"{filename} is not valid Python ({where}{_line(answer.get('msg'))}); fix the file and "
                          "upload it again")
    if problem == "nesting":
        raise PrunerError(f"{filename} nests its expressions too deeply to parse (RecursionError); split the long "
                          "or deeply nested expressions and upload it again")
    if problem == "memory":
        raise PrunerError(f"{filename} is too complex to parse within {size_text(PARSE_MEMORY_BYTES)} of memory "
                          "(MemoryError: an expression nested too deeply, or too much code); split long or deeply "
                          "nested expressions and upload it again")
    if problem == "timeout":
        raise PrunerError(f"parsing {filename} took longer than {answer['seconds']:g} s and was stopped; upload a "
                          "smaller model file")
    if problem == "start":
        raise PrunerError(f"could not start the process that parses {filename} ({answer['detail']}); check the "
                          "machine's free memory and process limits, then upload it again")
    if problem == "other":
        raise PrunerError(f"{filename} could not be parsed ({_line(answer.get('detail'))}); fix the file and upload "
                          "it again")
    if problem is not None or not isinstance(answer.get("names"), list):
        detail = f": {answer['detail']}" if answer.get("detail") else ""
        raise PrunerError(f"the process parsing {filename} stopped without an answer{detail}; the file is probably "
                          "too large or too complex: upload a smaller model file")
    names = [str(n) for n in answer["names"]]
    if not names:
        raise PrunerError(f"{filename} defines no public function or class; add a factory such as "
                          "`def build(num_classes): return MyNet(num_classes)`")
    preferred = [n for n in names if any(w in n.lower() for w in ("build", "create", "make", "get_model", "model"))]
    return preferred + [n for n in names if n not in preferred]


def _parse_in_child(source: bytes, timeout: float) -> dict[str, Any]:
    """Run :func:`_parse_main` on ``source`` in a fresh, isolated interpreter; its JSON answer.

    Failures of the child itself are answers too: ``{"problem": "timeout" | "died" | "start"}``;
    only a child that could not be started is ``transient`` (not worth remembering).
    """
    global parses_started
    code = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); from pruner.userfile import _parse_main; "
            f"_parse_main({PARSE_MEMORY_BYTES}, {int(timeout) + 2})")
    with _LOCK:
        parses_started += 1
    try:
        # -I -S: no environment variables, user or site packages; nothing but this module and the stdlib
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return {"problem": "start", "detail": _line(exc.strerror or exc), "transient": True}
    try:
        try:
            out, err = proc.communicate(source, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"problem": "timeout", "seconds": timeout}
    finally:
        if proc.poll() is None:  # timed out, or interrupted while waiting: leave nothing behind
            proc.kill()
            proc.wait()
    try:
        answer = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        answer = None
    if proc.returncode == 0 and isinstance(answer, dict):
        return answer
    lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    tail = f", {_line(lines[-1], 120)}" if lines else ""
    return {"problem": "died", "detail": f"exit code {proc.returncode}{tail}"}


def _parse_main(memory_bytes: int, cpu_seconds: int) -> None:
    """Child entry point: Python source on stdin, its public top-level names (or the problem) as JSON on stdout.

    Limits itself first: ``memory_bytes`` of address space, ``cpu_seconds`` of CPU time.
    """
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    source = sys.stdin.buffer.read()
    try:
        tree = ast.parse(source.decode("utf-8"))
        answer: dict[str, Any] = {"names": [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                                            and not n.name.startswith("_")]}
        del tree
    except SyntaxError as exc:
        answer = {"problem": "syntax", "line": exc.lineno, "msg": str(exc.msg)}
    except RecursionError:
        answer = {"problem": "nesting"}
    except MemoryError:
        answer = {"problem": "memory"}
    except Exception as exc:  # noqa: BLE001 - e.g. a ValueError from the parser: one line
        answer = {"problem": "other", "detail": f"{type(exc).__name__}: {_line(exc)}"}
    sys.stdout.write(json.dumps(answer))

"""The house rules, read from the source (no import of the code under test):

* every run-directory file name is spelled in ``pruner/runs/rundir.py`` only;
* no import cycle in ``pruner/`` and ``studio/`` (module-level and function-level imports alike), and
  no upward arrow: ``pruner`` never imports ``studio``, ``streamlit`` or ``pages``, and inside
  ``pruner`` no module imports one of a higher layer (:data:`LAYERS`, as ``docs/architecture.md``
  draws them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNDIR = ROOT / "pruner" / "runs" / "rundir.py"
#: the studio's and the engine's sources (tests are free to spell file names)
SOURCES = ("pruner", "studio", "pages", "app.py")


def _py_files(*tops: str) -> list[Path]:
    files: list[Path] = []
    for top in tops:
        path = ROOT / top
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


# ---------------------------------------------------------------------- run-directory file names
_NAME_CONSTANT = re.compile(r"_(FILE|DIR|STATE|RESULT|MARKER)$")


def rundir_file_names() -> set[str]:
    """Every name rundir.py gives a file or folder of a run directory: its ``*_FILE``, ``*_DIR``,
    ``*_STATE``, ``*_RESULT``, ``*_MARKER`` constants and the artifacts' file names."""
    names: set[str] = set()
    for node in ast.parse(RUNDIR.read_text()).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        target, value = node.targets[0].id, node.value
        if _NAME_CONSTANT.search(target) and isinstance(value, ast.Constant) and isinstance(value.value, str):
            names.add(value.value)
        elif target == "ARTIFACTS" and isinstance(value, ast.Dict):
            names |= {v.value for v in value.values if isinstance(v, ast.Constant)}
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def stray_file_names(files: list[Path], names: set[str]) -> list[str]:
    """``file:line: 'name'`` for each string literal outside docstrings that is a run-directory file name
    (the whole string, or the last part of a path such as ``"state/search.json"``), and for each
    folder name joined onto a path (``path / "state"``). Prose in messages may name a file."""
    dotted = {n for n in names if "." in n.strip(".")}
    found: list[tuple[tuple[str, int], str]] = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        docs = _docstrings(tree)
        joined = {id(node.right) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
                continue
            text = node.value.strip()
            last = text.rstrip("/").rpartition("/")[2]
            if (last in dotted and " " not in text) or (id(node) in joined and last in names):
                found.append(((_rel(path), node.lineno), f"{_rel(path)}:{node.lineno}: {node.value!r}"))
    return [text for _line, text in sorted(found)]


def test_rundir_knows_the_names_it_owns():
    names = rundir_file_names()
    assert {"config.json", "events.jsonl", "summary.json", "sensitivity.json", "job.lock", "cancel.request",
            "notes.json", "state", "artifacts", "search.json", "base.json", "overrides.json", "model.onnx"} <= names


def test_run_directory_file_names_are_spelled_in_rundir_only():
    files = [f for f in _py_files(*SOURCES) if f != RUNDIR]
    stray = stray_file_names(files, rundir_file_names())
    assert not stray, "run-directory file names spelled outside pruner/runs/rundir.py (use its constants):\n" + \
        "\n".join(stray)


def test_the_literal_check_finds_a_stray_name(tmp_path):
    src = tmp_path / "page.py"
    src.write_text('"""Reads config.json."""\nfrom pathlib import Path\n\n'
                   'def f(run):\n    """summary.json"""\n    msg = "no config.json here"\n'
                   '    return Path(run) / "sensitivity.json", run / "state", "state/search.json"\n')
    names = {"config.json", "sensitivity.json", "state", "search.json", "summary.json"}
    assert sorted(s.split(": ", 1)[1] for s in stray_file_names([src], names)) == \
        ["'sensitivity.json'", "'state'", "'state/search.json'"]


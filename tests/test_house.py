"""The house rules, read from the source (no import of the code under test):

* every run-directory file name is spelled in ``pruner/runs/rundir.py`` only;
* no import cycle in ``pruner/`` and ``studio/`` (module-level and function-level imports alike), and
  no upward arrow: ``pruner`` never imports ``studio``, ``streamlit`` or ``pages``, and inside
  ``pruner`` no module imports one of a higher layer (:data:`LAYERS`, as ``docs/architecture.md``
  draws them);
* no search strategy imports another (what several share lives in ``pruner/search/probes.py``,
  ``common.py``, ``base.py`` or ``pruner/budget.py``);
* no function in ``pruner/`` and ``studio/`` longer than :data:`LONG_LINES` lines unless its docstring
  says why (a line starting ``Long because:``).
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


# ---------------------------------------------------------------------- the import graph
#: The engine's layers, lowest first (docs/architecture.md): a module imports only from its own layer or
#: lower ones. A module is in the layer of the longest name here that it is or lies under; every module
#: of ``pruner`` must be in one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("pruner", "pruner.errors", "pruner.atomic", "pruner.checks", "pruner.settings", "pruner.csv_cells",
              "pruner.userfile", "pruner.recipes")),
    ("model", ("pruner.data", "pruner.models", "pruner.pruning", "pruner.budget", "pruner.evaluate", "pruner.measure",
               "pruner.export", "pruner.finetune", "pruner.quantize")),
    ("search", ("pruner.search", "pruner.sensitivity")),
    ("runs", ("pruner.runs",)),
    ("front", ("pruner.cli", "pruner.__main__", "pruner.progress", "pruner.model_summary")),
)
#: what the engine never imports (the UI, and the pages that are run as scripts)
ENGINE_NEVER_IMPORTS = ("studio", "streamlit", "pages")


def module_files(*packages: str, root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is a package's __init__)}`` of every module under ``packages``."""
    out: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def imported_names(module: str, path: Path, is_package: bool) -> list[tuple[str, int]]:
    """Every module name ``module`` imports, anywhere in the file (module level, functions, classes),
    relative imports resolved: ``from . import x`` names ``<package>.x``, ``from .a import b`` names
    ``<package>.a.b`` (the caller keeps the longest part of it that is a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return names


def import_graph(modules: dict[str, tuple[Path, bool]]) -> tuple[dict[str, dict[str, int]], dict[str, list[tuple[str, int]]]]:
    """The graph of imports between ``modules`` (``{module: {imported module: line}}``) and every name
    each imports (outside ones included)."""
    graph: dict[str, dict[str, int]] = {}
    raw: dict[str, list[tuple[str, int]]] = {}
    for module, (path, is_package) in modules.items():
        raw[module] = imported_names(module, path, is_package)
        edges: dict[str, int] = {}
        for name, line in raw[module]:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.setdefault(name, line)
        graph[module] = edges
    return graph, raw


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected set of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:   # Tarjan; the graphs here are shallow
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append(_cycle_in(graph, set(members)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_in(graph: dict[str, dict[str, int]], members: set[str]) -> list[str]:
    """A shortest cycle through the smallest module of a strongly connected set (breadth first)."""
    start = min(members)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError("not a cycle")


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for rank, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, dict[str, int]], raw: dict[str, list[tuple[str, int]]],
                   modules: dict[str, tuple[Path, bool]]) -> list[str]:
    """Each import of the engine that points up: into ``studio``, ``streamlit`` or ``pages``, or into a
    higher layer of :data:`LAYERS`; and each engine module no layer holds."""
    problems = []
    for module in sorted(m for m in graph if m == "pruner" or m.startswith("pruner.")):
        where = _rel(modules[module][0])
        rank = layer_of(module)
        if rank is None:
            problems.append(f"{where}: {module} is in no layer of tests/test_house.py's LAYERS; add it")
            continue
        for name, line in raw[module]:
            if name.split(".")[0] in ENGINE_NEVER_IMPORTS:
                problems.append(f"{where}:{line}: the engine imports {name}")
        for target, line in sorted(graph[module].items()):
            up = layer_of(target)
            if up is not None and up > rank:
                problems.append(f"{where}:{line}: {module} ({LAYERS[rank][0]}) imports {target} ({LAYERS[up][0]})")
    return problems


def test_no_import_cycle():
    graph, _ = import_graph(module_files("pruner", "studio"))
    found = cycles(graph)
    assert not found, "import cycles (a function-level import is an import too):\n" + \
        "\n".join(_describe(graph, c) for c in found)


def test_no_upward_import():
    modules = module_files("pruner", "studio")
    graph, raw = import_graph(modules)
    problems = upward_imports(graph, raw, modules)
    assert not problems, "imports against the layers (docs/architecture.md):\n" + "\n".join(problems)


def test_the_graph_checks_find_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "pruner"
    (pkg / "runs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .runs import job\n")
    (pkg / "runs" / "__init__.py").write_text("")
    (pkg / "runs" / "job.py").write_text("from ..errors import f\nimport streamlit\n")
    (pkg / "cli.py").write_text("from .runs.job import f\n")
    modules = module_files("pruner", root=tmp_path)
    graph, raw = import_graph(modules)
    assert cycles(graph) == [["pruner.errors", "pruner.runs.job", "pruner.errors"]]
    problems = upward_imports(graph, raw, modules)
    assert any("errors.py:2: pruner.errors (base) imports pruner.runs.job (runs)" in p for p in problems)
    assert any("the engine imports streamlit" in p for p in problems)


# ---------------------------------------------------------------------- strategies stand alone
def strategy_modules(modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """The modules of ``pruner.search`` that register a strategy (a class decorated ``@register``)."""
    out = set()
    for module, (path, _) in modules.items():
        if not module.startswith("pruner.search."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == "register"
                                                      for d in node.decorator_list):
                out.add(module)
    return out


def test_no_strategy_imports_another():
    modules = module_files("pruner")
    graph, _ = import_graph(modules)
    strategies = strategy_modules(modules)
    assert {"pruner.search.baselines", "pruner.search.rl_pruner", "pruner.search.sensitivity_strategy"} <= strategies
    found = [f"{m}:{line} imports {t}" for m in sorted(strategies) for t, line in graph[m].items()
             if t in strategies]
    assert not found, "a strategy imports another (move what they share to pruner/search/probes.py or " \
                      "common.py):\n" + "\n".join(found)


# ---------------------------------------------------------------------- short units
#: a function (or method) longer than this many lines (``end_lineno - lineno``) needs a reason
LONG_LINES = 60
#: where a long function must say why
SHORT_UNITS = ("pruner", "studio")
#: long functions not split yet, each with why it waits (empty this as they are split)
NOT_SPLIT_YET: set[str] = set()   # functions waiting to be split (none now)


def long_functions(files: list[Path], limit: int = LONG_LINES) -> list[tuple[str, int, bool]]:
    """``(file:Qualified.name, lines, has a reason)`` for every function in ``files`` longer than ``limit``
    lines; a reason is a docstring line starting ``Long because:``."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(node, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno > limit:
                        doc = ast.get_docstring(child) or ""
                        reason = any(line.strip().startswith("Long because:") for line in doc.splitlines())
                        found.append((f"{_rel(path)}:{name}", child.end_lineno - child.lineno, reason))
                    visit(child, name + ".")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return found


def test_no_long_function_without_a_reason():
    found = long_functions(_py_files(*SHORT_UNITS))
    unexplained = [f"{where} ({lines} lines)" for where, lines, reason in found
                   if not reason and where not in NOT_SPLIT_YET]
    assert not unexplained, (f"functions over {LONG_LINES} lines: split them by meaning, or say why in the docstring "
                             "(a line starting 'Long because:'):\n" + "\n".join(unexplained))
    still_long = {where for where, _, _ in found}
    assert NOT_SPLIT_YET <= still_long, f"no longer long, drop from NOT_SPLIT_YET: {NOT_SPLIT_YET - still_long}"


def test_the_length_check_reads_nested_functions_and_reasons(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (tmp_path / "m.py").write_text(
        f"class A:\n  def long(self):\n{body}\n\n"
        f"def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n    return inner\n\n"
        f'def explained():\n    """Long because: a table."""\n{body}\n\n'
        "def short():\n    return 1\n")
    found = {where.split(":")[-1]: reason for where, _, reason in long_functions([tmp_path / "m.py"])}
    assert found == {"A.long": False, "outer": False, "outer.inner": False, "explained": True}

"""One bad file in one run directory never takes a page down (issue 28, items 2, 3 and 6).

Each case writes the damaged record a careless user or a hostile file would leave (a deep JSON,
a summary of the wrong shape, NaN and Infinity, an overlong event line, a symlinked run, a run
id over the file-name limit, Markdown and spreadsheet formulas in names, a NaN preprocessing
value in a checkpoint) beside a healthy run, and reads it through the real readers and pages.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from pruner.csv_cells import safe_cell
from pruner.errors import PrunerError
from pruner.models.checkpoints import load_checkpoint
from pruner.runs.rundir import (MAX_EVENT_LINE, MAX_LOG_MESSAGE, Event, RunDir, Status, list_runs, read_events,
                                read_json, write_json_atomic)
from studio import history
from studio.events import RunView, format_seconds
from studio.markup import plain_md

APP = str(Path(__file__).resolve().parents[1] / "app.py")

HEALTHY_SUMMARY = {"status": "done", "error": None, "seconds": 12.5,
                   "base": {"macs": 40e6, "params": 2.7e5, "top1": 81.0},
                   "pruned": {"macs": 20e6, "params": 1.3e5, "top1": 79.0}}
HEALTHY_CONFIG = {"kind": "prune", "model": "resnet20", "weights": "pretrained", "data": "cifar10-jpeg",
                  "budget": "flops=0.5", "strategy": "uniform", "device": "cpu", "search_evals": 4,
                  "finetune": {"epochs": 0}}


def make_run(root: Path, name: str, config=None, summary=None, *, summary_text: str | None = None) -> RunDir:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(HEALTHY_CONFIG if config is None else config))
    if summary_text is not None:
        (path / "summary.json").write_text(summary_text)
    elif summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return RunDir(path)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("PRUNER_RUNS_DIR", str(root))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield root
    st.cache_data.clear()
    st.cache_resource.clear()


# ---------------------------------------------------------------------- readers
def test_deep_json_is_unreadable_not_a_crash(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    (tmp_path / "summary.json").write_text('{"status": "done", "x": ' + deep + "}")
    assert read_json(tmp_path / "summary.json") is None
    rd = make_run(tmp_path, "run", summary_text='{"status": "done", "x": ' + deep + "}")
    assert "nested too deep" in rd.damage()
    line = ('{"kind": "log", "message": ' + deep + "}\n").encode() + b'{"kind": "log", "message": "after"}\n'
    rd.events_path.write_bytes(line)
    assert [e["message"] for e in rd.iter_events()] == ["after"]


def test_nan_and_infinity_are_read_as_missing(tmp_path):
    rd = make_run(tmp_path, "run", summary_text='{"status": "done", "seconds": Infinity, "base": {"top1": NaN}}')
    assert rd.summary()["seconds"] is None and rd.summary()["base"]["top1"] is None
    assert rd.damage() is None
    for bad in (math.nan, math.inf, -math.inf, "abc", None):
        assert format_seconds(bad) == "—"
    assert format_seconds(75) == "1m 15s"


@pytest.mark.parametrize("config, summary, needle", [
    (None, {**HEALTHY_SUMMARY, "pruned": [1, 2]}, "'pruned' is list"),
    (None, {**HEALTHY_SUMMARY, "base": "str"}, "'base' is str"),
    (None, {**HEALTHY_SUMMARY, "pruned": {"top1": "high"}}, "'pruned.top1' is str"),
    (None, {**HEALTHY_SUMMARY, "groups": [1, 2]}, "'groups' holds"),
    ({**HEALTHY_CONFIG, "finetune": "abc"}, HEALTHY_SUMMARY, "'finetune' is str"),
    ({**HEALTHY_CONFIG, "model": ["x"]}, None, "'model' is list"),
])
def test_a_summary_of_the_wrong_shape_is_one_damaged_row(runs_dir, config, summary, needle):
    make_run(runs_dir, "healthy", summary=HEALTHY_SUMMARY)
    bad = make_run(runs_dir, "bad", config=config, summary=summary)
    assert needle in bad.damage()
    rows = {r["name"]: r for r in (history.table_row(rd) for rd in list_runs(runs_dir))}
    assert rows["bad"]["status"] == Status.DAMAGED and needle in rows["bad"]["error"]
    assert rows["healthy"]["status"] == "done" and rows["healthy"]["pruned top-1 (%)"] == 79.0


def test_overlong_event_lines_are_skipped_and_long_logs_cut(tmp_path):
    rd = make_run(tmp_path, "run")
    rd.event(Event.LOG, level="info", message="x" * (MAX_LOG_MESSAGE * 3))
    with open(rd.events_path, "ab") as fh:
        fh.write(b'{"kind": "log", "message": "' + b"y" * (MAX_EVENT_LINE * 3) + b'"}\n')
    rd.event(Event.LOG, level="info", message="last")
    logs = rd.events(Event.LOG)
    assert [len(e["message"]) < MAX_LOG_MESSAGE + 100 for e in logs] == [True, True]
    assert "characters cut" in logs[0]["message"] and logs[1]["message"] == "last"
    events, offset = read_events(rd.events_path)
    assert len(events) == 2 and offset == rd.events_path.stat().st_size
    view = RunView(rd.path)
    assert view.refresh() == 2
    assert all(len(line) < 700 for line in view.log_lines())


def test_symlinked_run_directories_are_not_followed(runs_dir, tmp_path):
    outside = make_run(tmp_path, "outside", summary={**HEALTHY_SUMMARY, "artifacts": {"onnx": "secret.txt"}})
    (outside.path / "secret.txt").write_text("not for the studio")
    (runs_dir / "link").symlink_to(outside.path)
    assert [rd.name for rd in list_runs(runs_dir)] == []
    assert RunDir(runs_dir / "link").artifact("onnx") is None
    assert outside.artifact("onnx") is not None   # the same record, not through a link

    from studio import state
    assert state.run_path("link") is None


def test_run_ids_over_the_file_name_limit_are_refused(runs_dir):
    from studio import state
    make_run(runs_dir, "healthy", summary=HEALTHY_SUMMARY)
    assert state.run_path("healthy") is not None
    assert state.run_path("a" * 300) is None
    assert state.run_path("é" * 200) is None   # 400 bytes


# ---------------------------------------------------------------------- pages
def _app(page: str, run: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(page)
    if run is not None:
        at.query_params["run"] = run
    return at.run()


def test_pages_survive_damaged_runs_beside_healthy_ones(runs_dir):
    deep = "[" * 5000 + "]" * 5000
    make_run(runs_dir, "healthy", summary=HEALTHY_SUMMARY)
    make_run(runs_dir, "deep", summary_text='{"status": "done", "x": ' + deep + "}")
    make_run(runs_dir, "wrong-shape", summary={**HEALTHY_SUMMARY, "pruned": [1, 2]})
    make_run(runs_dir, "bad-config", config={**HEALTHY_CONFIG, "finetune": "abc"})
    make_run(runs_dir, "infinite", summary_text='{"status": "done", "seconds": Infinity}')
    at = _app("pages/runs.py")
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value
    status = dict(zip(table["name"], table["status"]))
    assert status["healthy"] == "done" and status["infinite"] == "done"
    assert status["deep"] == status["wrong-shape"] == status["bad-config"] == Status.DAMAGED
    for name in ("deep", "wrong-shape", "bad-config", "infinite"):
        for page in ("pages/runs.py", "pages/live_run.py"):
            at = _app(page, name)
            assert not at.exception, (page, name, [e.message for e in at.exception])
    at = _app("pages/live_run.py", "wrong-shape")
    assert any("damaged" in str(e.value) for e in at.error), [str(e.value) for e in at.error]
    for page in ("pages/runs.py", "pages/live_run.py", "pages/sensitivity.py"):
        at = _app(page, "x" * 300)
        assert not at.exception, (page, [e.message for e in at.exception])


def test_markdown_in_run_metadata_is_shown_as_text(runs_dir):
    beacon = "![x](http://127.0.0.1:8699/beacon.png)"
    make_run(runs_dir, "md", config={**HEALTHY_CONFIG, "model": beacon, "data": "[link](http://127.0.0.1:9/)"},
             summary={**HEALTHY_SUMMARY, "status": "failed", "error": f"could not load {beacon}"})
    at = _app("pages/runs.py", "md")
    assert not at.exception
    shown = [str(e.value) for e in at.markdown] + [str(e.value) for e in at.error]
    assert any(plain_md(beacon) in s for s in shown), shown
    assert not any("](http" in s for s in shown), shown   # no link or image syntax left unescaped
    assert plain_md(beacon) == r"\!\[x\]\(http\://127.0.0.1\:8699/beacon.png\)"


# ---------------------------------------------------------------------- CSV and checkpoints
def test_csv_cells_that_spreadsheets_evaluate_are_escaped(tmp_path):
    from pruner.runs.job import _write_candidates_csv
    rd = make_run(tmp_path, "run")
    rd.event(Event.CANDIDATE, candidate_id=0, step=0, top1=50.0, reward=-0.5, cost=0.5, macs=1, params=1,
             keep_ratios=[0.5, 0.75])
    names = ['=HYPERLINK("http://127.0.0.1:9/","x")', "@SUM(1+1)"]
    out = tmp_path / "c.csv"
    _write_candidates_csv(out, rd, names)
    header, row = list(csv.reader(out.open()))
    assert header[-2:] == ["'" + names[0], "'" + names[1]]
    assert row[header.index("reward")] == "-0.5"   # numbers stay numbers
    assert safe_cell("+1") == "'+1" and safe_cell("-x") == "'-x" and safe_cell("ok") == "ok" and safe_cell(-1) == -1

    from studio.sensitivity_table import to_csv
    text = to_csv({"groups": ["=cmd|' /C calc'!A0"], "channels": [16], "ratios": [0.5], "top1": [[40.0]]})
    assert list(csv.reader(text.splitlines()))[1][0].startswith("'=")


@pytest.mark.parametrize("override, needle", [
    ({"mean": [math.nan, 0.5, 0.5]}, "finite numbers"),
    ({"std": [math.inf, 0.2, 0.2]}, "finite numbers"),
    ({"mean": [1e9, 0.5, 0.5]}, "mean must lie"),
    ({"std": [-1.0, 0.2, 0.2]}, "std must lie"),
])
def test_checkpoint_preprocessing_must_be_finite_and_in_range(tmp_path, override, needle):
    from test_faults_security import pruned_checkpoint
    path = pruned_checkpoint(tmp_path / "bad.pt", **override)
    with pytest.raises(PrunerError) as exc:
        load_checkpoint(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_write_json_atomic_keeps_nan_out(tmp_path):
    write_json_atomic(tmp_path / "s.json", {"seconds": math.nan, "x": [math.inf]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"seconds": None, "x": [None]}

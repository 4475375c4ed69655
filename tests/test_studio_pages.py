"""The studio's four pages under ``streamlit.testing.v1.AppTest``: the real app, the real engine, no mocks.

Every test gets its own runs folder (``$PRUNER_RUNS_DIR``) and a fresh ``st.cache_resource``
(so a fresh JobManager); background jobs are cancelled and joined at teardown.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.job import run_job, run_sensitivity
from pruner.runs.rundir import RunDir
from studio.markup import plain_md

APP = str(Path(__file__).resolve().parents[1] / "app.py")
NEW, LIVE, SENS, RUNS = "pages/new_run.py", "pages/live_run.py", "pages/sensitivity.py", "pages/runs.py"
TIMEOUT = 120      # seconds: one script run (the first loads torch, the data and the model)
JOB_TIMEOUT = 150  # seconds: one tiny background job on the digits demo


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("PRUNER_RUNS_DIR", str(root))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield root
    _stop_jobs()
    st.cache_resource.clear()
    st.cache_data.clear()


def _stop_jobs() -> None:
    """Cancel the jobs of the app's JobManager (if the app made one) and wait for their processes."""
    from studio import state

    shared = state._shared()
    shared.manager.shutdown(cancel=True)


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if page is not None:
        at.switch_page(page)
    return at.run()


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def assert_clean(at: AppTest) -> None:
    """No exception (traceback) on the page, and no error or warning message."""
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, texts(at.error)
    assert not at.warning, texts(at.warning)


def labels(at: AppTest, kind: str) -> list[str]:
    return [e.proto.label for e in at.get(kind)]


def wait_for_summary(path: Path, timeout: float = JOB_TIMEOUT, statuses=("done", "failed", "cancelled")) -> dict:
    """Poll the run directory until its summary has one of ``statuses``."""
    rd = RunDir(path)
    deadline = time.time() + timeout
    while time.time() < deadline:
        summary = rd.summary()
        if summary is not None and summary.get("status") in statuses:
            return summary
        time.sleep(0.5)
    events = [e for e in rd.iter_events() if e.get("kind") in ("status", "log")]
    raise AssertionError(f"{path.name} did not reach {statuses} within {timeout} s; last events: {events[-5:]}")


def wait_for_event(path: Path, kind: str, timeout: float = JOB_TIMEOUT, where=lambda e: True) -> None:
    rd = RunDir(path)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e.get("kind") == kind and where(e) for e in rd.iter_events()):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {kind} event in {path.name} within {timeout} s")


def wait_for_job_exit(path: Path, timeout: float = 60) -> None:
    """Wait until the app's JobManager has seen the job's process exit."""
    from studio import state

    assert state.job_manager().wait(path, timeout=timeout), f"the job of {path.name} is still running"


def tiny_prune_settings(at: AppTest, name: str, *, evals: int, epochs: int, export: bool = True) -> AppTest:
    """New run widgets for a quick job: resnet20, random init, digits, the random strategy, CPU."""
    at.selectbox(key="nr_zoo_model").set_value("resnet20")
    at.radio(key="nr_weights").set_value("random")
    at.selectbox(key="nr_data").set_value("digits")
    at.selectbox(key="nr_strategy").set_value("random")
    at.number_input(key="nr_search_evals").set_value(evals)
    at.number_input(key="nr_search_images").set_value(60)
    at.number_input(key="nr_recal_images").set_value(32)
    at.number_input(key="nr_report_images").set_value(60)
    at.number_input(key="nr_latency_repeats").set_value(2)
    at.number_input(key="nr_ft_epochs").set_value(epochs)
    at.number_input(key="nr_max_batches").set_value(2)
    at.number_input(key="nr_batch_size").set_value(32)
    at.checkbox(key="nr_export").set_value(export)
    at.radio(key="nr_device").set_value("cpu")
    at.text_input(key="nr_run_name").set_value(name)
    return at.run()


def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", strategy="random", search_evals=2, search_images=60,
                recal_images=32, report_images=60, latency_repeats=2, finetune=FinetuneConfig(epochs=0),
                export=False, device="cpu")
    base.update(kw)
    return RunConfig(**base)


# ---------------------------------------------------------------------- every page, no runs yet
def test_every_page_renders_its_defaults(runs_dir):
    at = app()
    assert_clean(at)
    assert texts(at.title) == ["New pruning run"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Prunable groups"] == "12"          # resnet20's model summary on the digits demo
    assert not at.button(key="nr_start").disabled
    # the whole run's expected duration, before Start, with its parts (pruner.runs.estimate)
    assert any(c.startswith("The whole run is expected to take about") and "search (" in c and "report" in c
               for c in texts(at.caption)), texts(at.caption)

    at.switch_page(LIVE).run()
    assert_clean(at)
    assert "No pruning runs yet" in " ".join(texts(at.info))

    at.switch_page(SENS).run()
    assert_clean(at)
    assert texts(at.title) == ["Layer sensitivity"]
    assert at.radio(key="sens_mode").value == "new"    # nothing to open yet
    assert {m.label: m.value for m in at.metric}["Layer groups"] == "12"
    assert not at.button(key="sens_start").disabled
    at.radio(key="sens_mode").set_value("open").run()
    assert_clean(at)
    assert "No sensitivity analyses yet" in " ".join(texts(at.info))

    at.switch_page(RUNS).run()
    assert_clean(at)
    assert "No runs yet" in " ".join(texts(at.info))


# ---------------------------------------------------------------------- validation messages
def test_new_run_validation_messages(runs_dir):
    at = app()
    assert_clean(at)

    at.number_input(key="nr_budget_value").set_value(1.5).run()
    assert not at.exception
    assert any("outside (0, 1)" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    at.number_input(key="nr_budget_value").set_value(0.5).run()
    assert_clean(at)

    at.text_input(key="nr_run_name").set_value("my run!").run()
    assert any("may only use letters" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    at.text_input(key="nr_run_name").set_value("").run()

    at.selectbox(key="nr_data").set_value("folder").run()
    assert not at.exception
    assert any("Enter the path of an ImageFolder" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    at.text_input(key="nr_folder").set_value(str(runs_dir / "no-such-folder")).run()
    assert any("does not exist" in m for m in texts(at.error)), texts(at.error)

    at.selectbox(key="nr_data").set_value("digits").run()
    at.radio(key="nr_source").set_value("torchvision").run()
    at.radio(key="nr_weights").set_value("pretrained").run()
    from pruner.models import pretrained_file
    offline = "not on this machine" in " ".join(texts(at.caption))
    assert offline is (not pretrained_file("torchvision:resnet18")[1])   # said before Start, not after a download fails
    at.text_input(key="nr_tv_model").set_value("   ").run()
    assert not at.exception
    assert any("torchvision model name" in m for m in texts(at.error)), texts(at.error)
    at.radio(key="nr_source").set_value("upload").run()
    assert not at.exception
    assert any("Upload the model's .py file" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled


def test_new_run_says_which_groups_are_frozen(runs_dir):
    """ShuffleNetV2 (torchvision, random weights): the summary names the frozen groups and why, in the page's
    warning and a table, and Start stays enabled (the rest of the model is pruned)."""
    at = app()
    at.selectbox(key="nr_data").set_value("digits").run()
    at.radio(key="nr_source").set_value("torchvision").run()
    at.radio(key="nr_weights").set_value("random").run()
    at.text_input(key="nr_tv_model").set_value("shufflenet_v2_x0_5").run()
    assert not at.exception, [e.message for e in at.exception]
    warning = [m for m in texts(at.warning) if "channel groups frozen" in m]
    assert warning and "channel axis" in warning[0] and "floor" in warning[0], texts(at.warning)
    assert any(e.label.startswith("Frozen groups (13)") for e in at.expander)
    assert not at.error, texts(at.error)
    assert not at.button(key="nr_start").disabled


def test_new_run_refuses_out_of_range_numbers_and_warns_of_unrealistic_ones(runs_dir):
    """A number out of range is not kept at its previous value with Start enabled (a browser's min/max
    would do that silently): it reaches the engine's check, which names what is allowed, and Start
    stays disabled until it is fixed. Valid but unrealistic values get a warning with their cost."""
    at = app()
    assert_clean(at)
    for key, bad, needle in (("nr_search_evals", 0, "Candidate evaluations"), ("nr_ft_epochs", -3, "Fine-tune epochs"),
                             ("nr_batch_size", 0, "Batch size"), ("nr_recal_images", 0, "BN recalibration images"),
                             ("nr_lr", -0.1, "Learning rate")):
        good = at.number_input(key=key).value
        at.number_input(key=key).set_value(bad).run()
        assert not at.exception
        assert any(m.startswith(needle) and "must be" in m and "(--" not in m for m in texts(at.error)), \
            (key, texts(at.error))                               # in the form's words, not the CLI's
        assert at.button(key="nr_start").disabled, key
        at.number_input(key=key).set_value(good).run()
        assert_clean(at)
        assert not at.button(key="nr_start").disabled
    at.number_input(key="nr_workers").set_value(64).run()
    assert not at.exception and not at.error
    assert any("64 Ray workers" in m and "CPU cores" in m for m in texts(at.warning)), texts(at.warning)
    assert not at.button(key="nr_start").disabled                      # a warning, not a refusal
    at.number_input(key="nr_workers").set_value(0)
    at.number_input(key="nr_max_batches").set_value(0)                 # all batches
    at.number_input(key="nr_ft_epochs").set_value(10_000).run()
    assert any("10,000 fine-tuning epochs are expected to take about" in m for m in texts(at.warning)), \
        texts(at.warning)


def test_sensitivity_validation_messages(runs_dir):
    at = app(SENS)
    assert_clean(at)
    for bad, expected in (("0.5, 1.5", "out of range"), ("half", "not a number"), ("", "at least one")):
        at.text_input(key="sens_ratios").set_value(bad).run()
        assert not at.exception
        assert any(expected in m for m in texts(at.error)), (bad, texts(at.error))
        assert at.button(key="sens_start").disabled
    at.text_input(key="sens_ratios").set_value("25%, 0.5").run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Ratios"] == "2"

    at.text_input(key="sens_run_name").set_value("../escape").run()
    assert any("may only use letters" in m for m in texts(at.error)), texts(at.error)
    at.text_input(key="sens_run_name").set_value("").run()
    at.selectbox(key="sens_data").set_value("folder").run()
    assert not at.exception
    assert any("Enter the path of an ImageFolder" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="sens_start").disabled


# ---------------------------------------------------------------------- a real run, start to finish
def test_prune_run_from_new_run_to_live_and_runs_pages(runs_dir):
    at = tiny_prune_settings(app(), "e2e-prune", evals=3, epochs=1)
    assert_clean(at)
    at.button(key="nr_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    # the page switched to Live run, attached to the new run (also in the URL)
    assert texts(at.title) == ["Live run"]
    assert at.query_params.get("run") in ("e2e-prune", ["e2e-prune"])
    assert len(at.get("progress")) == 1
    run = runs_dir / "e2e-prune"
    assert (run / "config.json").is_file()

    summary = wait_for_summary(run)
    assert summary["status"] == "done", summary.get("error")

    at.switch_page(LIVE).run()   # AppTest keeps its own page; follow the app's st.switch_page
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "done"
    assert " % ± " in metrics["Top-1 (report split)"]   # with its standard error on the report images
    assert at.get("progress")[0].value == 100
    assert len(at.get("plotly_chart")) >= 6
    assert {"ONNX model", "Checkpoint", "Summary JSON", "Candidates CSV"} <= set(labels(at, "download_button"))

    at.switch_page(RUNS).run()
    assert_clean(at)
    table = at.dataframe[0].value
    row = table[table["name"] == "e2e-prune"].iloc[0]
    assert row["kind"] == "prune" and row["status"] == "done" and row["model"] == "resnet20"
    assert row["strategy"] == "random" and row["budget"] == "flops=0.5"
    assert row["pruned top-1 (%)"] is not None and row["MACs (M)"] > 0
    # the selected run: layers before/after, downloads of the files that exist, a link to Live run
    assert at.selectbox[0].value == "e2e-prune"
    # one list of downloads for both pages: the Runs page offers the .pt2 program too
    assert {"ONNX model", "Checkpoint", "Program (.pt2)", "Summary JSON", "Candidates CSV"} == set(
        labels(at, "download_button"))
    assert any(p.proto.page.endswith("live_run") or "live" in p.proto.page.lower() for p in at.get("page_link"))
    at.multiselect(key="runs_compare").set_value(["e2e-prune"]).run()
    assert_clean(at)
    cmp = at.dataframe[1].value
    assert list(cmp["name"]) == ["e2e-prune"]
    # compared fronts, search curves, fine-tuning curves (tabs), the selected run's network
    assert len(at.get("plotly_chart")) == 5   # ... its graph and its channels per layer (tabs)
    assert "Pick a second run" in " ".join(texts(at.caption))

    # tags and a note, saved into the run directory and shown in the table
    at.multiselect(key="runs_notes_tags_e2e-prune").set_value(["baseline"])
    at.text_area(key="runs_notes_note_e2e-prune").set_value("the first run")
    at.button(key="FormSubmitter:runs_notes_form-Save tags and note").click().run()
    assert_clean(at)
    assert json.loads((run / "notes.json").read_text())["tags"] == ["baseline"]
    table = at.dataframe[0].value
    assert table[table["name"] == "e2e-prune"].iloc[0]["tags"] == "baseline"


def start_and_finish(at: AppTest, run: Path) -> tuple[Path, dict]:
    """Press Start on a clean New run form and wait for the run to finish: its directory and config.json."""
    assert_clean(at)
    at.button(key="nr_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    summary = wait_for_summary(run)
    assert summary["status"] == "done", summary.get("error")
    return run, json.loads((run / "config.json").read_text())


def test_optuna_strategy_from_the_form(runs_dir):
    """The black-box peer on the New run form: its declared parameters as widgets, its help, and a
    run with the sampler and warm start chosen there."""
    at = tiny_prune_settings(app(), "optuna-form", evals=4, epochs=0, export=False)
    at.selectbox(key="nr_strategy").set_value("optuna").run()
    assert_clean(at)
    assert any("Optuna (TPE or CMA-ES)" in c for c in texts(at.caption))
    at.selectbox(key="nr_sp_optuna_sampler").set_value("cmaes")
    at.selectbox(key="nr_sp_optuna_warm_start").set_value("uniform")
    at.number_input(key="nr_sp_optuna_batch").set_value(2).run()
    run, config = start_and_finish(at, runs_dir / "optuna-form")
    assert config["strategy"] == "optuna"
    assert config["strategy_params"] == {"sampler": "cmaes", "warm_start": "uniform", "batch": 2}
    trials = [c for c in RunDir(run).events("candidate") if c["meta"].get("sampler") == "cmaes"]
    assert len(trials) == 4 and trials[0]["meta"]["warm_start"] == "uniform"


def test_rl_start_offers_the_finished_analyses(runs_dir):
    """rl's start is a choice of the start names and the finished Sensitivity analyses (not a path typed
    by hand, where an analysis's name used to fail inside the job); the run starts from the one chosen."""
    assert run_sensitivity(tiny(search_images=60, recal_images=32), runs_dir / "my-analysis",
                           ratios=[0.5])["status"] == "done"
    at = tiny_prune_settings(app(), "from-analysis", evals=3, epochs=0, export=False)
    at.selectbox(key="nr_strategy").set_value("rl").run()
    assert_clean(at)
    box = at.selectbox(key="nr_sp_rl_start")
    assert box.value == "sensitivity" and box.options[:4] == ["sensitivity", "probe", "uniform", "cost"]
    label = next(o for o in box.options if o.startswith("analysis: my-analysis (resnet20 · digits"))
    # the Sensitivity page's "Use in a new rl run" opens New run with ?start=NAME: that analysis is preselected
    linked = AppTest.from_file(APP, default_timeout=TIMEOUT)
    linked.query_params["start"] = "my-analysis"
    linked.run()
    assert not linked.exception
    assert linked.selectbox(key="nr_sp_rl_start").value == label
    assert any("starts from the my-analysis" in m for m in texts(linked.info)), texts(linked.info)
    box.set_value(label).run()
    run, config = start_and_finish(at, runs_dir / "from-analysis")
    assert config["strategy_params"]["start"] == str(runs_dir / "my-analysis")
    assert RunDir(run).events("prior")[0]["source"].endswith("sensitivity.json")


def test_sensitivity_analysis_start_to_heatmap(runs_dir):
    at = app(SENS)
    assert_clean(at)
    at.text_input(key="sens_ratios").set_value("0.5")
    at.number_input(key="sens_images").set_value(60)
    at.number_input(key="sens_recal_images").set_value(32)
    at.radio(key="sens_device").set_value("cpu")
    at.text_input(key="sens_run_name").set_value("e2e-sens")
    at.run()
    assert_clean(at)
    at.button(key="sens_start").click().run()
    assert_clean(at)
    assert at.radio(key="sens_mode").value == "open"      # switched to the new analysis
    assert at.query_params.get("run") in ("e2e-sens", ["e2e-sens"])
    assert len(at.get("progress")) == 1

    summary = wait_for_summary(runs_dir / "e2e-sens")
    assert summary["status"] == "done", summary.get("error")
    at.run()
    assert_clean(at)
    assert at.get("progress")[0].value == 100
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layer groups"] == "12"
    assert len(at.get("plotly_chart")) == 2            # heatmap + curves
    assert {"Sensitivity JSON", "Sensitivity CSV"} == set(labels(at, "download_button"))
    assert at.dataframe[0].value.shape[0] == 12
    (link,) = [p for p in at.get("page_link") if p.proto.label == "Use in a new rl run"]
    assert "new_run" in link.proto.page and "start=e2e-sens" in link.proto.query_string

    at.switch_page(RUNS).run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table["kind"]) == ["sensitivity"] and list(table["status"]) == ["done"]


def test_sensitivity_cancel_keeps_the_points_measured(runs_dir):
    at = app(SENS)
    at.text_input(key="sens_ratios").set_value("0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9")
    at.number_input(key="sens_images").set_value(60)
    at.number_input(key="sens_recal_images").set_value(32)
    at.radio(key="sens_device").set_value("cpu")
    at.text_input(key="sens_run_name").set_value("e2e-sens-cancel")
    at.run()
    assert_clean(at)
    at.button(key="sens_start").click().run()
    run = runs_dir / "e2e-sens-cancel"
    wait_for_event(run, "sensitivity", where=lambda e: e.get("done"))   # a point (the first event is the base)
    at.run()
    assert not at.exception
    at.button(key="sens_cancel").click().run()
    assert not at.exception
    summary = wait_for_summary(run)
    assert summary["status"] == "cancelled", summary
    at.run()
    assert not at.exception and not at.error
    assert any("cancelled" in m for m in texts(at.warning)), texts(at.warning)
    assert len(at.get("plotly_chart")) == 2
    assert at.dataframe[0].value.shape[0] >= 1          # the groups measured before the cancel

    wait_for_job_exit(run)
    at.switch_page(RUNS).run()
    assert not at.exception and not at.error
    assert not at.get("button") or "runs_resume" not in [b.key for b in at.button]
    assert any("cannot be resumed" in c for c in texts(at.caption))


def test_cancel_on_live_run_then_resume_from_runs_page(runs_dir):
    at = tiny_prune_settings(app(), "e2e-cancel", evals=50, epochs=0, export=False)
    assert_clean(at)
    at.button(key="nr_start").click().run()
    assert texts(at.title) == ["Live run"]
    run = runs_dir / "e2e-cancel"
    wait_for_event(run, "candidate")
    at.switch_page(LIVE).run()
    assert not at.exception
    at.button(key="live_cancel").click().run()
    assert not at.exception
    summary = wait_for_summary(run)
    assert summary["status"] == "cancelled", summary
    wait_for_job_exit(run)
    at.run()
    assert not at.exception and not at.error
    assert any("cancelled" in m for m in texts(at.warning)), texts(at.warning)

    at.switch_page(RUNS).run()
    assert not at.exception and not at.error
    assert at.selectbox[0].value == "e2e-cancel"
    assert any("cancelled" in m for m in texts(at.warning)), texts(at.warning)
    at.button(key="runs_resume").click().run()
    assert not at.exception
    assert texts(at.title) == ["Live run"]
    summary = wait_for_summary(run, statuses=("done", "failed"))
    assert summary["status"] == "done", summary.get("error")
    assert summary["search"]["evaluations"] == 50
    at.switch_page(LIVE).run()   # AppTest keeps its own page; follow the app's st.switch_page
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Status"] == "done"


# ---------------------------------------------------------------------- failed runs
def test_failed_runs_show_their_error(runs_dir):
    runs_dir.mkdir(parents=True, exist_ok=True)
    missing = runs_dir.parent / "no-such-images"
    # a name the New run page would refuse, as the CLI may write (python -m pruner prune --out "runs/bad prune")
    prune = run_job(tiny(data=str(missing)), runs_dir / "bad prune")
    sens = run_sensitivity(tiny(data=str(missing)), runs_dir / "bad-sens", ratios=[0.5])
    assert prune["status"] == sens["status"] == "failed"

    at = app(LIVE)
    assert not at.exception
    assert any("The run failed" in m and plain_md(str(missing)) in m for m in texts(at.error)), texts(at.error)

    at.switch_page(SENS).run()
    assert not at.exception
    assert at.radio(key="sens_mode").value == "open"
    assert any("The analysis failed" in m and plain_md(str(missing)) in m for m in texts(at.error)), texts(at.error)

    at.switch_page(RUNS).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["status"]) == {"failed"}
    at.selectbox[0].set_value("bad prune").run()
    assert not at.exception
    assert any("The run failed" in m and plain_md(str(missing)) in m for m in texts(at.error)), texts(at.error)
    assert labels(at, "download_button") == ["Summary JSON"]
    # it failed on its settings (the images are missing): no Resume that would fail again, but what to do
    assert prune["failure"] == "settings"
    assert not [b for b in at.button if b.key == "runs_resume"]
    assert any("failed on its settings" in c and "New run" in c for c in texts(at.caption)), texts(at.caption)
    at.selectbox[0].set_value("bad-sens").run()
    assert not at.exception
    assert any("The run failed" in m for m in texts(at.error)), texts(at.error)


def test_a_model_that_misses_its_latency_budget_says_so(runs_dir, monkeypatch):
    """A latency budget whose re-timed answers all miss it (a busy machine: every re-timing reads twice the
    original) keeps the search's answer, and the run says so in a banner with what to do, on Live and Runs
    and in the summary: never a silent model. The search's own timings are a deterministic function of the
    MACs (as in tests/test_strategies_extra.py); only the re-timing is scripted."""
    from pruner.search.base import VERIFY_CANDIDATES
    from pruner.search.evaluator import Evaluator

    def timed(self, counts, repeats):
        ratio = 0.3 + 0.7 * self.space.predict(counts=list(counts))[0] / self.space.base_macs
        return {"ms": 10.0 * ratio, "ratio": ratio, "reference_ms": 10.0, "repeats": repeats}

    monkeypatch.setattr(Evaluator, "_time", timed)
    monkeypatch.setattr(Evaluator, "remeasure_latency", lambda self, counts, repeats_factor=3: 2.0)
    summary = run_job(tiny(budget="latency=0.7", strategy="random", strategy_params={}, search_evals=6),
                      runs_dir / "busy")
    assert summary["status"] == "done", summary["error"]
    check = summary["search"]["latency_check"]
    assert check["met"] is False and 1 <= check["checked"] <= VERIFY_CANDIDATES and check["best_ratio"] == 2.0
    assert "raise --search-evals" in check["advice"] and "loosen the budget" in check["advice"]
    for page in (LIVE, RUNS):
        at = app(page)
        assert not at.exception and not at.error, texts(at.error)
        assert any("misses its latency budget" in w and "2.000 of the original" in w for w in texts(at.warning)), \
            (page, texts(at.warning))


# ---------------------------------------------------------------------- interrupted runs, compared runs
def test_interrupted_and_compared_runs(runs_dir):
    """A run whose job died while fine-tuning (no summary, nobody holds its lock) is shown as interrupted
    everywhere; two runs compared show the settings that differ."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    assert run_job(tiny(), runs_dir / "a")["status"] == "done"
    assert run_job(tiny(strategy="uniform"), runs_dir / "b")["status"] == "done"
    dead = runs_dir / "c-died-fine-tuning"
    shutil.copytree(runs_dir / "a", dead)
    (dead / "summary.json").unlink()
    lines = (dead / "events.jsonl").read_text().splitlines()
    cut = next(i for i, l in enumerate(lines) if json.loads(l).get("status") == "search done")
    (dead / "events.jsonl").write_text("\n".join(lines[:cut + 1] + [json.dumps(
        {"kind": "status", "time": time.time(), "status": "fine-tuning"})]) + "\n")

    at = app(LIVE)
    assert not at.exception and not at.error
    at.selectbox[0].set_value("c-died-fine-tuning").run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Status"] == "fine-tuning"
    assert any(m.startswith("Interrupted") for m in texts(at.warning)), texts(at.warning)
    assert "fine-tuning (interrupted)" in at.selectbox[0].format_func("c-died-fine-tuning")

    at.switch_page(RUNS).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert table[table["name"] == "c-died-fine-tuning"].iloc[0]["status"] == "fine-tuning (interrupted)"
    at.multiselect(key="runs_compare").set_value(["a", "b"]).run()
    assert not at.exception and not at.error
    diff = at.dataframe[3].value
    assert "strategy" in list(diff["setting"])
    row = diff[diff["setting"] == "strategy"].iloc[0]
    assert (row["a"], row["b"]) == ("random", "uniform")


def _charts(at: AppTest) -> dict[str, dict]:
    """The page's Plotly figures by title."""
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {f["layout"]["title"]["text"]: f for f in figs}


def test_live_page_shows_what_a_joint_run_did_each_epoch(runs_dir):
    """A finished joint run: its reward (predicted vs observed), training loss and structure per epoch, the
    structure's rows named by the run's layer groups; the same run cut after its first epoch (interrupted
    while searching) draws that one epoch."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    params = {"epochs": 2, "batches_per_epoch": 2, "batch_size": 32, "samples": 2}
    summary = run_job(tiny(strategy="joint", strategy_params=params, search_evals=6), runs_dir / "joint")
    assert summary["status"] == "done", summary["error"]
    groups = [g["name"] for g in RunDir(runs_dir / "joint").events("base")[-1]["groups"]]
    cut = runs_dir / "joint-cut"
    shutil.copytree(runs_dir / "joint", cut)
    (cut / "summary.json").unlink()
    lines = (cut / "events.jsonl").read_text().splitlines()
    first = next(i for i, l in enumerate(lines) if json.loads(l).get("kind") == "joint")
    (cut / "events.jsonl").write_text("\n".join(lines[:first + 1]) + "\n")

    at = app(LIVE)   # the run going on (here: interrupted) comes first
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox[0].value == "joint-cut" and {m.label: m.value for m in at.metric}["Status"] == "searching"
    figs = _charts(at)
    assert [t["x"] for t in figs["Joint: training loss per epoch"]["data"]] == [[0]] * 3
    assert figs["Joint: structure chosen each epoch (keep ratio per layer group)"]["data"][0]["x"] == [0]

    at.selectbox[0].set_value("joint").run()
    assert_clean(at)
    figs = _charts(at)
    reward = figs["Joint: reward predicted by the drift model vs observed"]
    assert [len(t["y"]) for t in reward["data"]] == [2, 2]
    loss = figs["Joint: training loss per epoch"]
    assert [t["name"] for t in loss["data"]] == ["cross-entropy", "total loss", "alignment penalty (right axis)"]
    heat = figs["Joint: structure chosen each epoch (keep ratio per layer group)"]["data"][0]
    assert heat["y"] == groups and heat["x"] == [0, 1]


# ---------------------------------------------------------------------- archive and delete
def test_runs_are_archived_or_deleted_from_the_runs_page_never_while_written(runs_dir):
    """Archive moves a run out of every list into the runs root's .archive folder (kept, restorable); Delete,
    behind a confirmation, removes it; a run whose lock is held (a job writing it) is refused in one line."""
    from pruner.errors import PrunerError
    from pruner.runs.rundir import ARCHIVE_DIR, LOCK_FILE, RunLock, archive_run, delete_run

    runs_dir.mkdir(parents=True, exist_ok=True)
    for name in ("keep", "old", "gone"):
        assert run_job(tiny(search_evals=2, export=False), runs_dir / name)["status"] == "done"
    lock = RunLock.acquire(runs_dir / "keep" / LOCK_FILE)          # as a job writing it would
    try:
        with pytest.raises(PrunerError, match="cannot archive keep: .* being written by another job"):
            archive_run(runs_dir / "keep")
        with pytest.raises(PrunerError, match="cannot delete keep"):
            delete_run(runs_dir / "keep")
    finally:
        lock.release()
    with pytest.raises(PrunerError, match="not a run directory"):
        delete_run(runs_dir / "no-such-run")

    at = app(RUNS)
    assert_clean(at)
    at.multiselect(key="runs_compare").set_value(["old", "gone"]).run()
    at.selectbox[0].set_value("old").run()
    at.button(key="runs_archive").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert (runs_dir / ARCHIVE_DIR / "old" / "summary.json").is_file() and not (runs_dir / "old").exists()
    assert set(at.dataframe[0].value["name"]) == {"keep", "gone"}   # out of the list ...
    assert at.multiselect(key="runs_compare").value == ["gone"]     # ... and out of the comparison

    at.selectbox[0].set_value("gone").run()
    assert at.button(key="runs_delete").disabled                    # not before the confirmation
    at.checkbox(key="runs_delete_sure").check().run()
    at.button(key="runs_delete").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert not (runs_dir / "gone").exists()
    assert set(at.dataframe[0].value["name"]) == {"keep"}
    # archiving a second run of the same name keeps both
    assert run_job(tiny(search_evals=2, export=False), runs_dir / "old")["status"] == "done"
    assert archive_run(runs_dir / "old") == runs_dir / ARCHIVE_DIR / "old-2"

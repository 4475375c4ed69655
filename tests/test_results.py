"""The studio's page logic (``studio/``) as pure functions: one latency story whichever page shows it,
and, on real run directories, rows, comparisons, config diffs, downloads, tags and notes, sensitivity
tables, form checks and the example model."""

from __future__ import annotations

import csv
import io
import json

import pytest

from pruner.errors import PrunerError
from pruner.runs.rundir import RunDir
from studio import artifacts, assets, forms, history, notes, results
from studio import sensitivity_table as sens_table


def test_latency_ms_is_derived_from_the_paired_ratio():
    summary = {"base": {"latency_ms": 20.0},
               "pruned": {"latency_ms": 35.9, "latency_vs_base": 0.69, "latency_device": "cpu", "latency_batch": 1}}
    lat = results.latency(summary)
    assert abs(lat["ms"] - 13.8) < 1e-9 and lat["ratio"] == 0.69      # not the drifted 35.9 ms
    assert lat["label"] == "PyTorch latency (cpu, batch 1)"


def test_throughput_entry_uses_its_own_reference():
    summary = {"base": {"latency_ms": 2.0},
               "pruned": {"latency_ms": 1.9, "latency_vs_base": 0.95, "latency_device": "cuda:0 (H100)",
                          "latency_batch": 1,
                          "latency": [{"device": "cuda:0 (H100)", "batch": 1, "ms": 1.9, "reference_ms": 2.0,
                                       "vs_base": 0.95},
                                      {"device": "cuda:0 (H100)", "batch": 256, "ms": 30.0, "reference_ms": 50.0,
                                       "vs_base": 0.6}]}}
    lat = results.latency(summary, batch=256)
    assert lat["ms"] == 30.0 and lat["ratio"] == 0.6 and lat["where"] == "cuda:0 (H100), batch 256"
    assert results.latency(summary)["ratio"] == 0.95


def test_older_runs_and_missing_figures():
    assert results.latency({}) is None and results.latency(None) is None
    old = results.latency({"base": {"latency_ms": 10.0}, "pruned": {"latency_ms": 8.0}})
    assert old["ratio"] == 0.8 and old["ms"] == 8.0 and old["device"] == "cpu" and old["batch"] == 1
    bare = results.latency({"pruned": {"top1": 50.0}})
    assert bare["ms"] is None and bare["ratio"] is None


def test_workers_table_rows_and_utilisation():
    rows = results.workers_table([
        {"pid": 11, "host": "a", "device": "cpu", "threads": 1, "evaluations": 6, "busy_seconds": 3.0,
         "alive_seconds": 4.0},
        {"pid": 12, "host": "a", "device": "cpu", "threads": 1, "evaluations": 5, "busy_seconds": 2.0,
         "alive_seconds": 0.0},
        "garbage"])
    assert [r["worker"] for r in rows] == [0, 1] and rows[0]["utilisation (%)"] == 75.0
    assert rows[1]["utilisation (%)"] is None and rows[1]["candidates"] == 5
    assert results.workers_table(None) == []


def test_upload_errors_are_one_clear_line():
    import pytest

    from pruner.errors import PrunerError
    from studio.forms import factories_in

    with pytest.raises(PrunerError, match="null bytes") as exc:
        factories_in(b"def build(n):\n    return n\n\x00", "net.py")
    assert "None" not in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(PrunerError, match=r"line 1: ") as exc:
        factories_in(b"def build(:\n", "net.py")
    assert factories_in(b"def build(num_classes):\n    return num_classes\n", "net.py") == ["build"]


def test_run_description_says_what_the_evaluation_setting_means():
    from studio.state import describe_config

    base = {"model": "resnet20", "weights": None, "data": "digits", "budget": "flops=0.5", "device": "cpu",
            "finetune": {"epochs": 0}}
    assert "1 evaluation" in describe_config({**base, "strategy": "uniform", "search_evals": 16})
    assert "16" not in describe_config({**base, "strategy": "uniform", "search_evals": 16})
    assert "up to 16 evaluations" in describe_config({**base, "strategy": "rl", "search_evals": 16})
    assert "no evaluation cap" in describe_config({**base, "strategy": "random", "search_evals": None})



# ---------------------------------------------------------------------- runs as rows
def test_table_row_tells_what_the_summary_says(finished_runs):
    rd = RunDir(finished_runs["rl"])
    summary = rd.summary()
    row = history.table_row(rd)
    assert (row["name"], row["kind"], row["status"], row["model"], row["data"]) == ("rl", "prune", "done",
                                                                                    "resnet20", "digits")
    assert row["strategy"] == "rl" and row["budget"] == "flops=0.5"
    assert row["pruned top-1 (%)"] == summary["pruned"]["top1"]
    assert row["MACs kept (%)"] == pytest.approx(100 * summary["pruned"]["macs"] / summary["base"]["macs"])
    assert row["latency (ms)"] == results.latency(summary)["ms"]
    assert row["tags"] == "" and row["error"] is None


def test_short_names():
    assert history.short_model("file:/x/y/net.py:build") == "net.py:build"
    assert history.short_model("torchvision:resnet18") == "torchvision:resnet18"
    assert history.short_data("/data/my-images") == "my-images" and history.short_data("digits") == "digits"


def test_compare_rows_split_into_results_and_speed(finished_runs):
    rd = RunDir(finished_runs["random"])
    row = history.compare_row("random", "done", rd.config(), rd.summary())
    assert set(history.COMPARE_RESULT) | set(history.COMPARE_SPEED) | set(history.COMPARE_INT8_RESULT) | set(
        history.COMPARE_INT8_SPEED) == set(row)
    assert history.compare_columns([row]) == (list(history.COMPARE_RESULT), list(history.COMPARE_SPEED))  # no INT8
    s = rd.summary()
    assert row["Δ top-1 (points)"] == pytest.approx(s["pruned"]["top1"] - s["base"]["top1"])
    assert row["evaluations"] == s["search"]["evaluations"] and row["timed on"] == "cpu, batch 1"
    # the run's size beside its figure: report images, one standard error, fine-tune images per epoch
    n, top1 = s["pruned"]["report_images"], s["pruned"]["top1"]
    assert row["report images"] == n == 60
    assert row["± (points)"] == pytest.approx(100 * ((top1 / 100) * (1 - top1 / 100) / n) ** 0.5)
    assert row["fine-tune images / epoch"] == 32     # 1 batch of 32 per epoch (tests/conftest.py)


def test_result_shows_its_run_size(finished_runs):
    s = RunDir(finished_runs["random"]).summary()
    top1 = results.metrics(s)[0]
    se = results.standard_error(s["pruned"]["top1"], 60)
    assert top1["value"] == f"{s['pruned']['top1']:.2f} % ± {se:.2f}" and "60 report images" in top1["help"]
    size = next(line for line in results.result_captions(s) if line.startswith("Run size"))
    assert "top-1 on 60 report images" in size and f"± {se:.2f} points" in size
    assert f"fine-tuned 2 epoch(s) of 1 batches × 32 = 32 images per epoch of the {s['data']['sizes']['fit']:,} fit" \
        in size
    assert results.standard_error(50.0, 10_000) == pytest.approx(0.5)
    assert results.standard_error(None, 10) is None and results.standard_error(80.0, 0) is None
    no_ft = {**s, "finetune_plan": None, "finetune": None}
    assert results.run_size(no_ft).endswith("not fine-tuned")


def test_run_series_reads_candidates_epochs_and_the_chosen_one(finished_runs):
    rd = RunDir(finished_runs["rl"])
    series = history.run_series(rd)
    events = rd.events()
    assert len(series["candidates"]) == sum(e["kind"] == "candidate" for e in events)
    assert [e["epoch"] for e in series["epochs"]] == [1, 2]
    assert series["base_macs"] == rd.summary()["base"]["macs"]
    assert series["chosen_id"] in [c["candidate_id"] for c in series["candidates"]]


def test_config_diff_lists_only_the_settings_that_differ(finished_runs):
    configs = {name: RunDir(path).config() for name, path in finished_runs.items()}
    diff = history.config_diff(configs)
    keys = [r["setting"] for r in diff]
    assert "strategy" in keys and "model" not in keys and "finetune.epochs" not in keys
    row = next(r for r in diff if r["setting"] == "strategy")
    assert (row["rl"], row["random"]) == ("rl", "random")
    full = history.config_diff(configs, all_settings=True)
    assert {"model", "finetune.epochs", "strategy"} <= {r["setting"] for r in full}
    # a setting one run lacks shows as a dash; nested settings are dotted
    assert history.config_diff({"a": {"x": {"y": 1}}, "b": {}}) == [{"setting": "x.y", "a": "1", "b": "—"}]


def test_resume_overrides_only_what_changed():
    assert history.resume_overrides({"batch_size": 64, "epochs": 2}, 64, 2) == {}
    assert history.resume_overrides({"batch_size": 64, "epochs": 2}, 32, 2) == {"finetune.batch_size": 32}
    assert history.resume_overrides({}, 16, 1) == {"finetune.batch_size": 16, "finetune.epochs": 1}


# ---------------------------------------------------------------------- downloads
def test_downloads_are_the_files_that_exist_inside_the_run(finished_runs, tmp_path):
    rd = RunDir(finished_runs["rl"])
    found = artifacts.downloads(rd.path, rd.summary())
    assert [d.label for d in found] == ["ONNX model", "Checkpoint", "Program (.pt2)", "Summary JSON",
                                        "Candidates CSV"]
    onnx = found[0]
    assert onnx.relative == "artifacts/model.onnx" and onnx.size == (rd.path / "artifacts/model.onnx").stat().st_size
    assert onnx.help.startswith("artifacts/model.onnx · ")
    # a summary naming files outside the run directory, or missing ones, offers only summary.json
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    bad = {"artifacts": {"onnx": "../" * 10 + str(outside), "checkpoint": str(outside), "candidates": "nope.csv"}}
    assert [d.key for d in artifacts.downloads(rd.path, bad)] == ["summary"]
    assert artifacts.downloads(rd.path, None) == []


# ---------------------------------------------------------------------- tags and notes
def test_notes_round_trip_atomically(finished_runs):
    run = finished_runs["random"]
    assert notes.read_notes(run) == {"tags": [], "note": ""}
    saved = notes.write_notes(run, [" baseline ", "digits", "baseline", ""], "  first try \n")
    assert saved == {"tags": ["baseline", "digits"], "note": "first try"}
    assert notes.read_notes(run) == saved
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]        # the temporary file was renamed
    assert history.table_row(RunDir(run))["tags"] == "baseline, digits"      # the Runs table shows them
    notes.write_notes(run, [], "")
    assert notes.read_notes(run) == {"tags": [], "note": ""}


def test_bad_notes_are_refused_before_anything_is_written(finished_runs, tmp_path):
    run = finished_runs["rl"]
    notes.write_notes(run, ["keep"], "kept")
    for tags, note, expected in ((["x" * 41], "", "longer than 40"), (["<b>"], "", "may only use"),
                                 ([f"t{i}" for i in range(21)], "", "at most 20"), ([3], "", "not text"),
                                 (["ok"], "n" * 10_001, "under 10,000")):
        with pytest.raises(PrunerError, match=expected):
            notes.write_notes(run, tags, note)
        assert notes.read_notes(run) == {"tags": ["keep"], "note": "kept"}
    with pytest.raises(PrunerError, match="not a run directory"):
        notes.write_notes(tmp_path, ["a"], "")
    (tmp_path / "config.json").write_text("{}")
    RunDir(tmp_path).notes_path.write_bytes(b"\xff{not json")               # damaged: reads as empty
    assert notes.read_notes(tmp_path) == {"tags": [], "note": ""}
    RunDir(tmp_path).notes_path.write_text(json.dumps({"tags": "a", "note": 5}))
    assert notes.read_notes(tmp_path) == {"tags": [], "note": ""}


# ---------------------------------------------------------------------- results, banners, budgets
def test_result_metrics_say_the_same_everywhere(finished_runs):
    summary = RunDir(finished_runs["rl"]).summary()
    items = {m["label"]: m for m in results.metrics(summary)}
    lat = results.latency(summary)
    se = results.standard_error(summary["pruned"]["top1"], summary["pruned"]["report_images"])
    assert items["Top-1 (report split)"]["value"] == f"{summary['pruned']['top1']:.2f} % ± {se:.2f}"
    assert items["Top-1 (report split)"]["delta"] == f"{summary['pruned']['top1'] - summary['base']['top1']:+.2f} pts"
    assert items[lat["label"]]["value"] == f"{lat['ms']:.2f} ms"
    assert items["MACs"]["delta"] == f"{summary['pruned']['macs'] / summary['base']['macs']:.0%} of original"
    assert "ONNX Runtime latency (cpu, batch 1)" in items and "Top-5" in items
    assert [m["label"] for m in results.metrics(summary, top5=False, ort=False)] == [
        "Top-1 (report split)", "MACs", "Parameters", lat["label"]]
    assert results.metrics({"status": "failed"}) == []


def test_status_banners():
    assert results.status_banner("failed", liveness="final", error="boom") == ("error", "The run failed: boom")
    level, text = results.status_banner("cancelled", liveness="final", noun="analysis",
                                        hint="The points measured before are shown below.")
    assert level == "warning" and text == ("The analysis was cancelled: cancelled by the user. The points measured "
                                           "before are shown below.")
    level, text = results.status_banner("fine-tuning", liveness="interrupted", hint="Resume it from the Runs page.")
    assert level == "warning" and text.startswith("Interrupted:") and text.endswith("Resume it from the Runs page.")
    assert results.status_banner("fine-tuning", liveness="active") is None
    assert results.status_banner("done", liveness="final") is None


# ---------------------------------------------------------------------- sensitivity
def test_sensitivity_ratios_table_and_csv():
    assert sens_table.parse_ratios("0.4, 0.2, 25%") == ([0.2, 0.25, 0.4], None)
    ratios, problem = sens_table.parse_ratios("half")
    assert ratios == [] and "not a number" in problem
    partial = {"groups": ["conv1", "layer1"], "ratios": [0.25, 0.5], "top1": [[80.0, 70.0], [79.0]],
               "channels": [16, 32]}
    sens, value = sens_table.complete(partial, base_top1=82.0)
    assert value == "drop" and sens["drop"] == [[2.0, 12.0], [3.0]]
    assert sens_table.complete({"groups": [], "top1": []})[1] == "top1"
    rows = sens_table.table(sens, "drop")
    assert rows == [{"group": "conv1", "channels": 16, "25% removed": 2.0, "50% removed": 12.0},
                    {"group": "layer1", "channels": 32, "25% removed": 3.0, "50% removed": None}]
    lines = list(csv.reader(io.StringIO(sens_table.to_csv(sens))))
    assert lines[0] == list(sens_table.CSV_COLUMNS) and len(lines) == 5
    assert lines[4] == ["layer1", "32", "0.5", "", "", ""]


# ---------------------------------------------------------------------- forms
def test_new_run_form_checks_collect_every_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNER_RUNS_DIR", str(tmp_path))
    ft = dict(epochs=1, max_batches=2, batch_size=32, lr=0.01, kd_weight=0.9, kd_temperature=4.0)
    md = forms.ModelData(model="resnet20", data="digits")
    config, errors = forms.check_new_run(md, ft=ft, budget="flops=0.5", strategy="random", strategy_params={},
                                         trust_cost_code=False, cost_code=[], device="cpu", name="", search_evals=3)
    assert errors == [] and config.strategy == "random" and config.finetune.epochs == 1
    config, errors = forms.check_new_run(forms.ModelData(errors=["Upload the model's .py file"]), ft=ft,
                                         budget="flops=1.5", strategy="random", strategy_params={},
                                         trust_cost_code=False, cost_code=[], device="cpu", name="bad name!")
    assert config is None and len(errors) == 3
    assert "outside (0, 1)" in errors[1] and "may only use letters" in errors[2]
    config, errors = forms.check_new_run(md, ft={**ft, "batch_size": 0}, budget="flops=0.5", strategy="random",
                                         strategy_params={}, trust_cost_code=False, cost_code=[], device="cpu",
                                         name="")
    assert config is None and len(errors) == 1 and errors[0].startswith("Batch size must be")


def test_analysis_form_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNER_RUNS_DIR", str(tmp_path))
    md = forms.ModelData(model="resnet20", data="digits")
    config, ratios, errors = forms.check_analysis(md, ratios_text="0.5, 0.9", device="cpu", name="",
                                                  search_images=60, recal_images=32)
    assert errors == [] and ratios == [0.5, 0.9] and config.max_prune == 0.9 and config.search_evals is None
    config, ratios, errors = forms.check_analysis(md, ratios_text="1.5", device="cpu", name="")
    assert config is None and ratios == [] and "out of range" in errors[0]


# ---------------------------------------------------------------------- assets
def test_assets_are_there_and_the_example_model_builds():
    import torch
    from PIL import Image

    with Image.open(assets.ICON) as icon:
        assert icon.format == "PNG" and icon.size[0] == icon.size[1] >= 32
    assert "stMainBlockContainer" in assets.css()
    source = assets.example_model()
    assert forms.factories_in(source, "example_model.py") == ["build"]
    namespace: dict = {}
    exec(compile(source, str(assets.EXAMPLE_MODEL), "exec"), namespace)   # our own file, as the job imports it
    model = namespace["build"](num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    # and the engine prunes it: its model summary (built in the child, as the studio does) has layer groups
    from pruner.model_summary import summary_in_child
    from pruner.runs.config import RunConfig

    cfg = RunConfig(model=f"file:{assets.EXAMPLE_MODEL}:build", trust_code=True, weights=None, data="digits",
                    device="cpu")
    summary = summary_in_child(json.loads(forms.summary_key(cfg)))
    assert not summary.get("error"), summary.get("error")
    assert len(summary["groups"]) == 6 and summary["data"]["num_classes"] == 10


def test_runs_table_filters():
    rows = [{"name": "a", "kind": "prune", "tags": "baseline, gpu"}, {"name": "b", "kind": "sensitivity", "tags": ""},
            {"name": "c", "kind": "prune", "tags": "gpu"}]
    assert history.all_tags(rows) == ["baseline", "gpu"]
    assert [r["name"] for r in history.filter_rows(rows)] == ["a", "b", "c"]
    assert [r["name"] for r in history.filter_rows(rows, ["prune"])] == ["a", "c"]
    assert [r["name"] for r in history.filter_rows(rows, None, ["gpu"])] == ["a", "c"]
    assert [r["name"] for r in history.filter_rows(rows, ["prune"], ["gpu", "baseline"])] == ["a"]
    assert history.filter_rows(rows, []) == []


def test_a_one_off_strategy_event_is_a_line_not_a_chart(finished_runs):
    prior = RunDir(finished_runs["rl"]).events("prior")
    assert len(prior) == 1
    line = results.event_line("prior", prior[0])
    assert line.startswith("prior: ") and "ratio 0.5" in line and "[" not in line and "\n" not in line  # no lists


def test_engine_messages_in_the_pages_words():
    assert forms.page_words("search_evals (--search-evals) must be an integer >= 1, got 0") == \
        "Candidate evaluations must be an integer >= 1, got 0"
    assert forms.page_words("fine-tune epochs (--finetune-epochs) must be an integer >= 0, got -3") == \
        "Fine-tune epochs must be an integer >= 0, got -3"
    assert forms.page_words("round_to must be between 1 (off) and 1024, got -1").startswith("Align channels")
    assert forms.page_words("no weights for vgg16 on cifar10; pass a weights file, or use weights=None for random "
                            "init").endswith("or choose random weights")
    assert forms.page_words("rl needs 8 evaluations (3 left); raise --search-evals") == \
        "rl needs 8 evaluations (3 left); raise the candidate evaluations"
    assert forms.page_words("budget flops=2 is outside (0, 1)") == "budget flops=2 is outside (0, 1)"


def test_latency_spread_and_a_slower_pruned_model_are_flagged():
    def summary(ratio, iqr, macs=50):
        return {"base": {"macs": 100, "latency_ms": 10.0}, "pruned": {"macs": macs, "latency": [
            {"device": "cpu", "batch": 1, "ms": 10 * ratio, "reference_ms": 10.0, "vs_base": ratio,
             "vs_base_iqr": iqr}], "latency_vs_base": ratio, "latency_ms": 10 * ratio, "latency_batch": 1,
            "latency_device": "cpu"}}

    assert results.latency_flags(summary(0.6, [0.58, 0.63])) == []
    wide = results.latency_flags(summary(0.6, [0.45, 0.9]))
    assert len(wide) == 1 and "spread is wide" in wide[0] and "45%–90%" in wide[0]
    slower = results.latency_flags(summary(1.3, [1.25, 1.35]))
    assert len(slower) == 1 and "130% of the original although it keeps 50% of the MACs" in slower[0]
    lat = next(m for m in results.metrics(summary(0.6, [0.58, 0.63])) if m["label"].startswith("PyTorch latency"))
    assert "middle half 58%–63%" in lat["help"] and lat["delta"] == "60% of original"
    assert results.latency_flags({"pruned": {"latency_vs_base": 0.5}}) == []   # an old run without a spread

"""INT8 for a finished run in the studio: Quantize to INT8 on the Runs page (a background ``quantize`` job of
the real JobManager, in a spawned process), its figures, download and comparison columns, a refused
calibration size, a failed quantization shown as one line, and the results shaping.

Real components only: tiny finished runs on the digits demo (``run_job``), the real app under
``AppTest``, real ONNX Runtime quantization in the job's child process.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from pruner.errors import PrunerError
from pruner.runs.job import run_job
from pruner.runs.manager import QUANTIZE, JobSpec
from pruner.runs.rundir import RunDir
from studio import history, results
from test_studio_pages import JOB_TIMEOUT, RUNS, app, assert_clean, labels, runs_dir, texts, tiny  # noqa: F401


def finished_run(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    summary = run_job(tiny(export=True), root / name)
    assert summary["status"] == "done", summary.get("error")
    assert "quantized" not in summary and (root / name / "artifacts" / "model.onnx").is_file()
    return root / name


def wait_for_quantized(path: Path, timeout: float = JOB_TIMEOUT) -> dict:
    """Poll the run's summary until it has a ``quantized`` section and this app's job process has exited."""
    from studio import state

    deadline = time.time() + timeout
    while time.time() < deadline:
        summary = RunDir(path).summary() or {}
        if summary.get("quantized") and state.job_manager().state(path) in (None, "finished"):
            return summary
        time.sleep(0.5)
    events = [e for e in RunDir(path).iter_events() if e.get("kind") == "log"]
    raise AssertionError(f"{path.name} got no INT8 section within {timeout} s; last log events: {events[-3:]}")


def metrics_of(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# ---------------------------------------------------------------------- the Runs page, end to end
def test_quantize_a_finished_run_from_the_runs_page(runs_dir):
    run = finished_run(runs_dir, "q")
    before = json.loads((run / "summary.json").read_text())

    at = app(RUNS)
    assert_clean(at)
    assert at.selectbox[0].value == "q"
    assert at.number_input(key="runs_int8_images").value == 256      # the run config's calibration_images
    assert "INT8 ONNX model" not in labels(at, "download_button")
    at.number_input(key="runs_int8_images").set_value(64)
    at.button(key="runs_int8").click().run()
    assert_clean(at)
    assert any("Quantizing to INT8" in m for m in texts(at.info)), texts(at.info)
    assert not [b for b in at.button if b.key == "runs_int8"]       # no second job while one goes on

    summary = wait_for_quantized(run)
    q = summary["quantized"]
    assert "error" not in q, q
    assert q["calibration"] == {"split": "fit", "images": 64, "method": "minmax"}
    assert (run / summary["artifacts"]["int8"]).is_file()
    # the fp32 results and files are as they were
    assert summary["status"] == "done" and summary["pruned"] == before["pruned"]
    assert {k: v for k, v in summary["artifacts"].items() if k != "int8"} == before["artifacts"]

    at.run()
    assert_clean(at)
    assert not any("Quantizing" in m for m in texts(at.info))
    m = metrics_of(at)
    assert m["INT8 top-1 (report split)"] == f"{q['top1']:.2f} %"
    assert m["fp32 pruned top-1 (ONNX Runtime)"] == f"{q['top1_fp32']:.2f} %"
    lat = q["ort_latency"][0]
    assert m["INT8 ORT latency (cpu, batch 1)"] == f"{lat['ms']:.2f} ms"
    assert m["fp32 pruned ORT latency (cpu, batch 1)"] == f"{lat['fp32_ms']:.2f} ms"
    assert m["Original ORT latency (cpu, batch 1)"] == f"{lat['original_ms']:.2f} ms"
    assert m["INT8 file size"] == f"{q['size_bytes'] / 1e6:,.3f} MB"
    assert any("calibrated on 64 fine-tune images" in c for c in texts(at.caption)), texts(at.caption)
    assert "INT8 ONNX model" in labels(at, "download_button")
    assert not [b for b in at.button if b.key == "runs_int8"]       # it has its INT8 model now

    at.multiselect(key="runs_compare").set_value(["q"]).run()
    assert_clean(at)
    result, speed = at.dataframe[1].value, at.dataframe[2].value
    assert result.iloc[0]["INT8 top-1 (%)"] == pytest.approx(q["top1"])
    assert speed.iloc[0]["INT8 ORT latency (ms)"] == pytest.approx(lat["ms"])
    assert speed.iloc[0]["INT8 speed-up"] == pytest.approx(1 / lat["vs_fp32"])


def test_a_refused_calibration_size_and_a_failed_quantization(runs_dir):
    from studio import state

    run = finished_run(runs_dir, "r")
    fit = json.loads((run / "summary.json").read_text())["data"]["sizes"]["fit"]
    at = app(RUNS)
    assert_clean(at)
    # more calibration images than the fine-tune split holds: one line, and no job
    at.number_input(key="runs_int8_images").set_value(fit + 1).run()
    assert not at.exception
    assert texts(at.error) == [f"INT8 calibration asks for {fit + 1:,} images but the fine-tune split has only "
                               f"{fit:,}: set “INT8 calibration images” to {fit:,} or fewer"]
    assert at.button(key="runs_int8").disabled                    # (AppTest refuses to click it, as a browser does)
    assert state.job_manager().state(run) is None and "quantized" not in RunDir(run).summary()
    # the manager refuses it too, before anything is queued or written
    with pytest.raises(PrunerError, match=rf"fine-tune split has only {fit}; pass --calibration-images"):
        state.job_manager().submit(JobSpec(QUANTIZE, {}, str(run), options={"calibration_images": fit + 1}))
    assert state.job_manager().state(run) is None

    # a quantization that fails in the job (the fp32 file unreadable as ONNX): one line, the run stays done
    onnx_file = run / "artifacts" / "model.onnx"
    before = RunDir(run).summary()
    onnx_file.write_bytes(b"not onnx")
    at.number_input(key="runs_int8_images").set_value(32).run()
    assert_clean(at)
    at.button(key="runs_int8").click().run()
    assert not at.exception
    summary = wait_for_quantized(run)
    assert set(summary["quantized"]) == {"error"} and "int8" not in summary["artifacts"]
    assert summary["status"] == "done" and summary["pruned"] == before["pruned"]
    assert not (run / "artifacts" / "model.int8.onnx").exists()
    at.run()
    assert not at.exception and not at.warning
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith("The INT8 quantization failed: ")
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    assert "INT8 ONNX model" not in labels(at, "download_button")
    assert not at.button(key="runs_int8").disabled                # it may be tried again
    assert " % ± " in metrics_of(at)["Top-1 (report split)"]   # the fp32 results are still shown


# ---------------------------------------------------------------------- results shaping
QUANTIZED = {   # the shape of pruner.runs.job.quantize_run's section
    "top1": 91.5, "top1_fp32": 92.0, "agreement": 97.0, "images": 200,
    "ort_latency": [{"device": "cpu", "batch": 1, "ms": 0.5, "fp32_ms": 1.0, "vs_fp32": 0.5, "original_ms": 2.0,
                     "vs_original": 0.25},
                    {"device": "cpu", "batch": 64, "ms": 9.0, "fp32_ms": 12.0, "vs_fp32": 0.75}],
    "size_bytes": 300_000, "size_fp32_bytes": 1_200_000, "format": "QDQ", "per_channel": True,
    "quantized_nodes": 42, "calibration": {"split": "fit", "images": 128, "method": "minmax"}, "seconds": 3.0,
}
SUMMARY = {"status": "done", "base": {"top1": 95.0, "macs": 4e7}, "pruned": {"top1": 92.1, "macs": 2e7},
           "budget": {"achieved": 0.5}}


def test_results_shaping_of_the_int8_section():
    # without a quantized section: nothing, and no INT8 columns in a comparison
    assert results.int8(SUMMARY) is None and results.int8_metrics(SUMMARY) == []
    assert results.int8_caption(SUMMARY) is None
    plain = history.compare_row("a", "done", {}, SUMMARY)
    assert history.compare_columns([plain]) == (list(history.COMPARE_RESULT), list(history.COMPARE_SPEED))

    # a failed quantization: only its error
    failed = {**SUMMARY, "quantized": {"error": "ONNX Runtime could not quantize model.onnx (boom)"}}
    assert results.int8(failed) == {"error": "ONNX Runtime could not quantize model.onnx (boom)"}
    assert results.int8_metrics(failed) == [] and results.int8_caption(failed) is None
    assert history.compare_row("f", "done", {}, failed)["INT8 top-1 (%)"] is None

    # a quantized run: INT8 beside fp32 on the same images, batch-1 ORT latency of the three models, sizes
    done = {**copy.deepcopy(SUMMARY), "quantized": copy.deepcopy(QUANTIZED)}
    q = results.int8(done)
    assert (q["top1"], q["top1_fp32"], q["top1_pytorch"]) == (91.5, 92.0, 92.1)
    assert q["delta"] == pytest.approx(-0.5)
    assert (q["ms"], q["fp32_ms"], q["original_ms"], q["batch"]) == (0.5, 1.0, 2.0, 1)
    assert q["speedup"] == pytest.approx(2.0) and q["speedup_original"] == pytest.approx(4.0)
    assert q["size_mb"] == pytest.approx(0.3) and q["size_ratio"] == pytest.approx(0.25)
    m = {x["label"]: x for x in results.int8_metrics(done)}
    assert m["INT8 top-1 (report split)"]["value"] == "91.50 %"
    assert m["INT8 top-1 (report split)"]["delta"] == "-0.50 pts vs fp32"
    assert m["fp32 pruned top-1 (ONNX Runtime)"]["value"] == "92.00 %"
    assert m["INT8 ORT latency (cpu, batch 1)"]["value"] == "0.50 ms"
    assert m["INT8 ORT latency (cpu, batch 1)"]["delta"] == "2.00× faster than fp32"
    assert m["fp32 pruned ORT latency (cpu, batch 1)"]["value"] == "1.00 ms"
    assert m["Original ORT latency (cpu, batch 1)"]["value"] == "2.00 ms"
    assert m["Original ORT latency (cpu, batch 1)"]["delta"] == "INT8 4.00× faster"
    assert m["INT8 file size"]["value"] == "0.300 MB" and m["INT8 file size"]["delta"] == "25% of fp32"
    assert "calibrated on 128 fine-tune images (minmax)" in results.int8_caption(done)
    assert "200 report images" in results.int8_caption(done)

    # the comparison gets INT8 columns when any compared run has them (empty for the others)
    row = history.compare_row("q", "done", {}, done)
    assert (row["INT8 top-1 (%)"], row["INT8 ORT latency (ms)"], row["INT8 speed-up"]) == (91.5, 0.5, 2.0)
    result_cols, speed_cols = history.compare_columns([plain, row])
    assert result_cols == [*history.COMPARE_RESULT, "INT8 top-1 (%)"]
    assert speed_cols == [*history.COMPARE_SPEED, "INT8 ORT latency (ms)", "INT8 speed-up"]
    # the fp32 figures are the same with or without the INT8 section
    assert {k: v for k, v in row.items() if not k.startswith("INT8")} == {
        k: v for k, v in history.compare_row("q", "done", {}, SUMMARY).items() if not k.startswith("INT8")}


# ---------------------------------------------------------------------- the quantize job kind
def test_a_killed_quantize_job_leaves_the_run_done_with_a_one_line_int8_error(tmp_path):
    from pruner.runs.manager import JobManager

    run = finished_run(tmp_path, "k")
    before = RunDir(run).summary()
    mgr = JobManager(max_parallel=1, poll=0.05)
    try:
        mgr.submit(JobSpec(QUANTIZE, {}, str(run), options={"calibration_images": 32}))
        assert mgr.kind(run) == QUANTIZE and RunDir(run).holder() is not None   # locked from the queue on
        deadline = time.time() + 30
        while mgr.state(run) != "running" and time.time() < deadline:
            time.sleep(0.05)
        job = mgr._jobs[str(run.resolve())]
        job.process.kill()                  # before it has loaded torch, let alone quantized
        assert mgr.wait(run, timeout=30)
        mgr.cancel(run)                     # a quantize job is never cancelled into a done run
    finally:
        mgr.shutdown()
    summary = RunDir(run).summary()
    error = summary["quantized"]["error"]
    assert "killed by SIGKILL" in error and "quantize again" in error and "\n" not in error
    assert summary["status"] == "done" and summary["pruned"] == before["pruned"]
    assert summary["artifacts"] == before["artifacts"] and not (run / "cancel.request").exists()
    assert RunDir(run).holder() is None

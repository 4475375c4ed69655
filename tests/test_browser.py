"""End to end in a real browser: Debian's Chromium drives ``streamlit run app.py``.

New run (the quick defaults: ResNet-20 pretrained on the CIFAR-10 copy when it is present, else the digits demo from random init) with fewer evaluations and
one fine-tune epoch -> **Start pruning** -> Live run follows the job until it is done -> the ONNX
model downloaded through the page runs in ONNX Runtime. Every page is screenshotted to
``docs/screenshots/`` and must show no Streamlit exception.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``); skipped without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from studio.forms import default_dataset

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 900}

SEARCH_EVALS = 8
FINETUNE_EPOCHS = 1
JOB_TIMEOUT_S = 300   # the quick job; a loaded machine (several test runs sharing two cores) needs the margin

APP = '[data-testid="stApp"]'
CONNECTED = '[data-testid="stApp"][data-test-connection-state="CONNECTED"]'
IDLE = '[data-test-script-state="notRunning"]'
EXCEPTION = '[data-testid="stException"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@pytest.fixture
def studio(tmp_path):
    """A Streamlit server on a free port with its runs under ``tmp_path``; killed (with its jobs) at the end."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)")
    port = _free_port()
    runs = tmp_path / "runs"
    log = tmp_path / "streamlit.log"
    env = dict(os.environ, PRUNER_RUNS_DIR=str(runs))
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as fh:
        # own process group: the server and the job processes it spawns are killed together
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        health = f"http://localhost:{port}/_stcore/health"
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"streamlit did not answer {health} within 90 s:\n{_log_tail(log)}")
            time.sleep(0.3)
        yield {"url": f"http://localhost:{port}/", "runs": runs, "log": log}
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # job children left behind by a killed server
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _settle(page, timeout: float = 60_000) -> None:
    """Wait until the app is connected and no script run is in progress."""
    page.wait_for_selector(CONNECTED, timeout=timeout)
    page.wait_for_selector(IDLE, timeout=timeout)


def _no_exception(page, where: str, log: Path) -> None:
    found = page.locator(EXCEPTION)
    if found.count():
        pytest.fail(f"Streamlit exception on {where}:\n{found.first.inner_text()}\n--- server log ---\n"
                    f"{_log_tail(log)}")


def _screenshot(page, name: str) -> None:
    """Full-page screenshot: Streamlit scrolls inside its main container, so grow the viewport to fit it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("""() => {
        const m = document.querySelector('[data-testid="stMain"]') || document.querySelector('section.main');
        const inner = m && (m.querySelector('[data-testid="stMainBlockContainer"]') || m.firstElementChild);
        return Math.ceil(Math.max(inner ? inner.scrollHeight : 0, m ? m.scrollHeight : 0,
                                  document.body.scrollHeight));
    }""")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(int(height), 6000))})
    page.mouse.move(VIEWPORT["width"] - 10, VIEWPORT["height"] - 10)  # no hover effects in the picture
    page.wait_for_timeout(800)  # plotly charts re-lay out on resize
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(VIEWPORT)


def _cut_off(page) -> list[str]:
    """What the page shows cut off: text that ends in an ellipsis because its box is too narrow (a
    metric value, a select box's value, a label, a pill), and tables wider than the page that need
    scrolling to the right to be read."""
    return page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        if (!main) return [];
        const found = [];
        for (const el of main.querySelectorAll('*')) {
            if (!el.offsetParent || el.closest('[data-testid="stDataFrame"]') || el.closest('.js-plotly-plot')) continue;
            const css = getComputedStyle(el);
            const text = (el.tagName === 'INPUT' ? el.value : el.innerText || '').trim();
            if ((css.textOverflow === 'ellipsis' || el.tagName === 'INPUT') && el.scrollWidth > el.clientWidth + 1
                    && text)
                found.push('text: ' + text.slice(0, 60));
        }
        for (const grid of main.querySelectorAll('[data-testid="stDataFrame"]')) {
            const scroller = grid.querySelector('.dvn-scroller');
            if (scroller && scroller.scrollWidth > scroller.clientWidth + 1)
                found.push(`table wider than the page (${scroller.scrollWidth} > ${scroller.clientWidth} px): ` +
                           grid.innerText.split('\\n')[0].slice(0, 60));
        }
        return found;
    }""")


def _set_number(page, label: str, value: int) -> None:
    box = page.locator(f'input[aria-label="{label}"]')
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)
    _settle(page)
    assert box.input_value() == str(value), f"{label} did not take {value}"


def _metric(page, label: str) -> str:
    m = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=label))
    return m.first.locator('[data-testid="stMetricValue"]').inner_text().strip() if m.count() else ""


def _points(page) -> int:
    """Candidate markers drawn in the live charts (scatter points)."""
    return page.locator('[data-testid="stPlotlyChart"] .scatterlayer .point').count()


def _local_icon(page, url: str) -> list[str]:
    """The page icons the browser was given that are not served by the studio itself."""
    hrefs = page.evaluate("() => [...document.querySelectorAll('link[rel~=icon]')].map(l => l.href)")
    assert hrefs, "the page has no icon"
    return [h for h in hrefs if not (h.startswith(url) or h.startswith("data:"))]


def _interrupted_copy(finished: Path, dest: Path) -> None:
    """``finished`` as its job would have left it had it died while fine-tuning: no summary, nobody
    holding its lock, the events up to the start of fine-tuning."""
    shutil.copytree(finished, dest)
    (dest / "summary.json").unlink()
    lines = (dest / "events.jsonl").read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if json.loads(line).get("status") == "fine-tuning")
    (dest / "events.jsonl").write_text("\n".join(lines[:cut + 1]) + "\n")


def _pick(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(300)
    _settle(page)


def _go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.wait_for_timeout(300)
    _settle(page)
    page.get_by_role("heading", level=1).first.wait_for(timeout=30_000)


def test_studio_end_to_end(studio, tmp_path):
    from playwright.sync_api import sync_playwright

    import onnxruntime as ort

    log = studio["log"]
    t0 = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(60_000)

            # ---------------------------------------------------------------- New run
            page.goto(studio["url"])
            _settle(page, 90_000)
            page.get_by_role("heading", name="New pruning run").wait_for()
            # the defaults are the quick demo: pretrained resnet20 on the CIFAR-10 copy when it and the
            # weights are on this machine (the server has this process's environment), else digits
            cifar = default_dataset() == "cifar10-jpeg"
            dataset = page.get_by_role("combobox", name="Dataset", exact=True).input_value()
            assert dataset.startswith("CIFAR-10 JPEG" if cifar else "Digits"), dataset
            assert page.get_by_role("combobox", name="Architecture", exact=True).input_value().startswith("resnet20")
            assert page.get_by_role("radio", name="pretrained" if cifar else "random init").is_checked()
            _set_number(page, "Candidate evaluations", SEARCH_EVALS)
            _set_number(page, "Fine-tune epochs", FINETUNE_EPOCHS)
            # the model summary (dataset loaded, model traced) and its chart
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=90_000)
            page.get_by_text("Prunable groups").wait_for()
            _settle(page)
            _no_exception(page, "New run", log)
            assert _cut_off(page) == [], _cut_off(page)
            assert _local_icon(page, studio["url"]) == [], "the page icon needs the internet"
            _screenshot(page, "new_run")

            start = page.get_by_role("button", name="Start pruning")
            assert start.is_enabled(), "Start pruning is disabled with the default settings"
            start.click()

            # ---------------------------------------------------------------- Live run
            page.get_by_role("heading", name="Live run").wait_for(timeout=60_000)
            assert "live_run" in page.url and "run=" in page.url, page.url
            deadline = time.time() + JOB_TIMEOUT_S
            saw_points_running = False
            status = ""
            while time.time() < deadline:
                status = _metric(page, "Status")
                if _points(page) > 0 and status not in ("done", "failed", "cancelled"):
                    saw_points_running = True
                if status in ("done", "failed", "cancelled"):
                    break
                _no_exception(page, "Live run (running)", log)
                page.wait_for_timeout(1000)
            if status != "done":
                alerts = " | ".join(a.inner_text() for a in page.locator('[data-testid="stAlert"]').all())
                pytest.fail(f"the job ended as {status!r} after {time.time() - t0:.0f} s: {alerts}\n"
                            f"--- server log ---\n{_log_tail(log)}")
            # the finished run reruns the page once: wait for the final render
            page.get_by_text("Result (report split)").wait_for(timeout=30_000)
            _settle(page)
            page.wait_for_timeout(500)
            _no_exception(page, "Live run (done)", log)
            assert page.locator('[data-testid="stPlotlyChart"]').count() >= 6
            n_points = _points(page)
            print(f"candidates drawn while running: {saw_points_running}; markers at the end: {n_points}")
            # the page counts what the job evaluated (a search may stop short of its cap, e.g. rl when
            # the next policy update no longer fits, or when proposals repeat an evaluated structure)
            finished = [p for p in studio["runs"].iterdir() if (p / "summary.json").is_file()]
            evaluated = json.loads((finished[0] / "summary.json").read_text())["search"]["evaluations"]
            assert 1 <= evaluated <= SEARCH_EVALS
            assert _metric(page, "Candidates evaluated") == f"{evaluated} / {SEARCH_EVALS}"
            assert n_points >= evaluated, f"only {n_points} candidate markers in the live charts"
            for label in ("ONNX model", "Checkpoint", "Summary JSON", "Candidates CSV"):
                assert page.locator('[data-testid="stDownloadButton"]').filter(has_text=label).count() == 1, label
            assert _cut_off(page) == [], _cut_off(page)      # no metric, label or button ending in "…"
            _screenshot(page, "live_run")

            # the ONNX model, downloaded through the page, runs in ONNX Runtime
            # wait on the state the download needs (the button there and the script idle), not on a fixed
            # time: on a loaded machine a rerun of the page can take longer than any fixed allowance
            button = page.locator('[data-testid="stDownloadButton"]').get_by_role("button", name="ONNX model")
            button.wait_for(state="visible", timeout=600_000)
            page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=600_000)
            with page.expect_download(timeout=600_000) as dl_info:
                button.click()
            onnx_file = tmp_path / "downloaded.onnx"
            dl_info.value.save_as(onnx_file)
            run_dirs = [p for p in studio["runs"].iterdir() if (p / "summary.json").is_file()]
            assert len(run_dirs) == 1, run_dirs
            assert onnx_file.read_bytes() == (run_dirs[0] / "artifacts" / "model.onnx").read_bytes()
            sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            batch = 3
            shape = [batch if i == 0 or not isinstance(d, int) else d for i, d in enumerate(inp.shape)]
            assert shape[1:] == [3, 32, 32], inp.shape
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            (out,) = sess.run(None, {inp.name: x})[:1]
            assert out.shape == (batch, 10), out.shape  # CIFAR-10 or digits: 10 classes
            assert np.isfinite(out).all()
            _no_exception(page, "Live run (after download)", log)

            # ---------------------------------------------------------------- an interrupted run, a second run
            # a run whose job died while fine-tuning: its status is shown whole (not "fine-tu…"), here and in the
            # picker; a second real run (another strategy) to compare with
            first = run_dirs[0]
            dead = studio["runs"] / f"{first.name}-died"
            _interrupted_copy(first, dead)
            from pruner.runs.config import RunConfig
            from pruner.runs.job import run_job

            cfg = json.loads((first / "config.json").read_text())
            cfg.update(strategy="random", strategy_params={}, finetune={**cfg["finetune"], "epochs": 2})
            second = run_job(RunConfig.from_dict(cfg), studio["runs"] / f"{first.name}-random")
            assert second["status"] == "done", second.get("error")
            page.goto(f"{studio['url']}live_run?run={dead.name}")
            _settle(page, 90_000)
            page.get_by_role("heading", name="Live run").wait_for()
            page.get_by_text("Interrupted: no process").first.wait_for(timeout=30_000)
            assert _metric(page, "Status") == "fine-tuning"
            picked = page.get_by_role("combobox", name="Run", exact=True).input_value()
            assert picked == f"{dead.name}  ·  fine-tuning (interrupted)", picked
            _no_exception(page, "Live run (interrupted)", log)
            assert _cut_off(page) == [], _cut_off(page)

            # ---------------------------------------------------------------- the other pages
            _go(page, "Sensitivity")
            page.get_by_role("heading", name="Layer sensitivity").wait_for()
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=90_000)  # what will be evaluated
            _settle(page)
            _no_exception(page, "Sensitivity", log)
            _screenshot(page, "sensitivity")

            _go(page, "Runs")
            run_name = run_dirs[0].name
            page.get_by_text(run_name).first.wait_for(state="attached", timeout=30_000)  # the runs table
            page.goto(f"{studio['url']}runs?run={run_name}")    # the finished run's details (its graph)
            _settle(page, 90_000)
            page.get_by_text(run_name).first.wait_for(state="attached", timeout=30_000)
            assert page.get_by_role("combobox", name="Run", exact=True).input_value().startswith(f"{run_name}  ·  ")
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=30_000)  # its network
            _settle(page)
            _no_exception(page, "Runs", log)
            # compare the two finished runs: results, curves, the settings that differ
            _pick(page, "Runs to compare", run_name)
            _pick(page, "Runs to compare", f"{run_name}-random")
            page.keyboard.press("Escape")
            _settle(page)
            for tab in ("Search curves", "Fine-tuning curves", "Settings that differ", "Pareto fronts"):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(400)
            assert page.locator('[data-testid="stDataFrame"]').count() == 4   # runs, results, speed, settings
            page.get_by_role("tab", name="Channels per layer").click()
            page.get_by_text("The network before and after pruning").first.wait_for(timeout=30_000)
            page.get_by_role("tab", name="Network graph").click()
            page.get_by_text("The pruned network as a graph").first.wait_for(timeout=30_000)
            page.wait_for_timeout(800)
            _no_exception(page, "Runs (compared)", log)
            assert _cut_off(page) == [], _cut_off(page)      # the tables fit: nothing hidden on the right
            _screenshot(page, "runs")
        finally:
            browser.close()
    print(f"browser test took {time.time() - t0:.0f} s")

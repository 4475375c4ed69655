"""The Live run page in a real browser while its run moves on: the run picker and the ETA follow the
run directory (the picker sits outside the page's polling fragment, so it once stayed at
"queued" for the whole run; the ETA was "—" until the first fine-tuning epoch had finished).

The run directory is written by this test through the contract (``RunDir.event`` with the
``Status`` / ``Event`` names, the lock held as a job holds it), so the page's reaction to each
stage is checked without waiting for a real job. Needs ``/usr/bin/chromium``; skipped without it.
"""

from __future__ import annotations

import time

import pytest

from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.runs.rundir import Event, RunDir, Status
from test_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, _metric, _settle, studio  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

RUN = "followed-run"


def _picker(page) -> str:
    """The run picker's label and shown value (the value may sit in the select's input or its text)."""
    return page.locator('[data-testid="stSelectbox"]').first.evaluate(
        "el => [el.innerText, ...Array.from(el.querySelectorAll('input'), i => i.value || ''),"
        " ...Array.from(el.querySelectorAll('[title]'), t => t.getAttribute('title'))].join(' | ')")


def _wait(page, cond, what: str, timeout: float = 45.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        page.wait_for_timeout(500)
    pytest.fail(f"the Live run page did not show {what} within {timeout:.0f} s; picker {_picker(page)!r}, "
                f"ETA {_metric(page, 'ETA')!r}")


def test_picker_and_eta_follow_the_run(studio):  # noqa: F811
    from playwright.sync_api import sync_playwright

    config = RunConfig(model="resnet20", weights=None, data="digits", strategy="random", search_evals=2,
                       finetune=FinetuneConfig(epochs=2), device="cpu", export=False)
    rd = RunDir(studio["runs"] / RUN)
    lock = rd.lock()            # held like a job holds it: the run is going on, not interrupted
    try:
        rd.mark_queued(config.to_dict())
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport=VIEWPORT).new_page()
                page.set_default_timeout(60_000)
                page.goto(f"{studio['url']}live_run?run={RUN}")
                _settle(page)
                _wait(page, lambda: Status.QUEUED in _picker(page), "queued in the run picker")

                for status in (Status.STARTED, Status.LOADING_DATA, Status.MEASURING_BASE):
                    rd.event(Event.STATUS, status=status)
                rd.event(Event.BASE, groups=[], top1=90.0, macs=4e7, params=2.7e5, latency_ms=2.0, report_seconds=30.0)
                rd.event(Event.STATUS, status=Status.SEARCHING, strategy="random")
                for i in range(2):
                    rd.event(Event.CANDIDATE, candidate_id=i, step=i, counts=[], keep_ratios=[], top1=50.0 + i,
                             macs=2e7, params=1.3e5, cost=0.5, meta={})
                rd.event(Event.STATUS, status=Status.SEARCH_DONE, evaluations=2)
                rd.event(Event.STATUS, status=Status.FINE_TUNING, epochs=2)
                time.sleep(2.0)   # five batches "took" two seconds
                rd.event(Event.PROGRESS, stage=Status.FINE_TUNING, epoch=1, epochs=2, batch=5, batches=100)
                _wait(page, lambda: Status.FINE_TUNING in _picker(page), "fine-tuning in the run picker")
                _wait(page, lambda: _metric(page, "ETA") not in ("", "—"), "an ETA while fine-tuning")

                rd.event(Event.STATUS, status=Status.EXPORTING)
                _wait(page, lambda: Status.EXPORTING in _picker(page), "exporting in the run picker")
                _wait(page, lambda: _metric(page, "ETA") not in ("", "—"), "an ETA while exporting")
                assert not page.locator('[data-testid="stException"]').count()
            finally:
                browser.close()
    finally:
        lock.release()

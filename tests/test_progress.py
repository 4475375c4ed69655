"""Progress on the command line (pruner/progress.py): plain lines off a terminal, a live rich display on
one (a real pseudo-terminal), nothing with --progress none; the best candidate shown is the best one
meeting the budget by the engine's rule. Facts are checked, never timings."""

import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pruner.cli import _progress_mode, build_parser
from pruner.progress import PlainDisplay, Tracker, choose_mode, rate_eta
from pruner.runs.rundir import PRUNE_PHASES, SENSITIVITY, Event, Status

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# the smallest prune of tests/test_cli.py, with a short fine-tuning
SMALL = ["prune", "--model", "resnet20", "--weights", "none", "--data", "digits", "--strategy", "random",
         "--search-evals", "3", "--search-images", "50", "--recal-images", "32", "--report-images", "50",
         "--no-export", "--finetune-epochs", "1", "--max-batches-per-epoch", "2"]
PHASES = [s for s in PRUNE_PHASES if s not in (Status.QUEUED, Status.STARTING_WORKERS, Status.QUANTIZING)] + [Status.DONE]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pruner", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=600)


def cli_on_a_terminal(*args, timeout=600) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal (160 columns); returns its exit status and
    everything it wrote there."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in ENV.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = subprocess.Popen([sys.executable, "-m", "pruner", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, cwd=ROOT, env={**env, "TERM": "xterm-256color"})
    os.close(slave)
    out = bytearray()
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:   # EIO: every writer of the terminal has closed it
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=60), out.decode("utf-8", "replace")


def phases_of(lines: list[str]) -> list[str]:
    return [l.split("phase: ", 1)[1].strip() for l in lines if "] phase: " in l]


def assert_facts(lines: list[str], summary: dict) -> None:
    """The facts every display of SMALL's run shows: its phases in order, the evaluations, the best
    candidate within the budget (the search's answer), the expected fine-tuning time and the epoch."""
    assert phases_of(lines) == PHASES, lines
    search = [l for l in lines if "searching: evaluations 3/3" in l]
    assert search, lines
    assert f"best top-1 {summary['search']['best_val_top1']:.2f}% within flops=0.5" in search[-1], search
    assert any("fine-tuning expected to take about" in l and "1 epoch x 2 batches x" in l for l in lines), lines
    # before the search: the time a step of the unpruned model took, scaled to the fine-tuning's batches (a
    # terminal may wrap the rest of the line, which plan_text's own test reads)
    assert any("fine-tuning expected to take at most about" in l and "(1 epoch x 2 batches" in l for l in lines), lines
    assert any("fine-tuning: epoch 1/1 done" in l and "val top-1" in l for l in lines), lines
    order = [next(i for i, l in enumerate(lines) if needle in l)
             for needle in ("expected to take at most", "phase: searching", "evaluations 3/3", "phase: fine-tuning",
                            "expected to take about", "epoch 1/1 done", "phase: exporting")]
    assert order == sorted(order), lines


def test_plain_lines_off_a_terminal(tmp_path):
    res = cli(*SMALL, "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "\x1b" not in res.stderr and "\r" not in res.stderr   # plain lines: no escape codes, no redraws
    lines = [l for l in res.stderr.splitlines() if l.startswith("[")]
    assert_facts(lines, summary)
    assert len([l for l in lines if "searching: evaluations" in l]) <= 3
    # the summary stays on stdout as before
    assert "search: random, 3 evaluations" in res.stdout and "phase:" not in res.stdout


def test_live_display_on_a_terminal(tmp_path):
    rc, out = cli_on_a_terminal(*SMALL, "--out", tmp_path / "run")
    assert rc == 0, out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "\x1b[?25l" in out and "\x1b[2K" in out   # the live display hides the cursor and redraws its line
    text = ANSI.sub("", out)
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
    live = [s for s in segments if not s.startswith("[") and "━" in s]
    assert any("searching" in s and "evaluations" in s for s in live), live[:5]
    assert any("fine-tuning" in s and "epoch 1/1" in s for s in live), live[-5:]
    assert_facts([s for s in segments if s.startswith("[")], summary)
    assert "search: random, 3 evaluations" in text   # the final summary, after the display is gone


def test_progress_none_prints_no_progress(tmp_path):
    res = cli(*SMALL, "--progress", "none", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert "phase:" not in res.stderr and not re.search(r"^\[\d\d:\d\d\]", res.stderr, re.M), res.stderr
    assert "search: random, 3 evaluations" in res.stdout


def test_sensitivity_shows_its_points(tmp_path):
    res = cli("sensitivity", "--model", "resnet20", "--weights", "none", "--data", "digits", "--search-images", "50",
              "--recal-images", "32", "--ratios", "0.5", "--out", tmp_path / "sens")
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("[")]
    assert phases_of(lines) == [Status.STARTED, Status.LOADING_DATA, Status.LOADING_MODEL, Status.ANALYSING_GRAPH,
                                Status.ANALYSING_SENSITIVITY, Status.DONE], lines
    groups = len(json.loads((tmp_path / "sens" / "sensitivity.json").read_text())["groups"])
    points = [l for l in lines if "analysing sensitivity: points" in l]
    assert points and f"points {groups}/{groups}" in points[-1] and len(points) <= 10, lines
    assert "\x1b" not in res.stderr and "base top-1" in res.stdout


def test_quiet_and_the_modes():
    parser = build_parser()
    assert _progress_mode(parser.parse_args(["prune", "--out", "x", "-q"])) == "none"
    assert _progress_mode(parser.parse_args(["sensitivity", "--out", "x"])) == "auto"
    assert _progress_mode(parser.parse_args(["prune", "--out", "x", "--progress", "plain"])) == "plain"
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--out", "x", "--progress", "loud"])
    assert choose_mode("auto", io.StringIO()) == "plain"   # not a terminal
    assert choose_mode("bar", io.StringIO()) == "bar"


# ---------------------------------------------------------------------- synthetic events
def _events(budget="flops=0.5", evals=3):
    config = {"budget": budget, "strategy": "random", "search_evals": evals, "finetune": {"epochs": 3}}
    out = io.StringIO()
    return Tracker(config), out


def _feed(display, *events):
    for e in events:
        display(e)


def candidate(t, top1, cost, cached=False):
    return {"kind": Event.CANDIDATE, "time": t, "top1": top1, "cost": cost, "meta": {"cached": cached}}


def test_the_best_shown_is_the_best_meeting_the_budget():
    tracker, out = _events()
    show = PlainDisplay(tracker, out)
    _feed(show, {"kind": Event.STATUS, "time": 0.0, "status": Status.SEARCHING},
          candidate(1.0, 90.0, 0.7))                      # more accurate but over the budget
    assert tracker.best is None and "no candidate within flops=0.5 yet" in out.getvalue()
    _feed(show, candidate(2.0, 80.0, 0.5), candidate(3.0, 80.0, 0.45), candidate(3.5, 95.0, 0.9, cached=True))
    assert (tracker.best.top1, tracker.best.cost) == (80.0, 0.45)   # ties: the cheaper (best_meeting)
    assert tracker.evaluations == 3                                 # a cached candidate is no evaluation
    text = out.getvalue()
    assert "evaluations 3/3, best top-1 80.00% within flops=0.5" in text
    assert "90.00" not in text and "95.00" not in text


def test_a_latency_budget_allows_its_tolerance():
    tracker, out = _events("latency=0.5")
    show = PlainDisplay(tracker, out)
    _feed(show, {"kind": Event.STATUS, "time": 0.0, "status": Status.SEARCHING},
          candidate(1.0, 70.0, 0.52), candidate(2.0, 75.0, 0.53))   # 0.52 <= 0.5 * 1.05 < 0.53
    assert tracker.best.top1 == 70.0


def test_plain_lines_are_rate_limited_by_tenths_of_the_work():
    tracker, out = _events(evals=100)
    show = PlainDisplay(tracker, out)
    _feed(show, {"kind": Event.STATUS, "time": 0.0, "status": Status.SEARCHING},
          *[candidate(1.0 + i, 50.0 + i / 10, 0.5) for i in range(100)],
          {"kind": Event.STATUS, "time": 200.0, "status": Status.SEARCH_DONE})
    lines = out.getvalue().splitlines()
    counts = [l for l in lines if "searching: evaluations" in l]
    assert len(counts) == 10 and "evaluations 100/100" in counts[-1] and "best top-1 59.90%" in counts[-1]
    assert phases_of(lines) == [Status.SEARCHING, Status.SEARCH_DONE]


def test_expected_fine_tuning_time_from_the_first_batches():
    tracker, out = _events()
    show = PlainDisplay(tracker, out)
    progress = {"kind": Event.PROGRESS, "stage": Status.FINE_TUNING, "epochs": 3, "batches": 100}
    _feed(show, {"kind": Event.STATUS, "time": 100.0, "status": Status.FINE_TUNING, "epochs": 3},
          {**progress, "time": 105.0, "epoch": 1, "batch": 10},
          {**progress, "time": 110.0, "epoch": 1, "batch": 20},
          {**progress, "time": 115.0, "epoch": 1, "batch": 30})
    assert tracker.estimate.seconds == pytest.approx(150.0)   # 3 epochs x 100 batches x 0.5 s
    lines = out.getvalue().splitlines()
    assert [l for l in lines if "expected to take" in l] == [
        "[00:05] fine-tuning expected to take about 2m 30s (3 epochs x 100 batches x 0.50 s a batch, "
        "measured on 10 batches)"]
    # a line at each tenth of the stage's 300 batches (batch 30 is the first), with the ETA measured so far
    assert [l for l in lines if "batch " in l] == ["[00:15] fine-tuning: epoch 1/3, batch 30/100, ETA 2m 15s"]
    _feed(show, {"kind": Event.EPOCH, "time": 150.0, "epoch": 1, "epochs": 3, "loss": 1.5, "val_top1": 60.0,
                 "seconds": 50.0})
    assert out.getvalue().splitlines()[-1] == ("[00:50] fine-tuning: epoch 1/3 done in 50 s: loss 1.5000, "
                                               "val top-1 60.00%; ETA 1m 40s")


def test_a_resumed_fine_tuning_expects_only_the_epochs_left():
    tracker, out = _events()
    show = PlainDisplay(tracker, out)
    _feed(show, {"kind": Event.STATUS, "time": 0.0, "status": Status.FINE_TUNING},
          {"kind": Event.PROGRESS, "stage": Status.FINE_TUNING, "time": 2.0, "epoch": 3, "epochs": 3, "batch": 4,
           "batches": 10})
    assert (tracker.estimate.epochs, tracker.estimate.seconds) == (1, pytest.approx(5.0))


def test_sensitivity_tracker_counts_points():
    tracker = Tracker({"budget": "flops=0.5"}, SENSITIVITY)
    out = io.StringIO()
    show = PlainDisplay(tracker, out)
    _feed(show, {"kind": Event.STATUS, "time": 0.0, "status": Status.ANALYSING_SENSITIVITY},
          *[{"kind": Event.SENSITIVITY, "time": 1.0 + i, "done": i + 1, "total": 20, "group": "g", "ratio": 0.5,
             "top1": 10.0} for i in range(20)])
    lines = [l for l in out.getvalue().splitlines() if "points" in l]
    assert len(lines) == 10 and "points 20/20" in lines[-1] and "best" not in out.getvalue()


# ---------------------------------------------------------------------- a search that trains: joint
JOINT = {"budget": "flops=0.5", "strategy": "joint", "strategy_params": {"epochs": 4}, "search_evals": 20,
         "finetune": {"epochs": 0}}


def _joint_search(t0: float, first_epoch: int, epochs: int) -> list[dict]:
    """A joint search from ``t0``: per epoch 3 fresh candidates 2, 3 and 4 s into it, its event at 10 s."""
    out = [{"kind": Event.STATUS, "time": t0, "status": Status.SEARCHING, "strategy": "joint"}]
    for k, epoch in enumerate(range(first_epoch, first_epoch + epochs)):
        start = t0 + 10 * k
        out += [candidate(start + s, 50.0, 0.5) for s in (2, 3, 4)]
        out.append({"kind": "joint", "time": start + 10, "epoch": epoch, "observed_reward": 0.5, "ce": 1.0})
    return out


def _etas(config: dict, events: list[dict], now: float) -> tuple:
    """The searching stage's ETA as the CLI (Tracker) and the studio (studio.events.progress) compute it."""
    from studio.events import RunView, progress

    tracker = Tracker(config)
    for e in events:
        tracker.add(e)
    return tracker.eta(now), progress(RunView.from_events(events), config, now=now)["stage_eta_s"]


def test_a_joint_search_eta_is_its_seconds_per_epoch_times_the_epochs_left_plus_the_final_scoring():
    events = _joint_search(100.0, 0, 2)
    # before the first epoch event: the rate of evaluations (3 in 4 s, 17 left, 1 s ago)
    cli, studio = _etas(JOINT, events[:4], now=105.0)
    assert cli == studio == pytest.approx(4 / 3 * 17 - 1)
    # after two epochs (10 s each): 2 epochs left + the final scoring (2 structures at 4/3 s each, the
    # latest epoch's 3 structures in 4 s), less the 5 s since the last epoch event
    cli, studio = _etas(JOINT, events, now=125.0)
    assert cli == studio == pytest.approx(10 * 2 + 2 * 4 / 3 - 5)
    # the epochs come from the strategy's declared default when the run does not set them (joint: 3)
    default = {**JOINT, "strategy_params": {}}
    assert _etas(default, events, now=120.0) == pytest.approx((10 + 8 / 3,) * 2)
    # after the last epoch only the final scoring is left, and the ETA never goes below zero
    assert _etas(JOINT, _joint_search(100.0, 0, 4), now=140.0) == pytest.approx((8 / 3,) * 2)
    assert _etas(JOINT, _joint_search(100.0, 0, 4), now=200.0) == (0.0, 0.0)
    # another strategy keeps the rate of evaluations, whatever its events are called
    rl = {**JOINT, "strategy": "rl"}
    cli, studio = _etas(rl, events, now=125.0)
    assert cli == studio == pytest.approx(rate_eta(100.0, 6, 20, 114.0, 125.0))


def test_a_resumed_joint_search_counts_the_epochs_it_trained_again():
    """A resume trains every epoch again; the replay writes no event until it passes the record, so the first
    epoch event of this attempt (epoch 2 at 30 s) stands for 3 epochs, and the final scoring is not known
    from an epoch seen whole yet."""
    first = _joint_search(0.0, 0, 2)[:-3] + [{"kind": Event.STATUS, "time": 25.0, "status": Status.CANCELLED}]
    resumed = [{**e, "time": e["time"] + 200.0} for e in _joint_search(0.0, 0, 3)[-4:]]
    events = first + [{"kind": Event.STATUS, "time": 200.0, "status": Status.SEARCHING, "strategy": "joint"}] + resumed
    assert resumed[-1]["epoch"] == 2 and resumed[-1]["time"] == 230.0
    assert _etas(JOINT, events, now=230.0) == pytest.approx((10.0, 10.0))   # 3 epochs in 30 s, 1 left

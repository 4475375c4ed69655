"""A model's summary (layer groups, MACs, parameters, latency, data sizes, a timed fine-tuning step),
built in a child process.

The studio shows this summary before a run starts. Building it loads the dataset (decoded
images: up to gigabytes) and builds the model (for a ``file:`` model or a pickled weights
file: runs the user's code). Neither may happen in the web server process, so
:func:`summary_in_child` runs :func:`summarize` in a fresh interpreter
(``python -m pruner.model_summary``) with a timeout, and only JSON comes back: the server
never imports user code, never unpickles anything from the child, and frees the child's
memory when it exits.

The child gets the settings as JSON on stdin and writes its answer to a file named on its
command line (stdout and stderr are the user code's to print to). Every failure, the
timeout included, is ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .errors import PrunerError

#: Seconds a summary may take (loading and decoding a dataset the first time is the slow part).
TIMEOUT_ENV = "PRUNER_SUMMARY_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def default_timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summarize(config: dict[str, Any]) -> dict[str, Any]:
    """The summary of ``config`` (a ``RunConfig`` dict), in this process: plain JSON-able data.

    Runs the user's code when the config names it (and consents: ``RunConfig`` refuses
    otherwise); meant for the child process of :func:`summary_in_child`.
    """
    import torch

    from .budget import CHANNEL_KINDS, cost_floor
    from .pruning.sparsity import SparsitySpace
    from .measure import latency_ms
    from .runs.config import RunConfig
    from .runs.job import Session

    cfg = RunConfig.from_dict({**config, "device": "cpu", "importance": "l1"})
    job_threads = torch.get_num_threads()   # what a job's fine-tuning will use
    torch.set_num_threads(max(1, min(4, job_threads)))
    t_load = time.perf_counter()
    session = Session(cfg)
    load_seconds = time.perf_counter() - t_load
    model = session.model.cpu().eval()
    try:
        lat = latency_ms(model, session.data.input_size, repeats=20, warmup=3)
    except Exception:  # noqa: BLE001 - latency is a nicety; the summary stands without it
        lat = None
    try:   # the fine-tuning's expected time on the run's device (pruner.finetune.expected_seconds)
        from .finetune import time_steps
        from .settings import resolve_device

        torch.set_num_threads(job_threads)
        t0 = time.perf_counter()
        timing = time_steps(model, session.data.input_size, session.data.num_classes,
                            device=resolve_device(str(config.get("device") or "auto"))).to_dict()
        timing_seconds = time.perf_counter() - t0
    except Exception:  # noqa: BLE001 - a nicety too (e.g. the device is busy or out of memory)
        timing, timing_seconds = None, None
    try:   # one typical candidate through the real evaluator, and a small report, for the run estimate
        candidate_timing = _time_candidate(session)
        report_timing = {**_time_report(session, model), "finetune_timing_s": timing_seconds}
    except Exception:  # noqa: BLE001 - a nicety too: the estimate says it is not known
        candidate_timing = report_timing = None
    space = session.space
    return {"finetune_timing": timing, "candidate_timing": candidate_timing, "report_timing": report_timing,
            "load_seconds": load_seconds, "groups": [g.to_dict() for g in space.groups], "frozen": space.frozen_report(), "macs": int(space.base_macs),
            "params": int(space.base_params), "latency_ms": lat, "data": session.data.describe(), "error": None,
            "floors": {**{kind: cost_floor(space, kind) for kind in CHANNEL_KINDS},
                       # the unstructured pattern's floor (a 2:4 budget is checked by the job)
                       "sparsity": SparsitySpace(model, session.data.input_size, max_prune=cfg.max_prune).floor()}}


def _time_candidate(session) -> dict:
    """Two evaluations of the same typical structure (every group at :data:`~pruner.runs.estimate.TIMED_KEEP`
    of its channels; the second steady-state, the first with the one-off teacher outputs and warm-up):
    seconds, and the scoring part of the second with its image count."""
    from .runs.estimate import TIMED_KEEP

    space = session.space
    counts = space.counts([TIMED_KEEP] * len(space.groups))
    ev = session.evaluator(max_evals=None)
    times, evaluation = [], 0.0
    for _ in range(2):
        before = ev.timing["evaluation"]
        t0 = time.perf_counter()
        ev.measure(counts)   # what Evaluator.evaluate does for a structure it has not scored (no memo)
        times.append(time.perf_counter() - t0)
        evaluation = ev.timing["evaluation"] - before
    return {"first_s": times[0], "steady_s": times[1], "evaluation_s": evaluation, "images": len(ev.search_set.y),
            "keep": TIMED_KEEP}


#: the small report the summary child times (images, latency repeats): the run estimate scales it
REPORT_TIMING = (64, 5)


def _time_report(session, model) -> dict:
    """A job's report of the unpruned model (:meth:`~pruner.runs.job.Session.report`) on a few images and
    latency repeats, and its ONNX export with an ONNX Runtime timing and the network graph (what the final
    report adds): seconds of each."""
    import dataclasses

    from .data.batching import batches
    from .export import export_onnx
    from .measure import ort_latency_ms
    from .pruning.graph import model_graph

    images, repeats = REPORT_TIMING
    config = session.config
    session.config = dataclasses.replace(config, report_images=images, latency_repeats=repeats)
    try:
        t0 = time.perf_counter()
        session.report(model)
        seconds = time.perf_counter() - t0
    finally:
        session.config = config
    data = session.data
    with tempfile.TemporaryDirectory(prefix="pruner-summary-onnx-") as tmp:
        t0 = time.perf_counter()
        sample, _ = next(batches(data.report.subset(8), 8, mean=data.mean, std=data.std))   # as the job's
        export_onnx(model, Path(tmp) / "m.onnx", input_size=data.input_size, mean=data.mean, std=data.std,
                    class_names=data.classes, sample=sample)
        ort_latency_ms(Path(tmp) / "m.onnx", data.input_size, batch_size=1, repeats=repeats)
        model_graph(model, data.input_size)
        export_s = time.perf_counter() - t0
    return {"seconds": seconds, "images": images, "repeats": repeats, "export_s": export_s}


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and anything it started (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
    proc.wait()


#: the ``stopped`` flag of a summary that :func:`summary_in_child` stopped on request (``cancel``)
STOPPED = "stopped"


def summary_in_child(config: dict[str, Any], *, timeout: float | None = None,
                     cancel: threading.Event | None = None) -> dict[str, Any]:
    """:func:`summarize` in a fresh Python process, stopped after ``timeout`` seconds, or as soon as
    ``cancel`` is set (the studio's Stop: the answer then has ``"stopped": True``).

    Returns the summary, or ``{"error": "<one line>"}`` (settings problems, a failing model
    file, a crash, the timeout). Nothing from the child is unpickled or imported here.
    """
    timeout = default_timeout() if timeout is None else float(timeout)
    try:
        payload = json.dumps(config)
    except (TypeError, ValueError) as exc:
        return {"error": f"the settings are not plain data ({exc}); this is a bug, please report it"}
    with tempfile.TemporaryDirectory(prefix="pruner-summary-") as tmp:
        out = Path(tmp) / "answer.json"
        err_path = Path(tmp) / "stderr.txt"
        env = dict(os.environ)  # the same data root, weights and cache folders; this package importable
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "pruner.model_summary", str(out)],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                    start_new_session=True)
            try:
                stopped = _wait_for_child(proc, payload, timeout, cancel)
                if stopped is not None:
                    return stopped
            finally:
                if proc.poll() is None:  # interrupted while waiting (e.g. the page reran): leave nothing behind
                    _kill_group(proc)
        return _child_answer(out, err_path, proc.returncode)


def _wait_for_child(proc: subprocess.Popen, payload: str, timeout: float,
                    cancel: threading.Event | None) -> dict[str, Any] | None:
    """Hand the child its settings and wait for it to exit; an error answer (the child killed) when
    ``cancel`` is set or ``timeout`` seconds pass first, None when it exited by itself."""
    t0 = time.monotonic()
    try:
        proc.stdin.write(payload.encode())
        proc.stdin.close()
    except BrokenPipeError:   # the child exited before reading: its stderr says why
        pass
    while True:
        try:
            proc.wait(timeout=0.2)
            return None
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set():
            _kill_group(proc)
            return {"error": f"building the model summary was stopped after "
                             f"{time.monotonic() - t0:.0f} s; if the model file hangs, fix it, then "
                             "press Try again or change a setting", STOPPED: True}
        if time.monotonic() - t0 > timeout:
            _kill_group(proc)
            return {"error": f"building the model summary took longer than {timeout:g} s and was "
                             "stopped; check that the model file does not run forever (or raise "
                             f"{TIMEOUT_ENV} for a large dataset)"}


def _child_answer(out: Path, err_path: Path, returncode: int | None) -> dict[str, Any]:
    """The child's summary or error from ``out``; else an error with the last line of its stderr."""
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = None
    if isinstance(result, dict) and (result.get("error") or isinstance(result.get("groups"), list)):
        return result
    tail = ""
    try:
        lines = [ln for ln in err_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        tail = f": {_one_line(lines[-1], 200)}" if lines else ""
    except OSError:
        pass
    return {"error": f"the model summary process exited with code {returncode} without a result "
                     f"(out of memory, killed, or the model file exited?){tail}"}


def _main(argv: list[str]) -> int:
    """Child entry point: settings JSON on stdin, the summary JSON written to ``argv[0]``."""
    if len(argv) != 1:
        print("usage: python -m pruner.model_summary OUT.json < settings.json", file=sys.stderr)
        return 2
    out = Path(argv[0])
    try:
        config = json.loads(sys.stdin.read())
        if not isinstance(config, dict):
            raise PrunerError("the settings must be a JSON object")
        result = summarize(config)
    except PrunerError as exc:
        result = {"error": _one_line(str(exc), 1000)}
    except Exception as exc:  # noqa: BLE001 - a bug or an unexpected environment problem: one line
        result = {"error": f"could not load the model and data ({type(exc).__name__}: {_one_line(str(exc))})"}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

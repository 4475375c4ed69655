"""How long a pruning run will take, before it starts: the New run page's estimate.

Built from what the model summary's child process measured on this machine
(:func:`pruner.model_summary.summarize`): the time to load the data and model, one steady-state
candidate evaluation by the real :class:`~pruner.search.evaluator.Evaluator` (surgery,
recalibration, scoring; split into a fixed part and a per-image part), the batch-1 latency and the
timed fine-tuning step (:func:`pruner.finetune.finetune_plan`). The run itself then reports a whole-run
ETA from its own measurements (``studio.events.progress``); this is the figure before Start.

What it does not know is said in ``notes`` (a strategy that trains during its search, Ray workers,
a GPU run whose search was timed on the CPU), never silently folded in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..finetune import finetune_plan
from .config import RunConfig

#: the structure the summary child times as a typical candidate: every group keeps this fraction
TIMED_KEEP = 0.7
#: strategies whose search trains the weights, so their search takes longer than its evaluations; each
#: has ``epochs``, ``batches_per_epoch`` and ``batch_size`` parameters and writes an event of its own kind per
#: training epoch (``pruner.progress.EpochPace``)
TRAINS_DURING_SEARCH = ("joint",)


def search_training(strategy: str, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The parameters of a strategy that trains the weights during its search (:data:`TRAINS_DURING_SEARCH`):
    the ones set in ``params`` over the defaults its ``param_specs`` declare; None for any other strategy."""
    if strategy not in TRAINS_DURING_SEARCH:
        return None
    from ..search import strategy_class

    return {**strategy_class(strategy).defaults(), **(params or {})}


@dataclass
class RunEstimate:
    """Expected seconds of each part of a run (None: not known from the summary), and what is left out."""

    load: float | None = None
    base: float | None = None        # the unpruned model's report-split score and latency
    search: float | None = None
    finetune: float | None = None
    report: float | None = None      # the pruned model's report-split score, latency and export
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float | None:
        parts = (self.load, self.base, self.search, self.finetune, self.report)
        return None if any(p is None for p in parts) else float(sum(parts))


def _report_seconds(config: RunConfig, sizes: dict, per_image: float, latency_ms: float | None,
                    report: dict, *, paired: bool) -> float:
    """A report (:meth:`~pruner.runs.job.Session.report`) as the summary child timed it on a few images and
    repeats (``report``), scaled to the run's report images (None: all of the split) and latency repeats
    (``paired``: the pruned model is timed in pairs with the unpruned one, twice the forward passes)."""
    have = int(sizes.get("report") or 0)
    images = min(config.report_images, have) if config.report_images and have else (config.report_images or have)
    lat = (latency_ms or 0.0) / 1000.0
    fixed = max(0.0, float(report["seconds"]) - int(report["images"]) * per_image - int(report["repeats"]) * lat)
    return fixed + images * per_image + (2 if paired else 1) * config.latency_repeats * lat


def estimate_run(config: RunConfig, summary: dict) -> RunEstimate:
    """The expected duration of ``config``'s run from the model ``summary`` (``summarize``'s answer)."""
    est = RunEstimate()
    timing = summary.get("candidate_timing")
    sizes = (summary.get("data") or {}).get("sizes") or {}
    lat = summary.get("latency_ms")
    est.load = summary.get("load_seconds")
    if isinstance(timing, dict) and timing.get("images"):
        per_image = float(timing["evaluation_s"]) / int(timing["images"])
        fixed = max(0.0, float(timing["steady_s"]) - float(timing["evaluation_s"]))
        images = min(config.search_images, int(sizes.get("search") or config.search_images))
        candidate = fixed + per_image * images
        if config.budget_obj.kind == "latency":   # every candidate is timed in pairs with the unpruned model
            candidate += 2 * config.latency_repeats * (lat or 0.0) / 1000.0
        first = max(0.0, float(timing["first_s"]) - float(timing["steady_s"]))   # teacher outputs, warm-up
        est.search = first + config.search_evals * candidate
        report = summary.get("report_timing")
        if isinstance(report, dict):
            est.base = _report_seconds(config, sizes, per_image, lat, report, paired=False)
            if config.finetune.epochs > 0:   # the fine-tuning step is timed before the search
                est.base += float(report.get("finetune_timing_s") or 0.0)
            est.report = _report_seconds(config, sizes, per_image, lat, report, paired=True)
            if config.export:   # the pruned model and the original exported and timed in ONNX Runtime
                est.report += 2 * float(report.get("export_s") or 0.0)
    ft = summary.get("finetune_timing")
    if config.finetune.epochs <= 0:
        est.finetune = 0.0
    elif isinstance(ft, dict) and sizes.get("fit"):
        est.finetune = float(finetune_plan(ft, config.finetune, int(sizes["fit"]))["seconds"])
    if config.strategy in TRAINS_DURING_SEARCH:
        est.notes.append(f"{config.strategy} trains the weights during its search, which this does not count")
    if config.workers:
        est.notes.append(f"the search is counted in this process; {config.workers} Ray workers share it")
    if str(config.device or "").startswith("cuda") and isinstance(timing, dict):
        est.notes.append("the search was timed on this server's CPU; on the GPU it is shorter")
    return est

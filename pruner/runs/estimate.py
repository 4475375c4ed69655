"""How long a pruning run will take, before it starts: the New run page's estimate.

Built from what the model summary's child process measured on this machine
(:func:`pruner.model_summary.summarize`): the time to load the data and model, one steady-state
candidate evaluation by the real :class:`~pruner.search.evaluator.Evaluator` (surgery,
recalibration, scoring; split into a fixed part and a per-image part), the batch-1 latency and the
timed fine-tuning step (:func:`pruner.finetune.finetune_plan`). The run itself then reports a whole-run
ETA from its own measurements (``studio.events.progress``); this is the figure before Start.

A strategy that trains the weights during its search (:data:`TRAINS_DURING_SEARCH`: ``joint``) adds its
training to the search: its steps (:func:`search_steps`) at the timed fine-tuning step's seconds per image
× its batch size (no teacher), the structures it scores (:func:`structures_scored`) and about one more
evaluation on each epoch's new weights (their teacher outputs and surgery plan). The timed step uses the
fine-tuning's autocast default (bf16 where native), as ``joint``'s training does.

What it does not know is said in ``notes`` (a training step that was not timed, Ray
workers, a GPU run whose search was timed on the CPU), never silently folded in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..finetune import finetune_plan
from ..search.base import strategy_class
from ..search.joint import JointPruning
from .config import RunConfig

#: the structure the summary child times as a typical candidate: every group keeps this fraction
TIMED_KEEP = 0.7
#: structures ``joint`` scores after its last epoch (the policy mean on the trained weights and the last structure)
FINAL_STRUCTURES = JointPruning.FINAL_STRUCTURES
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
    search: float | None = None      # the structures scored and, for a strategy that trains, its training
    search_evaluations: int | None = None   # structures the search is expected to score
    search_steps: int | None = None  # weight-training steps of a search that trains (joint)
    search_training: float | None = None    # their seconds (part of ``search``)
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
    training = search_training(config.strategy, config.strategy_params)
    if isinstance(timing, dict) and timing.get("images"):
        per_image = float(timing["evaluation_s"]) / int(timing["images"])
        _search_seconds(est, config, summary, training)
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
    if training is not None and est.search_training is None:
        est.notes.append(f"{config.strategy} trains the weights during its search, which this does not count "
                         "(no training step was timed)")
    if config.workers:
        est.notes.append(f"the search is counted in this process; {config.workers} Ray workers share it")
    if str(config.device or "").startswith("cuda") and isinstance(timing, dict):
        est.notes.append("the search was timed on this server's CPU; on the GPU it is shorter")
    return est


def _search_seconds(est: RunEstimate, config: RunConfig, summary: dict, training: dict | None) -> None:
    """The search's part of ``est`` from the summary's timed candidate (``search``, ``search_evaluations``) and,
    for a strategy that trains the weights during its search (``training``: its parameters), its training
    (``search_steps``, ``search_training``, included in ``search``)."""
    timing = summary["candidate_timing"]
    sizes = (summary.get("data") or {}).get("sizes") or {}
    per_image = float(timing["evaluation_s"]) / int(timing["images"])
    fixed = max(0.0, float(timing["steady_s"]) - float(timing["evaluation_s"]))
    images = min(config.search_images, int(sizes.get("search") or config.search_images))
    candidate = fixed + per_image * images
    if config.budget_obj.kind == "latency":   # every candidate is timed in pairs with the unpruned model
        candidate += 2 * config.latency_repeats * (summary.get("latency_ms") or 0.0) / 1000.0
    first = max(0.0, float(timing["first_s"]) - float(timing["steady_s"]))   # teacher outputs, warm-up
    est.search_evaluations = config.search_evals
    if training is None:
        est.search = first + config.search_evals * candidate
        return
    est.search_evaluations = structures_scored(training, config.search_evals, config.strategy)
    # every epoch leaves new weights, whose teacher outputs and surgery plan are made again: about one more
    # evaluation each (resnet20 on digits: 0.55 s more than the 0.6 s of a steady evaluation)
    est.search = first + (est.search_evaluations + int(training["epochs"])) * candidate
    step = (summary.get("finetune_timing") or {}).get("train_s")
    if isinstance(step, (int, float)) and sizes.get("fit"):
        est.search_steps = search_steps(training, int(sizes["fit"]), config.strategy)
        # seconds per image of the timed step x the search's batch size (no teacher: plain cross-entropy);
        # a taylor ranking after every epoch is a forward and backward pass over 256 fit images
        rerank = min(256, int(sizes["fit"])) if config.importance == "taylor" else 0
        est.search_training = float(step) * (est.search_steps * int(training["batch_size"])
                                             + int(training["epochs"]) * rerank)
        est.search += est.search_training   # joint trains under the fine-tuning's autocast rule, as timed


def search_steps(training: dict, fit_images: int, strategy: str = "joint") -> int:
    """Weight-training steps of a search that trains (``training``: its parameters): ``epochs`` × the
    strategy's own batches per epoch (:meth:`~pruner.search.joint.JointPruning.training_batches`)."""
    cls = strategy_class(strategy)
    params = {**cls.defaults(), **training}
    return int(params["epochs"]) * cls.training_batches(params, fit_images)


def structures_scored(training: dict, search_evals: int, strategy: str = "joint") -> int:
    """Structures a search that trains scores (``training``: its parameters): the strategy's own samples per
    epoch (:meth:`~pruner.search.joint.JointPruning.samples_per_epoch`) × epochs, then its final
    structures on the trained weights; at most ``search_evals``."""
    cls = strategy_class(strategy)
    params = {**cls.defaults(), **training}
    per_epoch = cls.samples_per_epoch(params, search_evals)
    return min(search_evals, int(params["epochs"]) * per_epoch + cls.FINAL_STRUCTURES)

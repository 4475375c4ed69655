"""A run's session: everything a run loads once (data, base model, pruning space, importance
ranking), the evaluator built on it, the pruned model for a chosen structure, and the report.

The job (:mod:`pruner.runs.job`) and each Ray worker (:mod:`pruner.runs.workers`) build the same
:class:`Session` from a :class:`~pruner.runs.config.RunConfig`, so a worker scores a structure
exactly as the job would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..budget import meet_measured
from ..data import DataBundle, batches, load_data
from ..errors import PrunerError
from ..evaluate import accuracy, recalibrate_bn
from ..measure import count_cost, latency_stats, ort_latency_ms, relative_latency
from ..models import build_model, parse_model_spec
from ..pruning.importance import channel_scores, ranking_from_scores
from ..pruning.space import PruningRecord, PruningSpace
from ..pruning.sparsity import SparsitySpace, apply_masks, weight_scores
from ..search.evaluator import Candidate, Evaluator, EvaluatorSettings
from ..settings import resolve_device
from .config import RunConfig
from .rundir import Event, RunDir, Status

StopFn = Callable[[], bool]


#: The throughput batch reported besides batch 1 on a CUDA device when ``latency_batch`` is unset.
GPU_THROUGHPUT_BATCH = 256


class Session:
    """Everything a run loads once: data, base model, pruning space, importance ranking."""

    def __init__(self, config: RunConfig, run: RunDir | None = None):
        self.config = config
        self.run = run
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.log(Event.STATUS, status=Status.LOADING_DATA)
        self.data: DataBundle = load_data(config.data, config.data_root, protocol=config.protocol,
                                          val_size=config.val_size, seed=config.seed, image_size=config.image_size)
        self.log(Event.STATUS, status=Status.LOADING_MODEL)
        self.spec = parse_model_spec(config.model, num_classes=self.data.num_classes, weights=config.weights,
                                     trust_checkpoint=config.trust_checkpoint)
        self.model: nn.Module = build_model(self.spec).eval()
        self._check_classes()
        #: a sparsity budget: the search's unit groups are each layer's weights (pruner.pruning.sparsity)
        self.sparse = config.budget_obj.kind == "sparsity"
        if self.sparse:
            self.space = SparsitySpace(self.model, self.data.input_size, max_prune=config.max_prune,
                                       pattern=config.sparsity_pattern)
        else:
            self.log(Event.STATUS, status=Status.ANALYSING_GRAPH)
            self.space = PruningSpace(self.model, self.data.input_size, min_channels=config.min_channels,
                                      max_prune=config.max_prune, round_to=config.resolved_round_to(self.device))
        self.model.to(self.device)
        self.scores = (weight_scores if self.sparse else channel_scores)(
            self.model, self.space, config.importance, seed=config.seed,
            batches=self._taylor_batches() if config.importance == "taylor" else None)
        self.ranking = ranking_from_scores(self.scores)
        self.space.set_ranking(self.ranking)  # predictions and surgery use the same ranking

    def _check_classes(self) -> None:
        with torch.no_grad():
            out = self.model(torch.zeros(1, *self.data.input_size))
        if out.shape[-1] != self.data.num_classes:
            raise PrunerError(f"the model outputs {out.shape[-1]} classes but the dataset has {self.data.num_classes}; "
                              "pick matching weights or dataset")

    def _taylor_batches(self):
        gen = torch.Generator().manual_seed(self.config.seed)
        it = batches(self.data.fit.subset(256), 64, mean=self.data.mean, std=self.data.std, device=self.device,
                     shuffle=True, generator=gen)
        return list(it)

    def log(self, kind: str, **fields) -> None:
        if self.run is not None:
            self.run.event(kind, **fields)

    def evaluator(self, *, max_evals: int | None, should_stop: StopFn | None = None,
                  on_candidate: Callable[[Candidate], None] | None = None) -> Evaluator:
        c = self.config
        return Evaluator(self.model, self.space, self.data, self.ranking, c.budget_obj, device=self.device,
                         settings=EvaluatorSettings(search_images=c.search_images, recal_images=c.recal_images,
                                                    latency_repeats=c.latency_repeats,
                                                    latency_batch=self.budget_batch, threads=c.scoring_threads,
                                                    score=c.score,
                                                    # sparsity: masked copies (channel masks do not apply)
                                                    scoring="physical" if self.sparse else "auto"),
                         max_evals=max_evals, should_stop=should_stop, on_candidate=on_candidate)

    def build_pruned(self, counts: list[int], *, model: nn.Module | None = None,
                     ranking: list[torch.Tensor] | None = None) -> tuple[nn.Module, PruningRecord]:
        """The model to fine-tune for ``counts``: channels removed physically, or, under a sparsity budget,
        a copy with the masks attached so the zeros survive training; BN recalibrated. ``model`` and
        ``ranking`` default to the session's (a caller comparing several searches passes a search's own,
        e.g. ``joint``'s trained weights)."""
        model = self.model if model is None else model
        ranking = self.ranking if ranking is None else ranking
        self.space.set_ranking(ranking)
        check = meet_measured(self.space, model, counts, self.config.budget_obj)  # never above a FLOPs/params budget
        if check.corrected:
            self.log(Event.LOG, level="warning", message=f"the chosen structure measured above {self.config.budget}; "
                     f"re-solved on the measured cost to {check.achieved:.4f}")
        pruned, record = (apply_masks(model, self.space, check.counts) if self.sparse  # masks kept in training
                          else self.space.prune(model, check.counts, ranking))
        recalibrate_bn(pruned, self.data.fit, mean=self.data.mean, std=self.data.std, device=self.device,
                       images=self.config.recal_images)
        return pruned, record

    @property
    def budget_batch(self) -> int:
        """The batch a latency budget is measured at: the throughput batch (the last of
        :meth:`latency_batches`: 256 on CUDA, where batch 1 is bound by kernel launches, 1 on the CPU)."""
        return self.latency_batches()[-1]

    def latency_batches(self) -> list[int]:
        """Batches every latency figure is timed at: 1, and the throughput batch (``latency_batch``
        when set, else :data:`GPU_THROUGHPUT_BATCH` on CUDA and none on the CPU)."""
        extra = self.config.latency_batch or (GPU_THROUGHPUT_BATCH if self.device.type == "cuda" else 1)
        return [1] if extra == 1 else [1, extra]

    def report(self, model: nn.Module, *, onnx_path: Path | None = None, reference: nn.Module | None = None) -> dict:
        """Test-split accuracy, cost, and latency on the run's device at each of :meth:`latency_batches`.

        ``latency`` lists ``{"device", "batch", "ms"}`` per batch (``device`` as
        :func:`~pruner.measure.device_label` names it); with ``reference`` (the unpruned model) each
        entry is timed in interleaved pairs with it and adds ``reference_ms`` and ``vs_base``
        (robust to drifting machine speed). ``latency_ms`` / ``latency_vs_base`` are the batch-1
        entry's (``latency_device``, ``latency_batch`` say where), and ``ort_latency_ms`` is ONNX
        Runtime on the CPU at batch 1 (with ``onnx_path``).
        """
        report_set = self.data.report
        if self.config.report_images:
            report_set = report_set.subset(min(self.config.report_images, len(report_set)))
        acc = accuracy(model, report_set, mean=self.data.mean, std=self.data.std, device=self.device)
        cpu_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
        cost = count_cost(cpu_model, self.data.input_size)
        out = {"macs": cost.macs, "params": cost.params, "top1": acc["top1"], "top5": acc["top5"],
               "report_images": len(report_set)}
        entries = []
        for batch in self.latency_batches():
            if reference is None:
                st = latency_stats(model, self.data.input_size, batch_size=batch, device=self.device,
                                   repeats=self.config.latency_repeats)
                entries.append({"device": st["device"], "batch": batch, "ms": st["median"]})
            else:
                m = relative_latency(model, reference, self.data.input_size, batch_size=batch, device=self.device,
                                     repeats=self.config.latency_repeats)
                entries.append({"device": m["device"], "batch": batch, "ms": m["ms"],
                                "reference_ms": m["reference_ms"], "vs_base": m["ratio"],
                                "vs_base_iqr": [m["ratio_q1"], m["ratio_q3"]], "repeats": m["repeats"]})
        out.update(latency=entries, latency_ms=entries[0]["ms"], latency_device=entries[0]["device"],
                   latency_batch=entries[0]["batch"])
        if reference is not None:
            out["latency_vs_base"] = entries[0]["vs_base"]
        out["ort_latency_ms"] = (ort_latency_ms(onnx_path, self.data.input_size, batch_size=1,
                                                repeats=self.config.latency_repeats) if onnx_path else None)
        out.update(ort_latency_device="cpu", ort_latency_batch=1)
        return out

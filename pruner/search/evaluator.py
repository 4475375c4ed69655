"""Turning a proposal into a scored candidate: the inner loop every strategy shares.

``counts`` (channels kept per group, aligned to the space's ``round_to``) → the pruned
network → BN recalibration on training images → top-1 on a fixed subset of the *search*
split (never the report split) → costs (MACs and params from the exact cost model; latency
measured when the budget is latency). Results are memoised by (model version, counts), so a
strategy that proposes the same structure twice, or a resumed run that replays its
proposals, pays nothing; the cap on evaluations (``max_evals``) counts real evaluations only.

Two ways to get "the pruned network" compute the same function (``tests/test_alignment.py``):

* ``mask``: channel masks on one working copy of the unpruned model
  (:class:`~pruner.pruning.masks.ChannelMasker`): no copy, no graph work per candidate, but
  every forward pass costs the unpruned model's MACs. Best where a forward pass is cheap
  and launch-bound (GPUs).
* ``physical``: Torch-Pruning surgery on a deep copy: the forward passes cost only the
  pruned MACs. Best on CPUs, where the forward passes dominate. On the CPU (``lean``, the
  default there) the surgery replays a plan of Torch-Pruning's handlers walked once
  (:class:`~pruner.pruning.masks.ChannelSlicer`), recalibration runs through a
  :class:`~pruner.evaluate.LeanGraph` (in-place ReLU and residual adds) and scoring through
  its BN-folded form; each is checked against the plain path once and falls back to it.

``auto`` picks ``mask`` on CUDA and ``physical`` on CPU. Evaluation images stay on the
device as normalised float tensors (built once); scoring runs under bf16 autocast on CUDA and in
float32 on the CPU (``EvaluatorSettings.amp``: bf16 on a CPU changed which structures won).
Latency costs always time a physically pruned model.

On a CPU with physical scoring, a batch of proposals (:meth:`Evaluator.prefetch`) is scored
``threads`` at a time in this process, each structure on its own Python thread with an
equal share of the intra-op threads (small convolutions parallelise poorly inside one
operator). Surgery and the FX trace stay one at a time on the calling thread — tracing
patches ``nn.Module`` for the whole process, so no forward pass may run beside it — and the
threads then recalibrate, fold and score. Ids, events, the cap and the answer are those of
the sequential run (Ray workers, :mod:`pruner.runs.workers`, take precedence).
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..budget import Budget, CostFn, Solution, model_cost_fn, solve
from ..data import DataBundle, ImageTensors
from ..data.batching import normalize
from ..errors import CancelledError, PrunerError
from ..evaluate import GraphUnsupported, LeanGraph, bn_recalibration
from ..measure import relative_latency
from ..pruning.masks import ChannelMasker, ChannelSlicer, MaskingUnsupported
from ..pruning.space import PruningSpace

SCORING_MODES = ("auto", "mask", "physical")
#: what a search maximises (``RunConfig.score``, ``--score``): ``top1``, the search-split top-1 (%);
#: ``kl``, the fidelity to the unpruned model on the same images, ``100 * exp(-KL)`` with KL the mean
#: divergence of the candidate's softmax from the unpruned model's (:func:`fidelity`). Every candidate
#: records both (``top1``, ``kl``); ``score`` is the chosen one, in points (higher is better)
SCORES = ("top1", "kl")


def fidelity(kl: float) -> float:
    """The ``kl`` score in points: ``100 * exp(-kl)`` (100 = the unpruned model's outputs exactly),
    so that strategies' hyperparameters in points (noise floors, damages) keep their scale."""
    return 100.0 * math.exp(-max(0.0, float(kl)))


def score_of(kind: str, top1: float, kl: float | None) -> float:
    """The search score of a candidate with these measurements (see :data:`SCORES`)."""
    if kind == "kl":
        if kl is None:
            raise PrunerError("this candidate has no KL measurement (scored by an older version); "
                              "start a new run to search with --score kl")
        return fidelity(kl)
    return float(top1)
#: Evaluation images are kept as ready float tensors up to this size (else uint8, normalised per batch).
RESIDENT_FLOAT_BYTES = 1 << 30
#: at most this many scoring threads by default (each holds a scoring batch's activations)
MAX_AUTO_THREADS = 4
#: scoring threads are on by default only for inputs this small (CIFAR-like); larger inputs
#: multiply the activation memory per thread
AUTO_THREADS_MAX_SIDE = 64


def check_score(score: str) -> str:
    """``score`` if it names one of :data:`SCORES`, else a one-line ``PrunerError``."""
    if score not in SCORES:
        raise PrunerError(f"unknown score {score!r} (--score); use one of {', '.join(SCORES)}")
    return score


class EvaluationBudgetExhausted(Exception):
    """Raised when a strategy asks for more evaluations than ``max_evals`` allows."""


@dataclass
class Candidate:
    id: int
    step: int
    counts: list[int]
    keep_ratios: list[float]
    top1: float                 # on the search subset, after BN recalibration
    macs: int
    params: int
    cost: float                 # fraction of the original for the budget's kind
    latency_ms: float | None = None
    reward: float | None = None
    #: mean KL divergence (nats) of its softmax from the unpruned model's on the same images
    kl: float | None = None
    #: what the search maximises (:data:`SCORES`): top1, or fidelity(kl); points, higher is better
    score: float | None = None
    meta: dict = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self):
        if self.score is None:   # built by hand (tests, older events): the search score is top-1
            self.score = self.top1

    def to_event(self) -> dict:
        d = asdict(self)
        d["candidate_id"] = d.pop("id")
        return d


@dataclass
class EvaluatorSettings:
    search_images: int = 1000
    recal_images: int = 256
    batch_size: int | None = None  # scoring batch; None: 1000 on CUDA (launch-bound), 250 on CPU (cache-bound)
    recal_batch_size: int = 128    # BN recalibration batch (as the final model's recalibration)
    latency_batch: int = 1
    latency_repeats: int = 20
    scoring: str = "auto"          # "mask", "physical", or "auto" (mask on CUDA, physical on CPU)
    channels_last: bool = True     # convolutions channels-last while scoring (faster on CPU and GPU)
    #: bf16 autocast while recalibrating and scoring; None: the device's default (scoring on CUDA only;
    #: float32 on every CPU: see _autocast)
    amp: bool | None = None
    lean: bool = True              # CPU surgery: recalibrate and score through a LeanGraph (in-place ops, BN folded)
    #: structures of a prefetched batch scored at once in this process (CPU, physical scoring);
    #: None: auto, the intra-op thread count up to MAX_AUTO_THREADS for inputs up to
    #: AUTO_THREADS_MAX_SIDE pixels a side, else 1; 1: one at a time
    threads: int | None = None
    score: str = "top1"            # what the search maximises: one of SCORES


class Evaluator:
    """Scores pruned candidates of ``model`` on the search split of ``data``."""

    def __init__(self, model: nn.Module, space: PruningSpace, data: DataBundle, ranking: Sequence[torch.Tensor],
                 budget: Budget, *, device: torch.device | str = "cpu", settings: EvaluatorSettings | None = None,
                 max_evals: int | None = None, on_candidate: Callable[[Candidate], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.model = model
        self.space = space
        self.data = data
        self.ranking = list(ranking)
        self.budget = budget
        self.device = torch.device(device)
        self.settings = settings or EvaluatorSettings()
        self.max_evals = max_evals
        self.on_candidate = on_candidate
        self.should_stop = should_stop or (lambda: False)
        if self.settings.scoring not in SCORING_MODES:
            raise PrunerError(f"unknown scoring mode {self.settings.scoring!r}; use one of {', '.join(SCORING_MODES)}")
        check_score(self.settings.score)
        self.space.set_ranking(self.ranking)  # one ranking for the cost model and the surgery
        self.search_set: ImageTensors = data.search.subset(min(self.settings.search_images, len(data.search))).to(self.device)
        self.recal_set: ImageTensors = data.fit.subset(min(self.settings.recal_images, len(data.fit))).to(self.device)
        # resident, ready-to-use tensors: normalised once, in the layout the convolutions prefer
        self._search_x = self._ready(self.search_set.x)
        self._search_y = self.search_set.y
        self._recal_x = self._ready(self.recal_set.x)
        self.scoring = self.settings.scoring if self.settings.scoring != "auto" else (
            "mask" if self.device.type == "cuda" else "physical")
        self.scoring_note: str | None = None   # why masks were given up for surgery, if they were
        self.lean = self.settings.lean and self.device.type == "cpu"
        self.lean_note: str | None = None      # why the lean graph was given up, if it was
        self._lean_checked = False
        self._slicer: ChannelSlicer | None | bool = None  # False: slicing given up for Torch-Pruning's surgery
        self._masker: ChannelMasker | None = None
        self.evaluations = 0
        self.candidates: list[Candidate] = []
        self.model_version = 0
        self._memo: dict[tuple, dict] = {}
        self._logged = 0  # candidate events already in the log (a resumed run replays them silently)
        self._latency_memo: dict[tuple, tuple[float, float]] = {}  # -> (ms, relative to the unpruned model)
        self._lock = threading.RLock()  # timing totals and the lean graph's folding, across scoring threads
        self.timing = {"surgery": 0.0, "masks": 0.0, "graph": 0.0, "recalibration": 0.0, "evaluation": 0.0,
                       "latency": 0.0}
        #: scores batches of structures elsewhere (``pruner.runs.workers.RayPool``); None: all here
        self.pool = None
        self._teacher: tuple[int, torch.Tensor] | None = None  # (model version, log-softmax on the search images)

    def _tick(self, key: str, t0: float) -> None:
        """Add the seconds since ``t0`` to ``timing[key]`` (summed over scoring threads)."""
        dt = time.perf_counter() - t0
        with self._lock:
            self.timing[key] += dt

    def _ready(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images in the convolutions' preferred layout; sets above
        :data:`RESIDENT_FLOAT_BYTES` stay uint8 and are normalised batch by batch."""
        if x.numel() * 4 > RESIDENT_FLOAT_BYTES:
            return x
        return self._layout(normalize(x, self.data.mean, self.data.std))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last and x.dim() == 4 else x

    def _batch(self, x: torch.Tensor, start: int, size: int) -> torch.Tensor:
        b = x[start:start + size]
        return self._layout(normalize(b, self.data.mean, self.data.std)) if b.dtype == torch.uint8 else b

    # ----------------------------------------------------------- budget helpers
    def cost_fn(self) -> CostFn:
        if self.budget.kind == "latency":
            return self.relative_latency
        return model_cost_fn(self.space, self.budget.kind)

    def solve(self, allocation: Sequence[float], budget: Budget | None = None) -> Solution:
        return solve(self.space, allocation, budget or self.budget, cost_fn=self.cost_fn() if (budget or self.budget).kind == "latency" else None)

    def relative_cost(self, counts: Sequence[int]) -> float:
        return self.cost_fn()(list(counts))

    def latency_of(self, counts: Sequence[int]) -> float:
        """Measured latency (ms) of the pruned structure (see :meth:`relative_latency`)."""
        return self._latency(counts)[0]

    def relative_latency(self, counts: Sequence[int]) -> float:
        """Latency of the pruned structure over that of the current unpruned model, timed in
        interleaved pairs (:func:`~pruner.measure.relative_latency`) so that drifting machine
        speed cancels out; memoised per (model version, structure)."""
        return self._latency(counts)[1]

    def remeasure_latency(self, counts: Sequence[int], *, repeats_factor: int = 3) -> float:
        """A fresh (not memoised) relative latency of the structure, with ``repeats_factor`` times
        the usual number of timed pairs."""
        return self._time(counts, self.settings.latency_repeats * repeats_factor)["ratio"]

    def _time(self, counts: Sequence[int], repeats: int) -> dict:
        """Time the (physically) pruned structure in pairs with the current unpruned model."""
        pruned = self.build(counts, recalibrate=False)
        t0 = time.perf_counter()
        m = relative_latency(pruned, self.model, self.space.input_size, batch_size=self.settings.latency_batch,
                             device=self.device, repeats=repeats, warmup=3)
        self._tick("latency", t0)
        return m

    def _latency(self, counts: Sequence[int]) -> tuple[float, float]:
        key = (self.model_version, tuple(self.space.align(counts)))
        if key not in self._latency_memo:
            m = self._time(counts, self.settings.latency_repeats)
            self._latency_memo[key] = (m["ms"], m["ratio"])
        return self._latency_memo[key]

    # ----------------------------------------------------------- building
    def build(self, counts: Sequence[int], *, recalibrate: bool = True) -> nn.Module:
        """The physically pruned (and BN-recalibrated) copy of the current model (counts aligned)."""
        t0 = time.perf_counter()
        slicer = self._slicer_for_model()
        if slicer:
            self.space.set_ranking(self.ranking)
            pruned = slicer.prune(self.space.align(counts))
        else:
            pruned, _ = self.space.prune(self.model, self.space.align(counts), self.ranking)
        pruned.to(self.device)
        if self.device.type == "cuda":
            pruned.to(memory_format=torch.channels_last)
        self._tick("surgery", t0)
        if recalibrate:
            self._recalibrate(pruned)
        return pruned

    def _slicer_for_model(self) -> ChannelSlicer | None:
        """The cached surgery plan (:class:`~pruner.pruning.masks.ChannelSlicer`) on the lean path,
        verified once against Torch-Pruning's surgery; None where it is off or was given up."""
        if not self.lean or self._slicer is False:
            return None
        if not isinstance(self.space, PruningSpace):  # weight sparsity: masks on a copy, no channel surgery
            self._slicer = False
            return None
        if self._slicer is None:
            try:
                slicer = ChannelSlicer(self.model, self.space)
                self.space.set_ranking(self.ranking)
                slicer.verify(self.space.counts([0.5] * len(self.space)))
                slicer.verify(self.space.counts([0.3 + 0.6 * ((7 * i) % 10) / 10 for i in range(len(self.space))]))
                self._slicer = slicer
            except Exception as exc:  # noqa: BLE001 - a layer the plan cannot replay: the surgery still works
                self._slicer, self.lean_note = False, f"surgery plan given up ({type(exc).__name__}: {exc})"
                return None
        return self._slicer

    def masked(self, counts: Sequence[int], *, recalibrate: bool = True) -> nn.Module:
        """The working copy of the current model with the channels ``counts`` removes masked out
        (and BN recalibrated): the pruned network's function without surgery. It is reused by
        the next call; :class:`~pruner.pruning.masks.MaskingUnsupported` when masks cannot
        represent this model."""
        if self._masker is None:
            t0 = time.perf_counter()
            try:
                masker = ChannelMasker(self.model, self.space, device=self.device,
                                       channels_last=self.settings.channels_last or self.device.type == "cuda")
                probe = self.space.counts([0.5] * len(self.space))
                masker.verify(probe, self._batch(self._search_x, 0, 8).contiguous())
            except MaskingUnsupported:
                raise
            except Exception as exc:  # a layer the mapping does not know: surgery still works
                raise MaskingUnsupported(f"{type(exc).__name__}: {exc}") from exc
            self._masker = masker
            self._tick("masks", t0)
        t0 = time.perf_counter()
        model = self._masker.apply(self.space.align(counts))
        self._sync()
        self._tick("masks", t0)
        if recalibrate:
            self._recalibrate(model)
        return model

    @torch.no_grad()
    def _recalibrate(self, model: nn.Module) -> None:
        """Re-estimate every BatchNorm's running statistics on the resident recalibration images
        (cumulative average over batches of ``recal_batch_size``, as :func:`~pruner.evaluate.recalibrate_bn`)."""
        t0 = time.perf_counter()
        with bn_recalibration(model) as has_bn, self._autocast(recalibration=True):
            if has_bn:
                bs = self.settings.recal_batch_size
                for i in range(0, len(self._recal_x), bs):
                    model(self._batch(self._recal_x, i, bs))
        model.eval()
        self._sync()
        self._tick("recalibration", t0)

    def _autocast(self, *, recalibration: bool = False) -> torch.autocast:
        """bf16 autocast when ``settings.amp``; unset: for scoring on CUDA only (recalibration in float32).
        On a CPU with native bf16 the search scores in float32: bf16 there was 1.48x faster and ranked 24
        structures alike (Spearman 0.996), but it changed which structures the probes and the search
        chose (ResNet-56, ``flops=0.5``, three seeds: sensitivity's answer 1.17 report top-1 points lower
        on the mean, lower on every seed; docs/results.md)."""
        amp = self.settings.amp
        if amp is None:
            amp = self.device.type == "cuda" and not recalibration
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(amp))

    def _sync(self) -> None:
        """Wait for queued CUDA work, so each timing entry holds its own work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def logits(self, model: nn.Module) -> torch.Tensor:
        """``model``'s logits (float32) on the resident search images, in scoring batches (bf16
        autocast: ``settings.amp``)."""
        model.eval()
        bs = self.settings.batch_size or (1000 if self.device.type == "cuda" else 250)
        outs = []
        with self._autocast():
            for i in range(0, len(self._search_y), bs):
                outs.append(model(self._batch(self._search_x, i, bs)))
        return torch.cat(outs).float()

    def teacher_logp(self) -> torch.Tensor:
        """The current unpruned model's log-softmax on the search images (float32), computed once
        per model version: the reference of every candidate's KL."""
        with self._lock:
            if self._teacher is None or self._teacher[0] != self.model_version:
                t0 = time.perf_counter()
                self._teacher = (self.model_version, F.log_softmax(self.logits(self.model), 1))
                self._tick("evaluation", t0)
            return self._teacher[1]

    @torch.inference_mode()
    def score(self, model: nn.Module) -> tuple[float, float]:
        """Top-1 (%) of ``model`` on the resident search images and the mean KL divergence (nats) of
        its softmax from the unpruned model's (:meth:`teacher_logp`), from the same forward pass."""
        teacher = self.teacher_logp()
        t0 = time.perf_counter()
        logits = self.logits(model)
        n = max(1, len(self._search_y))
        top1 = 100.0 * int((logits.argmax(1) == self._search_y).sum()) / n
        kl = float((teacher.exp() * (teacher - F.log_softmax(logits, 1))).sum(1).double().mean())
        self._tick("evaluation", t0)
        return top1, max(0.0, kl)

    def scored_model(self, counts: Sequence[int]) -> nn.Module:
        """The recalibrated network that :meth:`evaluate` scores for ``counts`` (masked or physical)."""
        if self.scoring == "mask":
            try:
                return self.masked(counts)
            except MaskingUnsupported as exc:
                self.scoring, self.scoring_note = "physical", f"channel masks cannot represent this model ({exc})"
        return self._finish(*self._prepare(counts))

    def _prepare(self, counts: Sequence[int]) -> tuple[nn.Module, LeanGraph | None]:
        """Physical scoring's first half: surgery and (lean) the FX trace. One at a time, on the
        calling thread: ``torch.fx`` tracing patches ``nn.Module`` for the whole process, so no
        forward pass may run beside it."""
        pruned = self.build(counts, recalibrate=False)
        if self.settings.channels_last:  # for scoring only: latency costs time the model as built
            pruned.to(memory_format=torch.channels_last)
        return pruned, self._lean_graph(pruned)

    def _finish(self, pruned: nn.Module, graph: LeanGraph | None) -> nn.Module:
        """Physical scoring's second half: recalibrate, fold, check once (safe on a scoring thread)."""
        self._recalibrate(graph.module if graph is not None else pruned)  # shared batch norms: pruned's too
        if graph is None:
            return pruned
        with self._lock:  # folding regenerates code (GraphModule.recompile): one at a time
            if not self.lean:  # another thread's check gave the lean graph up
                return pruned
            t0 = time.perf_counter()
            lean = graph.fold().module.eval()
            if self.settings.channels_last:
                lean.to(memory_format=torch.channels_last)
            self._tick("graph", t0)
            if not self._lean_checked:  # once: the lean graph must score what the pruned model scores
                self._lean_checked = True
                with torch.inference_mode():
                    x = self._batch(self._search_x, 0, 16)
                    a, b = lean(x).float(), pruned.eval()(x).float()
                diff, scale = float((a - b).abs().max()), float(b.abs().max()) + 1.0
                if diff > 1e-4 * scale or not torch.equal(a.argmax(1), b.argmax(1)):
                    self.lean, self.lean_note = False, f"the lean graph's logits differ by {diff:.3g}"
                    return pruned
        return lean

    def scoring_threads(self) -> int:
        """How many structures :meth:`prefetch` scores at once in this process (see the module)."""
        if self.device.type != "cpu" or self.scoring != "physical":
            return 1
        n = self.settings.threads
        if n is None:
            side = max(self._search_x.shape[-2:]) if self._search_x.dim() == 4 else 0
            n = min(torch.get_num_threads(), MAX_AUTO_THREADS) if side <= AUTO_THREADS_MAX_SIDE else 1
        return max(1, int(n))

    def _score_on_threads(self, todo: list[list[int]], threads: int) -> list[dict]:
        """:meth:`measure` for each of ``todo``: surgery and traces here, the rest on ``threads``
        threads with an equal share of the intra-op threads each."""
        main = torch.get_num_threads()
        prepared = [self._prepare(counts) for counts in todo]

        self.teacher_logp()  # once, before the threads

        def work(i: int) -> tuple[float, float]:
            return self.score(self._finish(*prepared[i]))

        try:  # a thread's set_num_threads is its own, but it also sets the default for new threads
            with ThreadPoolExecutor(threads, thread_name_prefix="pruner-score", initializer=torch.set_num_threads,
                                    initargs=(max(1, main // threads),)) as pool:
                tops = list(pool.map(work, range(len(todo))))
        finally:
            torch.set_num_threads(main)
        return [self._result(counts, *s) for counts, s in zip(todo, tops)]

    def _lean_graph(self, pruned: nn.Module) -> LeanGraph | None:
        """The pruned model as a :class:`~pruner.evaluate.LeanGraph` (None: lean scoring is off or
        the model cannot be traced, which turns it off for the rest of the search)."""
        if not self.lean:
            return None
        t0 = time.perf_counter()
        try:
            return LeanGraph(pruned)
        except GraphUnsupported as exc:
            self.lean, self.lean_note = False, f"torch.fx cannot trace this model ({exc})"
            return None
        finally:
            self._tick("graph", t0)

    def set_model(self, model: nn.Module, ranking: Sequence[torch.Tensor]) -> None:
        """Switch to a new current model (e.g. after fine-tuning between search steps)."""
        self.model = model
        self.ranking = list(ranking)
        self.space.set_ranking(self.ranking)
        if self._masker is not None:
            self._masker.load(model)
        if self._slicer:
            self._slicer = None  # planned (and verified) again on the new model
        self.model_version += 1
        if self.pool is not None:
            self.pool.set_model(self.model_version, model.state_dict(), self.ranking)

    def measure(self, counts: Sequence[int]) -> dict:
        """Score one structure here, outside the memo, the cap and the events: search-split top-1,
        KL to the unpruned model, MACs and params (what a worker of :mod:`pruner.runs.workers` computes)."""
        counts = self.space.align([int(c) for c in counts])
        return self._result(counts, *self.score(self.scored_model(counts)))

    def _result(self, counts: list[int], top1: float, kl: float | None) -> dict:
        macs, params = self.space.predict(counts=counts)
        return {"top1": top1, "kl": kl, "macs": int(macs), "params": int(params)}

    def prefetch(self, proposals: Sequence[Sequence[int]]) -> int:
        """Score a batch of proposals at once on :attr:`pool` (a no-op without one).

        Strategies call this with the structures they are about to :meth:`evaluate` one by one;
        the new ones (not memoised, within the evaluation cap, in the order proposed) are
        scored in parallel and then *consumed* by :meth:`evaluate` as fresh evaluations, so ids,
        events, the cap and the answer are exactly those of the sequential run, whatever the
        number of workers. Without a pool, a CPU scores them :meth:`scoring_threads` at a time
        in this process. Latency (for latency budgets) is still timed here, one at a time.
        Returns how many structures were scored.
        """
        threads = self.scoring_threads() if self.pool is None else 0
        if self.pool is None and (threads < 2 or self.budget.kind == "latency"):
            # under a latency budget each structure is also timed here, alone: scoring a batch on threads
            # first would hold every candidate back until the whole batch is timed (the page would see
            # nothing, then all at once), for a speed-up the timing dominates anyway
            return 0
        if self.should_stop():
            raise CancelledError("search cancelled")
        todo: list[list[int]] = []
        seen: set[tuple] = set()
        for p in proposals:
            counts = self.space.align([int(c) for c in p])
            key = (self.model_version, tuple(counts))
            if key not in self._memo and key not in seen:
                seen.add(key)
                todo.append(counts)
        if self.remaining is not None:
            todo = todo[:self.remaining]
        if not todo or (self.pool is None and len(todo) < 2):
            return 0
        scores = (self.pool.score_many(self.model_version, todo, should_stop=self.should_stop) if self.pool is not None
                  else self._score_on_threads(todo, min(threads, len(todo))))
        for counts, s in zip(todo, scores):
            lat = self.latency_of(counts) if self.budget.kind == "latency" else None
            self._memo[(self.model_version, tuple(counts))] = {**s, "latency_ms": lat, "pending": False,
                                                               "prefetched": True}
        return len(todo)

    def evaluate_many(self, proposals: Sequence[Sequence[int]], *, step: int = 0,
                      metas: Sequence[dict | None] | None = None,
                      reward_fn: Callable[[Candidate], float] | None = None) -> list[Candidate]:
        """:meth:`prefetch` then :meth:`evaluate` each proposal in order (same candidates as a loop)."""
        self.prefetch(proposals)
        return [self.evaluate(c, step=step, meta=metas[i] if metas else None, reward_fn=reward_fn)
                for i, c in enumerate(proposals)]

    # ----------------------------------------------------------- evaluating
    def evaluate(self, counts: Sequence[int], *, step: int = 0, meta: dict | None = None,
                 reward_fn: Callable[[Candidate], float] | None = None) -> Candidate:
        """Score one structure; memoised, counted against ``max_evals``, reported to ``on_candidate``."""
        if self.should_stop():
            raise CancelledError("search cancelled")
        counts = self.space.align([int(c) for c in counts])  # what will be built (round_to, limits)
        key = (self.model_version, tuple(counts))
        cached = self._memo.get(key)
        t0 = time.perf_counter()
        if cached is None:
            if self.max_evals is not None and self.evaluations >= self.max_evals:
                raise EvaluationBudgetExhausted(f"{self.max_evals} evaluations used")
            lat = self.latency_of(counts) if self.budget.kind == "latency" else None
            cached = {**self.measure(counts), "latency_ms": lat, "pending": False}
            self._memo[key] = cached
            self.evaluations += 1
            fresh = True
        elif cached.get("prefetched"):  # scored by the pool for this very proposal: a fresh evaluation
            cached["prefetched"] = False
            self.evaluations += 1
            fresh = True
        else:
            fresh = False
            if cached.get("pending"):  # evaluated before an interruption: counts once, already logged
                cached["pending"] = False
                self.evaluations += 1
        cand = Candidate(
            id=len(self.candidates), step=step, counts=counts,
            keep_ratios=[c / g.channels for c, g in zip(counts, self.space.groups)],
            top1=cached["top1"], macs=cached["macs"], params=cached["params"],
            cost=self.relative_cost(counts), latency_ms=cached["latency_ms"], kl=cached.get("kl"),
            score=score_of(self.settings.score, cached["top1"], cached.get("kl")),
            meta={**(meta or {}), "cached": not fresh, "model_version": self.model_version},
            seconds=time.perf_counter() - t0,
        )
        cand.reward = reward_fn(cand) if reward_fn is not None else cand.score
        self.candidates.append(cand)
        if self.on_candidate is not None and cand.id >= self._logged:
            self.on_candidate(cand)
        return cand

    def preload(self, events: Sequence[dict]) -> int:
        """Fill the memo from an interrupted run's fresh ``candidate`` events, so replaying
        the (deterministic) strategy costs no evaluations and writes no duplicate events."""
        n = 0
        self._logged = len(events)
        for e in events:
            meta = e.get("meta") or {}
            if meta.get("cached"):
                continue
            key = (int(meta.get("model_version", 0)), tuple(int(c) for c in e["counts"]))
            if key not in self._memo:
                self._memo[key] = {**{k: e.get(k) for k in ("top1", "kl", "macs", "params", "latency_ms")},
                                 "pending": True}
                n += 1
            if e.get("latency_ms") is not None and e.get("cost") is not None:
                # measured latencies replay too (a latency budget's cost is the relative latency),
                # so the strategy replays exactly
                self._latency_memo.setdefault(key, (e["latency_ms"], e["cost"]))
        return n

    @property
    def remaining(self) -> int | None:
        return None if self.max_evals is None else max(0, self.max_evals - self.evaluations)

"""The search framework: a strategy proposes structures, the shared evaluator scores them.

Strategies only decide *where* to prune; every candidate goes through the same
:class:`~pruner.search.evaluator.Evaluator` (same budget solver, same recalibration, same
search subset), and ``max_evals`` caps real evaluations for all of them alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from ..budget import CHANNEL_KINDS
from ..checks import check_number, range_text
from ..errors import PrunerError
from .evaluator import Candidate, EvaluationBudgetExhausted, Evaluator

#: Whether a path names a finished Sensitivity analysis (its file, or None); the runs layer's
#: ``rundir.find_sensitivity``: the search does not know where runs keep their files.
AnalysisFinder = Callable[[str], "Path | None"]

#: After a latency-budget search, the most accurate feasible candidates re-timed (at most this many).
VERIFY_CANDIDATES = 5


@dataclass
class SearchContext:
    evaluator: Evaluator
    seed: int = 0
    scores: list[torch.Tensor] | None = None          # per-group channel importance of the base model
    importance: str = "l1"                             # the run's importance criterion (RunConfig.importance)
    emit: Callable[..., Any] = lambda kind, **fields: None   # writes run-directory events
    state: dict = field(default_factory=dict)          # strategy scratch space persisted for resume
    #: a finished Sensitivity analysis that a parameter names (rl's ``start``: a run directory or its file):
    #: ``(table, file)``, or a one-line PrunerError; given by the runs layer (``rundir.read_sensitivity``)
    read_analysis: Callable[[str], tuple[dict, Path]] | None = None

    @property
    def space(self):
        return self.evaluator.space

    @property
    def budget(self):
        return self.evaluator.budget

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def feasible(self, cand: Candidate) -> bool:
        """Whether ``cand`` meets the run's budget (:meth:`pruner.budget.Budget.feasible`)."""
        return self.budget.feasible(cand.cost)


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Param:
    """One strategy hyperparameter: its default, type, allowed values and a help line.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``. Numbers must lie in ``[low, high]``;
    ``low_open`` / ``high_open`` make that end *exclusive*; ``None`` leaves it unbounded.
    ``choices`` lists the allowed strings; ``prefixes`` also allows any string starting with one
    of them (e.g. ``python:FILE.py:FUNCTION``). ``nullable`` allows ``None`` (meaning: the
    strategy's own automatic choice, described in ``help``).
    """

    default: Any
    kind: type
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    prefixes: tuple[str, ...] = ()
    nullable: bool = False

    def __post_init__(self):
        if self.kind not in (int, float, bool, str):
            raise TypeError(f"Param kind must be int, float, bool or str, got {self.kind!r}")
        if not (self.default is None and self.nullable):
            self.check("default", self.default)  # a declaration whose default is invalid is a bug

    def range_text(self) -> str:
        """The allowed values in words, e.g. ``an integer >= 1``, ``a number in (0, 1]``, ``one of a, b``."""
        if self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            opts = list(self.choices or ()) + [f"{p}..." for p in self.prefixes]
            text = f"one of {', '.join(opts)}" if opts else "a string"
        else:
            text = range_text(self.kind, self.low, self.high, low_open=self.low_open, high_open=self.high_open)
        return text + (" or empty (automatic)" if self.nullable else "")

    def check(self, name: str, value: Any, strategy: str = "") -> Any:
        """``value`` converted to this parameter's type, or a ``PrunerError`` saying what is allowed."""
        if value is None and self.nullable:
            return None
        label = f"strategy {strategy!r} parameter {name}" if strategy else f"strategy parameter {name}"
        if self.kind in (int, float):
            return check_number(label, value, self.kind, low=self.low, high=self.high,
                                low_open=self.low_open, high_open=self.high_open, optional=self.nullable)
        bad = PrunerError(f"{label} must be {self.range_text()}, got {value!r}")
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            raise bad
        if not isinstance(value, str):
            raise bad
        if (self.choices is None and not self.prefixes) or (self.choices and value in self.choices) \
                or (self.prefixes and value.startswith(self.prefixes)):
            return value
        raise bad


def check_params(name: str, specs: Mapping[str, Param], params: Mapping[str, Any]) -> dict[str, Any]:
    """The one validation of strategy hyperparameters: ``params`` (the ones set) converted to their
    declared types; unknown names, wrong types and out-of-range values are a ``PrunerError``."""
    if not isinstance(params, Mapping):
        raise PrunerError(f"strategy parameters must be a mapping of name to value, got {params!r}")
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise PrunerError(f"strategy {name!r} has no parameter(s) {', '.join(map(str, unknown))}; "
                          f"it takes {', '.join(specs) or 'none'} (see `python -m pruner strategies`)")
    return {k: specs[k].check(k, v, name) for k, v in params.items()}


class Strategy(ABC):
    """Base class: subclasses set ``name``, declare ``param_specs`` and implement :meth:`search`."""

    name: ClassVar[str] = ""
    #: whether more evaluations can improve the result (uniform/global use exactly one)
    uses_evaluations: ClassVar[bool] = True
    #: the hyperparameters, declared once: validation, ``python -m pruner strategies`` and the
    #: studio's widgets all read this
    param_specs: ClassVar[dict[str, Param]] = {}
    #: the budget kinds it can search; a strategy that works on any unit group (the channels of a
    #: PruningSpace or the weights of a SparsitySpace) adds "sparsity"
    budget_kinds: ClassVar[tuple[str, ...]] = CHANNEL_KINDS

    @classmethod
    def check_budget(cls, kind: str, params: Mapping[str, Any]) -> None:
        """Refuse a budget kind this strategy cannot search (``params``: the parameters set, checked)."""
        if kind not in cls.budget_kinds:
            able = [n for n in strategy_names() if kind in _REGISTRY[n].budget_kinds]
            raise PrunerError(f"strategy {cls.name!r} prunes channels only and cannot search a {kind} budget; "
                              f"use one of {', '.join(able)}, or a {'/'.join(CHANNEL_KINDS)} budget")

    @classmethod
    def check_score(cls, score: str, params: Mapping[str, Any]) -> None:
        """Refuse a search score (``--score``, checked) that these parameters cannot work with."""

    @classmethod
    def check_setting(cls, params: Mapping[str, Any], *, find_analysis: AnalysisFinder | None = None) -> None:
        """Refuse parameters (set ones, type-checked) whose values make no sense together or name
        something that does not exist (e.g. a Sensitivity analysis: ``find_analysis``), before any
        data or model loads."""

    @classmethod
    def check_evaluations(cls, evals: int | None, params: Mapping[str, Any]) -> None:
        """Refuse a cap on evaluations (``--search-evals``, checked; None: no cap) too small for these
        parameters, before any data or model loads."""

    def __init__(self, **params: Any):
        self.params = {**self.defaults(), **check_params(self.name, self.param_specs, params)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {k: p.default for k, p in cls.param_specs.items()}

    @abstractmethod
    def search(self, ctx: SearchContext) -> Candidate:
        """Return the chosen candidate (it must meet the budget)."""


def best_meeting(candidates, budget) -> Candidate | None:
    """The highest-scoring of ``candidates`` (``score``: the run's ``--score``, top-1 by default) meeting
    ``budget`` (:meth:`~pruner.budget.Budget.feasible`; ties: the cheaper, then the first), or None.

    The one rule for "the best candidate": the search's fallback answer, a cancelled run's best, the
    CLI's progress and the studio's pages (their events read as candidates) all ask it. A candidate
    is anything with ``score`` and ``cost``; ``budget`` None counts every candidate (a cost of None
    then ranks as 0)."""
    feasible = [c for c in candidates if budget is None or budget.feasible(c.cost)]
    return max(feasible, key=lambda c: (c.score, -(c.cost or 0))) if feasible else None


def best_feasible(ctx: SearchContext) -> Candidate | None:
    return best_meeting(ctx.evaluator.candidates, ctx.budget)


def run_search(strategy: Strategy, ctx: SearchContext) -> Candidate:
    """Run ``strategy``; when it runs out of evaluations, fall back to the best feasible candidate.
    With a latency budget the answer is then re-timed (:func:`verify_latency`)."""
    try:
        chosen = strategy.search(ctx)
    except EvaluationBudgetExhausted:
        chosen = best_feasible(ctx)
        if chosen is None:
            raise PrunerError(
                f"strategy {strategy.name!r} used all {ctx.evaluator.max_evals} evaluations without a candidate "
                "that meets the budget; raise --search-evals"
            ) from None
    return verify_latency(ctx, chosen)


def verify_latency(ctx: SearchContext, chosen: Candidate) -> Candidate:
    """Re-time the answer of a latency-budget search, and if it misses the budget, the next most
    accurate feasible candidates (at most :data:`VERIFY_CANDIDATES` in all).

    Choosing the most accurate of many noisily timed candidates favours one whose latency was
    under-estimated (the winner's curse); a fresh measurement with three times the repeats
    catches it. The accepted candidate carries ``meta["verified_latency"]``. When none passes,
    the strategy's answer stands, with a warning in the log. Either way the answer carries
    ``meta["latency_check"]`` (:func:`latency_check`): how many were re-timed, the best ratio, whether one met.
    """
    if ctx.budget.kind != "latency":
        return chosen
    ev = ctx.evaluator
    ranked: dict[tuple, Candidate] = {tuple(chosen.counts): chosen}
    for c in sorted(ev.candidates, key=lambda c: -c.score):
        if ctx.feasible(c) and c.meta.get("model_version", 0) == ev.model_version:
            ranked.setdefault(tuple(c.counts), c)
    timed: list[float] = []
    for cand in list(ranked.values())[:VERIFY_CANDIDATES]:
        ratio = ev.remeasure_latency(cand.counts, repeats_factor=3)
        timed.append(ratio)
        ok = ctx.budget.feasible(ratio)
        ctx.emit("log", level="info" if ok else "warning",
                 message=f"latency check: candidate {cand.id} (search top-1 {cand.top1:.2f}%) timed at {cand.cost:.3f} "
                         f"of the original during the search, {ratio:.3f} now ({'meets' if ok else 'misses'} "
                         f"{ctx.budget.target:g} + {ctx.budget.tolerance:.0%})")
        if ok:
            cand.meta["verified_latency"] = ratio
            cand.meta["latency_check"] = latency_check(ctx.budget, timed, met=True)
            return cand
    ctx.emit("log", level="warning", message="no candidate re-timed within the latency budget; keeping the "
             "strategy's answer (is the machine busy? latency is only meaningful on a quiet one)")
    chosen.meta["latency_check"] = latency_check(ctx.budget, timed, met=False)
    return chosen


def latency_check(budget, timed: list[float], *, met: bool) -> dict:
    """What the re-timing of a latency-budget answer found (``summary["search"]["latency_check"]``); when none
    met the budget, ``advice`` is the one line the CLI and the page show with the model."""
    out = {"met": met, "checked": len(timed), "best_ratio": min(timed) if timed else None,
           "target": budget.target, "tolerance": budget.tolerance}
    if not met:
        best = f"{min(timed):.3f}" if timed else "—"
        out["advice"] = (f"no candidate met the latency budget when re-timed: the {len(timed)} most accurate "
                         f"candidates predicted to meet it timed at best {best} of the original (budget "
                         f"{budget.target:g} + {budget.tolerance:.0%}); the model kept is the search's answer, "
                         "which misses it. Time on a quiet machine, raise --search-evals, or loosen the budget")
    return out


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    _REGISTRY[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def make_strategy(name: str, **params: Any) -> Strategy:
    if name not in _REGISTRY:
        raise PrunerError(f"unknown strategy {name!r}; choose one of {', '.join(strategy_names())}")
    return _REGISTRY[name](**params)


def strategy_class(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise PrunerError(f"unknown strategy {name!r}; choose one of {', '.join(strategy_names())}")
    return _REGISTRY[name]


def validate_strategy(name: str, params: Mapping[str, Any] | None = None, budget_kind: str | None = None, *,
                      find_analysis: AnalysisFinder | None = None) -> dict[str, Any]:
    """Check a strategy name and its hyperparameters (and, with ``budget_kind``, that it can search
    that kind of budget) without any data or model (used by ``RunConfig``, the CLI and the studio's
    form); returns the set parameters, type-converted. ``find_analysis`` (``rundir.find_sensitivity``)
    says whether a path names a finished Sensitivity analysis."""
    cls = strategy_class(name)
    checked = check_params(name, cls.param_specs, params or {})
    cls.check_setting(checked, find_analysis=find_analysis)
    if budget_kind is not None:
        cls.check_budget(budget_kind, checked)
    return checked

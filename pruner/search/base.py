"""The search framework: a strategy proposes structures, the shared evaluator scores them.

Strategies only decide *where* to prune; every candidate goes through the same
:class:`~pruner.search.evaluator.Evaluator` (same budget solver, same recalibration, same
search subset), and ``max_evals`` caps real evaluations for all of them alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..errors import PrunerError
from .evaluator import Candidate, EvaluationBudgetExhausted, Evaluator

#: Relative slack when checking a measured (noisy) latency against its budget.
LATENCY_TOLERANCE = 0.05
#: After a latency-budget search, the most accurate feasible candidates re-timed (at most this many).
VERIFY_CANDIDATES = 5


@dataclass
class SearchContext:
    evaluator: Evaluator
    seed: int = 0
    scores: list[torch.Tensor] | None = None          # per-group channel importance of the base model
    emit: Callable[..., Any] = lambda kind, **fields: None   # writes run-directory events
    state: dict = field(default_factory=dict)          # strategy scratch space persisted for resume

    @property
    def space(self):
        return self.evaluator.space

    @property
    def budget(self):
        return self.evaluator.budget

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def feasible(self, cand: Candidate) -> bool:
        slack = LATENCY_TOLERANCE if self.budget.kind == "latency" else 1e-9
        return cand.cost <= self.budget.target * (1 + slack)


class Strategy(ABC):
    """Base class: subclasses set ``name`` and implement :meth:`search`."""

    name: ClassVar[str] = ""
    #: whether more evaluations can improve the result (uniform/global use exactly one)
    uses_evaluations: ClassVar[bool] = True

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults())
        if unknown:
            raise PrunerError(f"strategy {self.name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
                              f"it takes {', '.join(sorted(self.defaults())) or 'none'}")
        self.params = {**self.defaults(), **params}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {}

    @abstractmethod
    def search(self, ctx: SearchContext) -> Candidate:
        """Return the chosen candidate (it must meet the budget)."""


def best_feasible(ctx: SearchContext) -> Candidate | None:
    feasible = [c for c in ctx.evaluator.candidates if ctx.feasible(c)]
    return max(feasible, key=lambda c: (c.top1, -c.cost)) if feasible else None


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
    the strategy's answer stands, with a warning in the log.
    """
    if ctx.budget.kind != "latency":
        return chosen
    ev = ctx.evaluator
    limit = ctx.budget.target * (1 + LATENCY_TOLERANCE)
    ranked: dict[tuple, Candidate] = {tuple(chosen.counts): chosen}
    for c in sorted(ev.candidates, key=lambda c: -c.top1):
        if ctx.feasible(c) and c.meta.get("model_version", 0) == ev.model_version:
            ranked.setdefault(tuple(c.counts), c)
    for cand in list(ranked.values())[:VERIFY_CANDIDATES]:
        ratio = ev.remeasure_latency(cand.counts, repeats_factor=3)
        ok = ratio <= limit
        ctx.emit("log", level="info" if ok else "warning",
                 message=f"latency check: candidate {cand.id} (search top-1 {cand.top1:.2f}%) timed at {cand.cost:.3f} "
                         f"of the original during the search, {ratio:.3f} now ({'meets' if ok else 'misses'} "
                         f"{ctx.budget.target:g} + {LATENCY_TOLERANCE:.0%})")
        if ok:
            cand.meta["verified_latency"] = ratio
            return cand
    ctx.emit("log", level="warning", message="no candidate re-timed within the latency budget; keeping the "
             "strategy's answer (is the machine busy? latency is only meaningful on a quiet one)")
    return chosen


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

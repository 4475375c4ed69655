"""Budgets: what must remain of the original model, and turning an allocation into keep ratios.

A budget is ``flops=0.5`` (half the MACs remain), ``params=0.4`` or ``latency=0.6``. A
strategy proposes an *allocation*: a non-negative weight per group saying how unevenly
to prune (0 = leave the group alone). :func:`solve` finds the global scale ``s`` such that
pruning group ``g`` by ``s * allocation[g]`` (clipped to each group's limits) meets the
budget, by bisection: on the exact cost model for FLOPs and params, on a measured cost
for latency. Counts pass through the space's alignment (``round_to``), so every strategy's
structures are aligned and the bisection sees the cost of what will be built.

:func:`meet_measured` is the final guard: the physically pruned model's MACs or parameters
are *measured* (:func:`pruner.measure.count_cost`) and, should they exceed the budget, the
structure is re-solved on the measured cost, or the run fails with the floor it could reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch.nn as nn

from .errors import PrunerError
from .measure import count_cost
from .pruning.space import PruningSpace

#: budgets on what channel pruning removes
CHANNEL_KINDS = ("flops", "params", "latency")
#: ``sparsity=F``: a fraction F of the prunable weights set to zero (:mod:`pruner.pruning.sparsity`)
KINDS = CHANNEL_KINDS + ("sparsity",)
#: Relative slack when a *measured* latency is judged against its budget: the same structure
#: times a few percent apart from one measurement to the next, so a budget ``latency=0.6`` accepts
#: a measured ratio up to ``0.6 * 1.05``. MACs and parameters are exact and get no slack.
LATENCY_TOLERANCE = 0.05
#: Relative float rounding allowed on top of any tolerance (an exact cost equal to its target passes).
ROUNDING = 1e-9


def within(cost: float, limit: float, tolerance: float = 0.0) -> bool:
    """The one feasibility rule: ``cost <= limit * (1 + tolerance)`` (plus float rounding).
    :meth:`Budget.feasible` applies it to a run's budget; constrained RL to its own constraints."""
    return cost is not None and cost <= limit * (1.0 + tolerance + ROUNDING)


@dataclass(frozen=True)
class Budget:
    """``kind`` in flops/params/latency/sparsity; ``target``: fraction of the original that may remain.

    For ``sparsity`` the cost is the *density* (non-zero fraction of the prunable weights), so
    ``target`` is ``1 - F`` for the ``sparsity=F`` a user writes (:meth:`parse`, ``str`` and
    :attr:`value` speak in ``F``); every ``cost <= target`` comparison holds for all kinds.
    """

    kind: str
    target: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PrunerError(f"unknown budget kind {self.kind!r}; use one of {', '.join(KINDS)} (e.g. flops=0.5)")
        if self.kind == "sparsity" and (not (0.0 < self.target < 1.0) or math.isnan(self.target)):
            raise PrunerError(f"budget {self} is outside (0, 1): it is the fraction of the prunable weights set to "
                              "zero, e.g. sparsity=0.8")
        if not (0.0 < self.target < 1.0) or math.isnan(self.target):
            raise PrunerError(
                f"budget {self.kind}={self.target} is outside (0, 1): it is the fraction of the original "
                f"{self.kind} that remains, e.g. {self.kind}=0.5"
            )

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """Parse ``kind=fraction`` (e.g. ``flops=0.5``)."""
        if not isinstance(text, str) or "=" not in text:
            raise PrunerError(f"budget {text!r} must look like flops=0.5, params=0.4 or latency=0.6")
        kind, _, value = text.partition("=")
        try:
            target = float(value)
        except ValueError:
            raise PrunerError(f"budget value {value!r} is not a number; e.g. flops=0.5") from None
        kind = kind.strip().lower()
        if kind == "sparsity":
            return cls(kind, round(1.0 - target, 12))   # stored as the density that may remain
        return cls(kind, target)

    @property
    def value(self) -> float:
        """The number the user wrote: ``F`` of ``sparsity=F``, else :attr:`target`."""
        return round(1.0 - self.target, 12) if self.kind == "sparsity" else self.target

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"

    @property
    def tolerance(self) -> float:
        """The relative slack this budget's cost is judged with: :data:`LATENCY_TOLERANCE` for a
        measured latency, 0 for the exact MACs and params."""
        return LATENCY_TOLERANCE if self.kind == "latency" else 0.0

    def feasible(self, cost: float | None) -> bool:
        """Whether a candidate whose cost (fraction of the original ``kind``) is ``cost`` meets this
        budget: ``cost <= target * (1 + tolerance)`` (:func:`within`). The search, the job's summary
        and the studio all judge candidates with this; ``None`` (no cost) never meets it."""
        return cost is not None and within(cost, self.target, self.tolerance)

    def check_reachable(self, floor: float | None) -> None:
        """Refuse a target below ``floor``, the fraction of this budget's cost that remains with every
        group pruned as far as allowed (:func:`cost_floor`); ``None`` (unknown, e.g. latency) passes."""
        if floor is not None and floor > self.target and self.kind == "sparsity":
            most = math.floor((1.0 - floor) * 1000) / 1000
            raise PrunerError(
                f"budget {self} cannot be reached: zeroing every allowed weight leaves {floor:.3f} of the prunable "
                f"weights non-zero; set the sparsity to at most {most:g}, or allow more pruning (max prune fraction; "
                "2:4 reaches at most 0.5)")
        if floor is not None and floor > self.target:
            raise PrunerError(
                f"budget {self} cannot be reached: pruning every allowed channel still leaves {floor:.3f} of the "
                f"{self.kind}; set the target to at least {math.ceil(floor * 1000) / 1000:g}, or allow more pruning "
                "(max prune fraction, min channels)"
            )


@dataclass(frozen=True)
class Solution:
    keep_ratios: list[float]
    counts: list[int]
    achieved: float   # achieved fraction of the original cost (<= target unless infeasible)
    scale: float


CostFn = Callable[[list[int]], float]  # channel counts -> fraction of the original cost


def model_cost_fn(space: PruningSpace, kind: str) -> CostFn:
    """Exact relative MACs or params from the space's cost model."""
    if kind == "flops":
        return lambda counts: space.predict(counts=counts)[0] / space.base_macs
    if kind == "params":
        return lambda counts: space.predict(counts=counts)[1] / space.base_params
    if kind == "sparsity":
        if getattr(space, "kind", None) != "sparsity":
            raise PrunerError("a sparsity budget needs the weight space (pruner.pruning.sparsity.SparsitySpace)")
        return space.density
    raise PrunerError(f"no analytic cost model for {kind!r}: pass a measured cost function")


def floor_counts(space: PruningSpace) -> list[int]:
    """The group floor: each group's fewest allowed channels (or weights) — :meth:`PruningSpace.min_keep`
    (``max_prune``, ``min_channels``, ``round_to``). Every strategy's floor is this one."""
    return [space.min_keep(g) for g in space.groups]


def floor_ratios(space: PruningSpace) -> np.ndarray:
    """The group floor as keep ratios: :func:`floor_counts` over each group's size."""
    return np.array([c / g.channels for c, g in zip(floor_counts(space), space.groups)], dtype=float)


T = TypeVar("T")


def bisect(evaluate: Callable[[float], T], fits: Callable[[T], bool], good: float, bad: float, found: T, *,
           iterations: int, tol: float = 0.0) -> tuple[float, T]:
    """The one bisection of a budget search: narrow ``[good, bad]`` (either order) toward the boundary
    of a monotone rule, ``good`` the end where ``fits(evaluate(good))`` holds (its value ``found``,
    which the caller has already computed) and ``bad`` the end where it does not.

    Each of at most ``iterations`` steps evaluates the midpoint and moves the end of its kind there;
    it stops early once the ends are closer than ``tol``. Returns the last good point and its value.
    The solver's scale (:func:`solve`), a common keep (:func:`pruner.search.common.fill_to_budget`),
    a global threshold and a pruning step's scale are all found this way (``cost <= target``)."""
    for _ in range(iterations):
        mid = (good + bad) / 2
        value = evaluate(mid)
        if fits(value):
            good, found = mid, value
        else:
            bad = mid
        if abs(good - bad) < tol:
            break
    return good, found


def cost_floor(space: PruningSpace, kind: str) -> float | None:
    """The smallest fraction of the original MACs (``flops``) or params that pruning can reach:
    every group at its floor (``max_prune``, ``min_channels``); for ``sparsity`` the smallest density
    of a :class:`~pruner.pruning.sparsity.SparsitySpace`. ``None`` for latency (measured)."""
    if kind == "sparsity":
        return space.floor()
    if kind not in ("flops", "params"):
        return None
    return model_cost_fn(space, kind)(floor_counts(space))


def saving_rates(space: PruningSpace, kind: str, at: Sequence[int]) -> np.ndarray:
    """Per group, the fraction of the budget's cost saved per fraction of its channels (or, for
    ``sparsity``, its weights) pruned, around the structure ``at``, on the exact cost model; MACs
    stand in for a measured latency. A strategy that weighs damage against cost divides by these."""
    cost = model_cost_fn(space, kind if kind in ("flops", "params", "sparsity") else "flops")
    here = cost(list(at))
    out = np.zeros(len(space.groups))
    for gi, g in enumerate(space.groups):
        step = max(1, int(round(0.1 * g.channels)))
        counts = list(at)
        counts[gi] = at[gi] - step if at[gi] - step >= 1 else at[gi] + step
        out[gi] = abs(here - cost(counts)) / (step / g.channels)
    return np.maximum(out, 1e-6)


def ratios_for_scale(space: PruningSpace, allocation: Sequence[float], scale: float) -> list[float]:
    lo = floor_ratios(space).tolist()
    return [min(1.0, max(l, 1.0 - scale * a)) for l, a in zip(lo, allocation)]


def solve(space: PruningSpace, allocation: Sequence[float], budget: Budget, *,
          cost_fn: CostFn | None = None, iterations: int = 40) -> Solution:
    """Keep ratios meeting ``budget`` that prune groups in proportion to ``allocation``."""
    alloc = [float(a) for a in allocation]
    if len(alloc) != len(space.groups):
        raise PrunerError(f"allocation has {len(alloc)} entries but the model has {len(space.groups)} groups")
    if any(a < 0 or math.isnan(a) for a in alloc) or max(alloc, default=0.0) <= 0:
        raise PrunerError("an allocation needs non-negative weights with at least one positive")
    peak = max(alloc)
    alloc = [a / peak for a in alloc]
    cost = cost_fn or model_cost_fn(space, budget.kind)

    def evaluate(scale: float) -> tuple[list[float], list[int], float]:
        ratios = ratios_for_scale(space, alloc, scale)
        counts = space.counts(ratios)
        return ratios, counts, cost(counts)

    hi = 1.0 / min(a for a in alloc if a > 0)  # every allocated group at its floor
    ratios, counts, achieved = evaluate(hi)
    if achieved > budget.target:
        raise PrunerError(
            f"budget {budget} cannot be met with this allocation: pruning every allowed channel leaves "
            f"{achieved:.3f} of the {budget.kind}; raise the target or allow more pruning (max_prune)"
        )
    scale, (_ratios, counts, achieved) = bisect(evaluate, lambda r: r[2] <= budget.target, hi, 0.0,
                                                (ratios, counts, achieved), iterations=iterations, tol=1e-4)
    return Solution([c / g.channels for c, g in zip(counts, space.groups)], counts, achieved, scale)


@dataclass(frozen=True)
class MeasuredCheck:
    counts: list[int]    # the structure to build (the given one unless it had to be corrected)
    achieved: float      # measured fraction of the original MACs/params of that structure
    corrected: bool      # True when the given structure measured above the budget


def measured_cost_fn(space: PruningSpace, model: nn.Module, kind: str) -> CostFn:
    """Relative MACs or params *measured* on the physically pruned ``model`` (space's ranking)."""
    if kind not in ("flops", "params"):
        raise PrunerError(f"no measured cost for {kind!r} here: latency is measured by the evaluator")
    base = count_cost(model, space.input_size)

    def fn(counts: list[int]) -> float:
        pruned, _ = space.prune(model, counts)
        cost = count_cost(pruned, space.input_size)
        return cost.macs / base.macs if kind == "flops" else cost.params / base.params

    return fn


def meet_measured(space: PruningSpace, model: nn.Module, counts: Sequence[int], budget: Budget, *,
                  iterations: int = 14) -> MeasuredCheck:
    """Check that the physically pruned ``model`` meets a FLOPs/params ``budget`` on measured cost.

    If it does not (a cost model that missed a layer, say), re-solve with the same shape
    (each group pruned in proportion to what ``counts`` removes from it) on the measured cost;
    if even every group at its floor measures above the target, a :class:`PrunerError` says so
    and what the floor is. Latency budgets are returned unchanged (measured by the search).
    """
    counts = space.align(counts)
    if budget.kind == "sparsity":  # measured on the final weights after fine-tuning (the job: measure_sparsity)
        return MeasuredCheck(counts, space.density(counts), False)
    if budget.kind not in ("flops", "params"):
        return MeasuredCheck(counts, float("nan"), False)
    measured = measured_cost_fn(space, model, budget.kind)
    achieved = measured(counts)
    if achieved <= budget.target:
        return MeasuredCheck(counts, achieved, False)
    alloc = [1.0 - c / g.channels + 1e-3 for c, g in zip(counts, space.groups)]
    try:
        sol = solve(space, alloc, budget, cost_fn=measured, iterations=iterations)
    except PrunerError:
        floor = measured(space.counts([0.0] * len(space.groups)))
        raise PrunerError(
            f"budget {budget} cannot be met: the pruned model measures {achieved:.3f} of the original {budget.kind} "
            f"and the smallest allowed structure {floor:.3f}; raise the target above {floor:.3f} or allow more "
            "pruning (max_prune, min_channels, round_to)") from None
    return MeasuredCheck(sol.counts, sol.achieved, True)

"""Baseline strategies: uniform, global magnitude, and random search."""

from __future__ import annotations

from ..budget import KINDS, bisect, floor_counts
from ..errors import PrunerError
from .base import Param, SearchContext, Strategy, register
from .evaluator import Candidate


@register
class Uniform(Strategy):
    """Every group loses the same fraction of its channels (one evaluation)."""

    name = "uniform"
    budget_kinds = KINDS
    uses_evaluations = False

    def search(self, ctx: SearchContext) -> Candidate:
        sol = ctx.evaluator.solve([1.0] * len(ctx.space))
        cand = ctx.evaluator.evaluate(sol.counts, step=0, meta={"strategy": self.name})
        ctx.emit("step", step=0, best_top1=cand.top1, best_reward=cand.reward, mean_reward=cand.reward,
                 keep_ratios=cand.keep_ratios)
        return cand


@register
class GlobalMagnitude(Strategy):
    """Rank all channels of all groups together by importance normalised by the group mean
    (as Torch-Pruning's global pruning does) and drop the weakest until the budget is met."""

    name = "global"
    budget_kinds = KINDS
    uses_evaluations = False

    def search(self, ctx: SearchContext) -> Candidate:
        if ctx.scores is None:
            raise PrunerError("global pruning needs channel importance scores")
        space = ctx.space
        normed = [(s / s.mean().clamp_min(1e-12)).numpy() for s in ctx.scores]
        floors = floor_counts(space)
        cost = ctx.evaluator.cost_fn()

        def counts_at(threshold: float) -> list[int]:
            return [int(min(g.channels, max(f, int((n > threshold).sum())))) for g, f, n in zip(space.groups, floors, normed)]

        hi = float(max(n.max() for n in normed)) + 1.0
        top = counts_at(hi)
        if cost(top) > ctx.budget.target:
            raise PrunerError(f"budget {ctx.budget} cannot be met even at the per-group floors; raise the target")
        hi, counts = bisect(counts_at, lambda c: cost(c) <= ctx.budget.target, hi, 0.0, top,
                            iterations=40 if ctx.budget.kind != "latency" else 12)
        cand = ctx.evaluator.evaluate(counts, step=0, meta={"strategy": self.name, "threshold": hi})
        ctx.emit("step", step=0, best_top1=cand.top1, best_reward=cand.reward, mean_reward=cand.reward,
                 keep_ratios=cand.keep_ratios)
        return cand


#: proposals drawn (and, with --workers, scored in parallel) at a time; fixed, so that the
#: candidates do not depend on the number of workers
PROPOSAL_BATCH = 16


@register
class RandomSearch(Strategy):
    """Random allocations (how unevenly to prune), each solved to the budget; keep the best.

    A strong baseline: with the budget solver doing the hard part, random allocations
    already explore the useful space."""

    name = "random"
    budget_kinds = KINDS

    param_specs = {
        "samples": Param(50, int, "allocations tried when --search-evals sets no cap", low=1),
        "concentration": Param(1.0, float, "Dirichlet concentration of the allocations (small = more uneven)",
                               low=0.0, low_open=True),
    }

    def search(self, ctx: SearchContext) -> Candidate:
        rng = ctx.rng(1)
        n = ctx.evaluator.remaining if ctx.evaluator.remaining is not None else int(self.params["samples"])
        best = None
        n = max(1, n)
        for start in range(0, n, PROPOSAL_BATCH):  # proposed in batches: scored in parallel with --workers
            batch = []
            for _ in range(start, min(n, start + PROPOSAL_BATCH)):
                alloc = rng.dirichlet([float(self.params["concentration"])] * len(ctx.space)) + 1e-6
                batch.append(ctx.evaluator.solve(alloc.tolist()).counts)
            ctx.evaluator.prefetch(batch)
            for i, counts in enumerate(batch, start):
                cand = ctx.evaluator.evaluate(counts, step=i, meta={"strategy": self.name, "sample": i})
                if best is None or cand.score > best.score:
                    best = cand
                ctx.emit("step", step=i, best_top1=best.top1, best_reward=best.reward, mean_reward=cand.reward,
                         keep_ratios=best.keep_ratios)
        return best

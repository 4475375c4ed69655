"""The ``sensitivity`` baseline: measure how much each group hurts, prune the robust ones more.

1. probe: the unpruned model and every group pruned alone by ``probe_ratio`` of its channels,
   each an evaluation through the shared evaluator (so every probe counts against
   ``--search-evals``). When fewer evaluations are left than groups + 2, adjacent groups are
   probed together in chunks (each member gets the chunk's damage).
2. allocate: group ``g`` is pruned in proportion to ``(rate_g / (damage_g + floor)) ** power``,
   ``damage_g`` being the top-1 points lost by its probe and ``rate_g`` the budget's cost it saves
   per fraction pruned (``per_cost``: by default under params and sparsity budgets only; all
   equal otherwise);
3. solve that allocation onto the budget (the shared solver) and evaluate it: one candidate.

The probes and the allocation are :mod:`pruner.search.probes`, which ``rl``, ``constrained`` and
``optuna`` start from as well.
"""

from __future__ import annotations

from ..budget import KINDS
from .base import SearchContext, Strategy, register
from .evaluator import Candidate
from .probes import PROBE_PARAMS, allocate, measure_probes


@register
class SensitivityAllocation(Strategy):
    """Probe each group, prune in inverse proportion to its measured damage, solve onto the budget."""

    name = "sensitivity"
    budget_kinds = KINDS   # probes any unit group: channels, or a layer's weights (sparsity)

    param_specs = PROBE_PARAMS

    def search(self, ctx: SearchContext) -> Candidate:
        p = self.params
        probes = measure_probes(ctx, float(p["probe_ratio"]), max_probes=int(p["max_probes"]) or None, tag=self.name)
        alloc, how = allocate(ctx, probes, float(p["floor"]), float(p["power"]), p["per_cost"])
        sol = ctx.evaluator.solve(alloc.tolist())
        cand = ctx.evaluator.evaluate(sol.counts, step=probes.chunks + 1,
                                      meta={"strategy": self.name, "allocation": how})
        formula = "(cost saved" if how == "damage-per-cost" else "(1"
        ctx.emit("log", level="info", message=f"sensitivity: {probes.chunks} probes ({probes.evaluations} evaluations "
                 f"with the unpruned model), allocation {formula} / (damage + {p['floor']:g}))^{p['power']:g}: "
                 f"search top-1 {cand.top1:.2f}%")
        ctx.emit("step", step=probes.chunks + 1, best_top1=cand.top1, best_reward=cand.reward, mean_reward=cand.reward,
                 keep_ratios=cand.keep_ratios, probes=probes.summary())
        return cand

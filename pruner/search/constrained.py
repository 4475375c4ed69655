"""Pruning through constrained RL (Malik et al., arXiv 2110.08558), for a few hundred evaluations.

The budget is a *constraint* on a cost the user can evaluate, differentiable or not:
relative MACs or params (exact cost model), measured latency (PyTorch or ONNX Runtime, CPU
or CUDA, chosen batch size) or a user's Python function of the pruned ``nn.Module``. The
problem is a one-step constrained MDP (a contextual bandit: one action = one structure)

    max_θ  E_{a~π_θ}[ top1(a) ]   subject to   E_{a~π_θ}[ c_k(a) ] <= t_k   for each constraint k

solved by **Lagrangian relaxation with primal-dual updates** (the Lagrangian / RCPO family
of constrained-RL methods the paper builds on):

* **policy (primal)**: an independent Gaussian per group over the logit of its keep ratio,
  ``keep_g = floor_g + (1 - floor_g) * sigmoid(z_g)``, ``z ~ N(mu, diag(sigma^2))``; the
  action *is* the structure (no budget solver per sample, so samples may violate the
  constraint and the multiplier has something to teach). Each iteration draws ``batch``
  mirrored samples (``mu ± sigma * eps``), scores them with the shared evaluator and takes
  one Adam step of REINFORCE with the batch-mean baseline on ``mu`` and ``log sigma``.
* **reward**: ``top1/100 - sum_k lambda_k * max(0, c_k/t_k - 1)`` (a hinge on the relative
  violation, so being under budget earns nothing and the policy moves to the boundary).
* **multiplier (dual)**: projected dual ascent after every batch,
  ``lambda_k <- max(0, lambda_k + dual_lr * (mean_k c - t_k) / t_k)``.

The returned candidate meets every constraint (measured latencies within
``pruner.budget.LATENCY_TOLERANCE``): the best feasible sample; at the end the policy mean is projected
onto the constraints along its own pruning direction (``evaluator.solve`` with allocation
``1 - keep(mu)``) and scored too, which also guarantees a feasible answer when no sample was.

Costs (hyperparameter ``cost``):

``budget``   the run's budget kind (``evaluator.cost_fn()``; measured latency is memoised there)
``flops``    relative MACs, ``params`` relative parameters (exact cost model)
``latency``  measured latency relative to the unpruned model, with ``latency_backend``
             (``torch`` or ``ort``), ``latency_device`` (``auto`` = the run's device, ``cpu``,
             ``cuda``) and ``latency_batch`` (0 = the run's latency batch)
``python:FILE.py:FUNCTION``
             ``FUNCTION(model) -> float`` on the physically pruned model (eval mode, on the
             run's device). With ``cost_scale=relative`` (default) the value is the fraction
             of the original cost; with ``absolute`` it is divided by the function's value on
             the unpruned model.

The constraint's limit is ``limit`` (0 = the run's budget target). With a cost other than
``budget``, ``enforce_budget`` (default true) keeps the run's own budget as a second
constraint with its own multiplier, so the job's budget is met too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..budget import LATENCY_TOLERANCE, Budget, model_cost_fn, solve, within
from ..errors import PrunerError
from ..settings import DEVICES
from .base import Param, SearchContext, Strategy, register
from .common import Adam, floors, logit, sigmoid
from .costs import latency_cost, python_cost
from .evaluator import Candidate


# --------------------------------------------------------------------------- constraints


@dataclass
class Constraint:
    name: str
    fn: Callable[[list[int]], float]     # counts -> relative cost
    limit: float
    tolerance: float                      # relative slack when judging feasibility (measured costs)
    multiplier: float = 0.0
    is_budget: bool = False               # exactly the run's budget (cost kind and target)

    def feasible(self, value: float) -> bool:
        return within(value, self.limit, self.tolerance)


def build_constraints(ctx: SearchContext, params: dict) -> list[Constraint]:
    """The constraints of a run: the chosen cost (and, unless disabled, the run's own budget)."""
    budget = ctx.budget
    ev = ctx.evaluator
    spec = params["cost"]
    limit = float(params["limit"]) or budget.target
    run_tol = budget.tolerance
    if spec == "budget" or (spec == budget.kind and spec in ("flops", "params")):
        fn, tol, name, is_budget = ev.cost_fn(), run_tol, budget.kind, True
    elif spec in ("flops", "params"):
        fn, tol, name, is_budget = model_cost_fn(ctx.space, spec), 0.0, spec, False
    elif spec == "latency":
        fn, shared = latency_cost(ctx, params["latency_backend"], params["latency_device"], int(params["latency_batch"]))
        tol, is_budget = LATENCY_TOLERANCE, shared and budget.kind == "latency"
        name = "latency" if shared else f"latency[{params['latency_backend']},{params['latency_device']},batch={params['latency_batch'] or ev.settings.latency_batch}]"
    else:
        fn, tol, name, is_budget = python_cost(ctx, spec, params["cost_scale"]), 0.0, spec, False
    if params["tolerance"] is not None:
        tol = float(params["tolerance"])
    out = [Constraint(name, fn, limit, tol, float(params["multiplier"]), is_budget=is_budget and limit == budget.target)]
    implied = is_budget and limit <= budget.target  # a tighter limit on the run's own cost implies its budget
    if not implied and bool(params["enforce_budget"]):
        out.append(Constraint(str(budget), ev.cost_fn(), budget.target, run_tol, float(params["multiplier"]),
                              is_budget=True))
    return out


def project(ctx: SearchContext, keep: np.ndarray, constraints: list[Constraint]) -> list[int]:
    """Counts on the constraint boundary along the pruning direction of ``keep`` (allocation ``1 - keep``)."""
    alloc = np.clip(1.0 - np.asarray(keep, dtype=float), 0.0, None) + 1e-3
    if len(constraints) == 1 and constraints[0].is_budget:
        return ctx.evaluator.solve(alloc.tolist()).counts
    # several (or foreign) costs: bisect on the worst relative cost (<= 1 means all are met)
    combined = lambda counts: 0.5 * max(c.fn(counts) / c.limit for c in constraints)  # noqa: E731
    measured = ctx.budget.kind == "latency" or any(c.name.startswith(("latency", "python:")) for c in constraints)
    at_floors = ctx.space.counts(floors(ctx).tolist())
    if combined(at_floors) > 0.5:
        raise PrunerError("the constraints " + ", ".join(f"{c.name} <= {c.limit:g}" for c in constraints) +
                          " cannot be met even with every group at its floor; raise the limit or allow more "
                          "pruning (max_prune)")
    return solve(ctx.space, alloc.tolist(), Budget("flops", 0.5), cost_fn=combined,
                 iterations=14 if measured else 40).counts


# --------------------------------------------------------------------------- the strategy


@register
class ConstrainedRL(Strategy):
    name = "constrained"

    param_specs = {
        "cost": Param("budget", str, "the constrained cost: budget (the run's), flops, params, latency, or "
                      "python:FILE.py:FUNCTION (a function of the pruned model)",
                      choices=("budget", "flops", "params", "latency"), prefixes=("python:",)),
        "limit": Param(0.0, float, "the cost's upper limit (fraction of the original); 0 = the run's budget target",
                       low=0.0, high=1.0, high_open=True),
        "cost_scale": Param("relative", str, "python costs: relative (the function returns a fraction) or absolute",
                            choices=("relative", "absolute")),
        "enforce_budget": Param(True, bool, "with a cost other than the run's budget, keep the run's budget as a "
                                "constraint too"),
        "tolerance": Param(None, float, "relative slack when judging feasibility; empty = 5% for latency, 0 otherwise",
                           low=0.0, high=1.0, nullable=True),
        "latency_backend": Param("torch", str, "cost=latency: torch or ort (ONNX Runtime)", choices=("torch", "ort")),
        "latency_device": Param("auto", str, "cost=latency: auto (the run's device), cpu or cuda", choices=DEVICES),
        "latency_batch": Param(0, int, "cost=latency: batch size (0 = the run's latency batch)", low=0, high=4096),
        "iterations": Param(0, int, "policy updates; 0 = as many as --search-evals allows (20 without a cap)", low=0),
        "batch": Param(6, int, "samples per iteration (mirrored pairs; rounded up to even)", low=2, high=256),
        "lr": Param(0.1, float, "Adam step on the policy mean (logit units)", low=0.0, high=10.0, low_open=True),
        "sigma": Param(0.5, float, "initial exploration std (logit units)", low=0.0, high=5.0, low_open=True),
        "sigma_lr": Param(0.05, float, "Adam step on log sigma", low=0.0, high=1.0),
        "min_sigma": Param(0.05, float, "exploration std floor (logit units)", low=0.0, high=5.0, low_open=True),
        "multiplier": Param(1.0, float, "initial Lagrange multiplier", low=0.0),
        "dual_lr": Param(1.0, float, "dual ascent step", low=0.0),
        "init": Param("uniform", str, "initial policy mean: uniform (uniform pruning projected onto the budget) or "
                      "full", choices=("uniform", "full")),
    }

    # ------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Candidate:
        p = self.params
        ev = ctx.evaluator
        space = ctx.space
        n = len(space)
        constraints = build_constraints(ctx, p)
        lo = floors(ctx)
        batch = int(p["batch"]) + int(p["batch"]) % 2
        rng = ctx.rng(31)

        # initial mean: uniform pruning projected onto the constraints, or (almost) the full model
        if p["init"] == "uniform":
            counts0 = project(ctx, np.full(n, 0.5), constraints)
            keep0 = np.array([c / g.channels for c, g in zip(counts0, space.groups)])
        else:
            keep0 = np.full(n, 0.95)
        mu = logit((keep0 - lo) / np.maximum(1e-9, 1 - lo))
        log_sigma = np.full(n, math.log(float(p["sigma"])))
        opt_mu = Adam(n, float(p["lr"]))
        opt_sigma = Adam(n, float(p["sigma_lr"]))
        min_log_sigma = math.log(float(p["min_sigma"]))

        def keep_of(z: np.ndarray) -> np.ndarray:
            return lo + (1 - lo) * sigmoid(z)

        def feasible(cand: Candidate) -> bool:
            return all(c.feasible(c.fn(cand.counts)) for c in constraints)

        best: Candidate | None = None

        def consider(cand: Candidate) -> None:
            nonlocal best
            if feasible(cand) and (best is None or (cand.top1, -cand.cost) > (best.top1, -best.cost)):
                best = cand

        if p["init"] == "uniform" and (ev.remaining is None or ev.remaining >= 2):
            # the starting point (uniform pruning on the constraint boundary) is a candidate too
            consider(ev.evaluate(counts0, step=0, meta={"strategy": self.name, "initial_mean": True}))

        # with a cap, run while it leaves room for a batch and the final projection; the bound on
        # iterations only guards against a policy whose samples are all served from the memo
        max_iters = int(p["iterations"]) or (3 * max(1, ev.remaining // batch) if ev.remaining is not None else 20)
        it = 0
        while it < max_iters and (ev.remaining is None or ev.remaining >= batch + 1):
            sigma = np.exp(log_sigma)
            half = rng.standard_normal((batch // 2, n))
            eps = np.concatenate([half, -half])
            zs = mu + sigma * eps
            rewards, costs = [], [[] for _ in constraints]
            proposals = [space.counts(keep_of(z).tolist()) for z in zs]
            ev.prefetch(proposals)  # scored in parallel with --workers
            for k, counts in enumerate(proposals):
                values = [c.fn(counts) for c in constraints]
                lams = [c.multiplier for c in constraints]

                def reward_fn(cand: Candidate, values=values, lams=lams) -> float:
                    return cand.top1 / 100.0 - sum(l * max(0.0, v / c.limit - 1.0)
                                                   for l, v, c in zip(lams, values, constraints))

                cand = ev.evaluate(counts, step=it, reward_fn=reward_fn, meta={
                    "strategy": self.name, "iteration": it, "sample": k,
                    "costs": {c.name: v for c, v in zip(constraints, values)}})
                rewards.append(cand.reward)
                for j, v in enumerate(values):
                    costs[j].append(v)
                consider(cand)
            r = np.asarray(rewards)
            # primal: REINFORCE with the batch-mean baseline, one Adam step
            if r.std() > 1e-12:
                adv = (r - r.mean()) / r.std()
                g_mu = (adv[:, None] * eps / sigma).mean(0)
                g_ls = (adv[:, None] * (eps ** 2 - 1.0)).mean(0)
                mu = mu + opt_mu.step(g_mu)
                log_sigma = np.clip(log_sigma + opt_sigma.step(g_ls), min_log_sigma, math.log(5.0))
            # dual: projected ascent on each multiplier
            for j, c in enumerate(constraints):
                c.multiplier = max(0.0, c.multiplier + float(p["dual_lr"]) * (float(np.mean(costs[j])) - c.limit) / c.limit)
            first = constraints[0]
            ctx.emit("constrained", step=it, multiplier=first.multiplier, mean_cost=float(np.mean(costs[0])),
                     budget=first.limit, cost=first.name, best_feasible_top1=None if best is None else best.top1,
                     mean_reward=float(r.mean()), sigma=float(np.exp(log_sigma).mean()),
                     multipliers={c.name: c.multiplier for c in constraints},
                     mean_costs={c.name: float(np.mean(costs[j])) for j, c in enumerate(constraints)},
                     mean_keep_ratios=keep_of(mu).tolist())
            ctx.emit("step", step=it, best_top1=None if best is None else best.top1,
                     best_reward=float(r.max()), mean_reward=float(r.mean()),
                     keep_ratios=(best.keep_ratios if best is not None else keep_of(mu).tolist()))
            it += 1

        # the policy mean projected onto the constraints (always feasible by construction)
        if ev.remaining is None or ev.remaining >= 1:
            counts = project(ctx, keep_of(mu), constraints)
            cand = ev.evaluate(counts, step=it, meta={"strategy": self.name, "projected_mean": True,
                                                      "fallback": best is None})
            consider(cand)
        if best is None:
            raise PrunerError("constrained found no structure meeting the constraints "
                              f"({', '.join(f'{c.name} <= {c.limit:g}' for c in constraints)}); "
                              "raise the limit or --search-evals")
        best.meta["multipliers"] = {c.name: c.multiplier for c in constraints}
        return best

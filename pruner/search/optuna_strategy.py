"""The ``optuna`` baseline: a well-kept black-box optimiser over the same allocations.

The fair peer for a search that claims to earn its evaluations: Optuna's multivariate TPE (or
CMA-ES, ``sampler=cmaes``) at the same ``--search-evals``, through the same evaluator and solver.

1. warm start (``warm_start``): ``sensitivity`` measures the sensitivity strategy's probes
   (:func:`~pruner.search.probes.measure_probes`, every probe an evaluation counted
   against ``--search-evals``) and enqueues its allocation as the first trial
   (``Study.enqueue_trial``); ``uniform`` enqueues the even allocation; ``none`` starts cold.
2. a trial proposes one log-weight per group in ``[-log_range, 0]`` (widened to reach the warm start's
   smallest weight, so that trial 0 is exactly that allocation); the shared solver
   (:meth:`~pruner.search.evaluator.Evaluator.solve`) puts ``exp(weights)`` on the budget, so every
   proposal meets a FLOPs/params/sparsity budget exactly.
3. ``batch`` trials are asked at a time (TPE's constant liar keeps them apart), scored together
   through :meth:`~pruner.search.evaluator.Evaluator.prefetch` (Ray workers or scoring threads),
   then told one by one. The batch is fixed, so the candidates do not depend on ``--workers``.
4. a measured-latency budget cannot be solved exactly without timing every bisection step, so
   the trial also proposes the MACs fraction its structure is solved to (``macs``, a range around
   the warm start's), the structure's latency is timed, and the excess over the budget is the
   trial's constraint (``constraints_func``: TPE models feasibility). CMA-ES has no constraint
   handling in Optuna: an infeasible trial is told its score minus 100 × its relative excess.

The answer is the best trial meeting the budget (the run's ``--score``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna

from ..budget import KINDS, Budget, cost_floor, model_cost_fn
from ..errors import PrunerError
from .base import Param, SearchContext, Strategy, best_meeting, register
from .evaluator import Candidate
from .probes import allocate, measure_probes, probe_defaults

SAMPLERS = ("tpe", "cmaes")
WARM_STARTS = ("sensitivity", "uniform", "none")
#: consecutive batches that propose only structures already evaluated before the search gives up
STALE_BATCHES = 10
#: CMA-ES (no constraint handling): score points subtracted per unit of relative latency excess
LATENCY_PENALTY = 100.0
#: the MACs fraction a latency trial may solve to: this range around the warm start's
MACS_SPAN = (0.6, 1.4)


def weight_names(n: int) -> list[str]:
    """The trial parameter of each group's log-weight (stable across models of the same size)."""
    width = len(str(max(0, n - 1)))
    return [f"w{i:0{width}d}" for i in range(n)]


@register
class OptunaSearch(Strategy):
    """Optuna (TPE multivariate or CMA-ES) over per-group allocation weights, solved onto the budget."""

    name = "optuna"
    budget_kinds = KINDS

    param_specs = {
        "sampler": Param("tpe", str, "tpe: multivariate TPE (constant liar for batches); cmaes: CMA-ES starting at the "
                                     "warm start", choices=SAMPLERS),
        "warm_start": Param("sensitivity", str, "sensitivity: the sensitivity strategy's probes (counted against "
                                                "--search-evals) and its allocation as the first trial; uniform: the "
                                                "even allocation first; none: cold", choices=WARM_STARTS),
        "batch": Param(4, int, "trials asked, scored in parallel and told at a time (fixed, so that the candidates do "
                               "not depend on --workers)", low=1, high=256),
        "trials": Param(50, int, "trials when --search-evals sets no cap", low=1),
        "startup": Param(None, int, "TPE's random trials before it models (the warm start counts); empty = a quarter "
                                    "of the trials, at most 10", low=0, nullable=True),
        "log_range": Param(4.0, float, "each group's allocation weight lies in [exp(-log_range), 1]", low=0.0,
                           high=12.0, low_open=True),
        "sigma0": Param(None, float, "CMA-ES's initial step in log-weight; empty = log_range / 4", low=0.0,
                        low_open=True, nullable=True),
        "probe_ratio": Param(0.5, float, "warm_start=sensitivity: fraction of a group's channels removed in its probe",
                             low=0.0, high=1.0, low_open=True, high_open=True),
    }

    def search(self, ctx: SearchContext) -> Candidate:
        p = self.params
        ev, space = ctx.evaluator, ctx.space
        n = len(space)
        names = weight_names(n)
        span = float(p["log_range"])
        latency = ctx.budget.kind == "latency"

        first, offset = self._warm_start(ctx)
        if first:   # the range reaches the warm start, so that its first trial is exactly that allocation
            a = np.asarray(first[0][1], dtype=float)
            span = max(span, float(-np.log(np.maximum(a / a.max(), 1e-12)).min()) + 1e-9)
        macs_range = self._macs_range(ctx, first[0][1] if first else np.ones(n)) if latency else None
        # the warm start's trial parameters, once: CMA-ES's mean and the enqueued trial 0
        start = dict(zip(names, self._log_weights(first[0][1], span) if first else [0.0] * n))
        if macs_range is not None:
            start["macs"] = macs_range[2]
        dists = {k: optuna.distributions.FloatDistribution(-span, 0.0) for k in names}
        if macs_range is not None:
            dists["macs"] = optuna.distributions.FloatDistribution(macs_range[0], macs_range[1])

        total = ev.remaining if ev.remaining is not None else int(p["trials"])
        study = self._study(ctx, total, start, latency)
        if first:
            study.enqueue_trial(start, user_attrs={"warm_start": first[0][0]})

        mine: list[Candidate] = []
        told, stale = 0, 0
        capped = ev.remaining is not None   # capped: until the evaluations are spent (repeats are free)
        while ev.remaining > 0 if capped else told < total:
            k = min(int(p["batch"]), ev.remaining if capped else total - told)
            trials = [study.ask(dists) for _ in range(k)]
            proposals = [self._counts(ctx, t, names, macs_range is not None) for t in trials]
            ev.prefetch(proposals)
            fresh = 0
            for trial, counts in zip(trials, proposals):
                cand = self._tell(ctx, study, trial, counts, offset, latency)
                fresh += not cand.meta["cached"]
                told += 1
                mine.append(cand)
                best = best_meeting(mine, ctx.budget) or cand
                ctx.emit("step", step=offset + trial.number, best_top1=best.top1, best_reward=best.reward,
                         mean_reward=cand.reward, keep_ratios=best.keep_ratios)
            stale = 0 if fresh else stale + 1
            if stale >= STALE_BATCHES:
                ctx.emit("log", level="info", message=f"optuna: {STALE_BATCHES} batches proposed only structures "
                         "evaluated before; stopping early")
                break
        best = best_meeting(mine, ctx.budget) or best_meeting(ev.candidates, ctx.budget)
        if best is None:
            raise PrunerError(f"optuna: none of {told} trials met the budget {ctx.budget}; raise --search-evals "
                              "or the target")
        ctx.emit("log", level="info", message=f"optuna ({p['sampler']}, warm start {p['warm_start']}): {told} trials, "
                 f"best search top-1 {best.top1:.2f}% (trial {best.meta.get('trial', '-')})")
        return best

    # ------------------------------------------------------------------ pieces
    def _warm_start(self, ctx: SearchContext) -> tuple[list[tuple[str, np.ndarray]], int]:
        """The warm start (``[(label, allocation)]``, or none) and the steps its probes took: the
        sensitivity probes' allocation (:mod:`pruner.search.probes`, its defaults) or uniform."""
        p = self.params
        if p["warm_start"] == "sensitivity":
            probes = measure_probes(ctx, float(p["probe_ratio"]), tag=self.name)
            sens = probe_defaults()
            alloc, how = allocate(ctx, probes, float(sens["floor"]), float(sens["power"]), sens["per_cost"])
            return [(f"sensitivity ({how})", alloc)], probes.chunks + 1
        if p["warm_start"] == "uniform":
            return [("uniform", np.ones(len(ctx.space)))], 0
        return [], 0

    def _tell(self, ctx: SearchContext, study, trial, counts: list[int], offset: int, latency: bool) -> Candidate:
        """Score a trial's structure and tell the study its value: the search score, less a penalty
        for a latency over the budget under CMA-ES (TPE judges it as a constraint, ``excess``)."""
        p = self.params
        cand = ctx.evaluator.evaluate(counts, step=offset + trial.number, meta={
            "strategy": self.name, "sampler": p["sampler"], "trial": trial.number,
            **({"warm_start": trial.user_attrs["warm_start"]} if "warm_start" in trial.user_attrs else {}),
            **({"macs_target": trial.params["macs"]} if "macs" in trial.params else {})})
        excess = cand.cost - ctx.budget.target * (1.0 + ctx.budget.tolerance)
        trial.set_user_attr("excess", float(excess))
        value = cand.score
        if latency and p["sampler"] == "cmaes" and excess > 0:
            value -= LATENCY_PENALTY * excess / ctx.budget.target
        study.tell(trial, value)
        return cand

    @staticmethod
    def _log_weights(alloc: np.ndarray, span: float) -> list[float]:
        a = np.asarray(alloc, dtype=float)
        z = np.log(np.maximum(a / a.max(), math.exp(-span)))   # span reaches the warm start (search)
        return [float(v) for v in np.clip(z, -span, 0.0)]

    def _study(self, ctx: SearchContext, total: int, x0: dict, latency: bool) -> optuna.Study:
        p = self.params
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # multivariate TPE
            warnings.simplefilter("ignore", FutureWarning)   # CMA-ES's x0/sigma0: deprecated in 4.9, kept until 6.0
            if p["sampler"] == "cmaes":
                sigma = float(p["sigma0"]) if p["sigma0"] is not None else float(p["log_range"]) / 4.0
                sampler = optuna.samplers.CmaEsSampler(
                    x0=x0, sigma0=sigma, seed=ctx.seed, n_startup_trials=0,
                    independent_sampler=optuna.samplers.RandomSampler(seed=ctx.seed), warn_independent_sampling=False)
            else:
                startup = int(p["startup"]) if p["startup"] is not None else min(10, max(1, total // 4))
                sampler = optuna.samplers.TPESampler(
                    seed=ctx.seed, multivariate=True, n_startup_trials=startup, constant_liar=True,
                    constraints_func=(lambda t: [t.user_attrs.get("excess", 0.0)]) if latency else None)
        return optuna.create_study(direction="maximize", sampler=sampler)

    @staticmethod
    def _counts(ctx: SearchContext, trial: optuna.Trial, names: list[str], proxy: bool) -> list[int]:
        weights = [math.exp(trial.params[k]) for k in names]
        if proxy:
            return ctx.evaluator.solve(weights, budget=Budget("flops", float(trial.params["macs"]))).counts
        return ctx.evaluator.solve(weights).counts

    @staticmethod
    def _macs_range(ctx: SearchContext, alloc: np.ndarray) -> tuple[float, float, float]:
        """For a latency budget: the MACs fractions a trial may solve to, around the one the warm start's
        allocation (solved onto the measured latency, as the sensitivity strategy solves it) has."""
        space = ctx.space
        anchor = ctx.evaluator.solve([float(a) for a in alloc]).counts
        m0 = model_cost_fn(space, "flops")(anchor)
        low = max((cost_floor(space, "flops") or 0.0) * 1.001, m0 * MACS_SPAN[0], 1e-3)
        high = min(0.999, max(m0 * MACS_SPAN[1], low * 1.01))
        return low, high, float(min(max(m0, low), high))

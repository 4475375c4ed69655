"""RL-Pruner (arXiv 2411.06463), adapted for a few hundred evaluations.

The policy is a distribution over prunable groups: where the channels removed in a step
go. Pruning proceeds in ``steps`` slices towards the budget (the cost target of step ``t``
is interpolated between 1 and the budget). In each step:

1. ``inner_epochs`` times, sample noisy variants of the policy (multiplicative log-normal
   noise whose scale decays over steps; the unperturbed policy is always one sample),
2. turn each variant into a candidate: starting from the current structure, group ``g``
   is pruned ``s * p_g`` of its remaining channels, ``s`` found by bisection so the
   candidate lands exactly on the step's cost target; the shared evaluator scores it
   (BN recalibration, search-split top-1),
3. convert rewards into Q-values and advantages, and move the policy toward the
   advantage-weighted samples (step size ``lr``, each group's change clipped to
   ``clip``), as the paper moves it toward its best samples,
4. after the inner epochs, choose the next structure ε-greedily (best candidate with
   probability 1-ε, ε decaying to 0) — the pruned "slice" of the paper.

See ``docs/algorithms.md`` for the mapping to the paper and the differences.
"""

from __future__ import annotations


import numpy as np

from ..errors import PrunerError
from .base import Param, SearchContext, Strategy, register
from .evaluator import Candidate


def step_counts(ctx: SearchContext, current: list[int], policy: np.ndarray, target: float,
                iterations: int = 30) -> list[int] | None:
    """Prune ``current`` along ``policy`` until the relative cost reaches ``target``."""
    space = ctx.space
    cost = ctx.evaluator.cost_fn()
    floors = [space.min_keep(g) for g in space.groups]
    p = np.asarray(policy, dtype=float)
    p = p / p.max()

    def counts_at(s: float) -> list[int]:
        return [int(min(c, max(f, round(c * (1.0 - min(1.0, s * w)))))) for c, f, w in zip(current, floors, p)]

    hi = 1.0 / max(1e-6, p[p > 0].min())
    if cost(counts_at(hi)) > target:
        return None
    lo = 0.0
    if cost(counts_at(lo)) <= target:
        return list(current)
    for _ in range(iterations if ctx.budget.kind != "latency" else 10):
        mid = (lo + hi) / 2
        if cost(counts_at(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return counts_at(hi)


@register
class RLPruner(Strategy):
    name = "rl"

    param_specs = {
        "steps": Param(1, int, "pruning slices toward the budget (1 = one-shot to the budget; see docs)",
                       low=1, high=100),
        "samples": Param(0, int, "candidates per step; 0 = spread --search-evals over the steps", low=0),
        "inner_epochs": Param(3, int, "policy updates per step", low=1),
        "noise": Param(1.5, float, "std of the Gaussian exploration noise on the policy logits at the start", low=0.0),
        "noise_decay": Param(0.6, float, "noise multiplier per inner epoch", low=0.0, high=1.0),
        "min_noise": Param(0.2, float, "noise floor", low=0.0),
        "lr": Param(0.7, float, "step of the logits toward the advantage-weighted samples", low=0.0, high=1.0,
                    low_open=True),
        "clip": Param(1.0, float, "largest change of any logit in one update (policy ratio <= e^clip)", low=0.0,
                      low_open=True),
        "discount": Param(0.9, float, "weight of the lineage's earlier rewards in the Q-value", low=0.0, high=1.0),
        "epsilon": Param(0.0, float, "initial probability of the ε-greedy structure choice (decays to 0)",
                         low=0.0, high=1.0),
        "temperature": Param(0.5, float, "softmax temperature over standardised advantages", low=0.0, low_open=True),
        "prior": Param("uniform", str, "initial policy: uniform, or cost (groups with more MACs/params first)",
                       choices=("uniform", "cost")),
    }

    def _initial_policy(self, ctx: SearchContext) -> np.ndarray:
        n = len(ctx.space)
        prior = self.params["prior"]
        if prior == "uniform":
            return np.full(n, 1.0 / n)
        if prior == "cost":
            key = "params" if ctx.budget.kind == "params" else "macs"
            w = np.array([max(1, getattr(g, key)) / g.channels for g in ctx.space.groups], dtype=float)
            return w / w.sum()
        raise PrunerError(f"unknown rl prior {prior!r}; use uniform or cost")

    def search(self, ctx: SearchContext) -> Candidate:
        prm = self.params
        steps = int(prm["steps"])
        if steps < 1:
            raise PrunerError("rl needs steps >= 1")
        ev = ctx.evaluator
        samples = int(prm["samples"])
        if samples <= 0:
            samples = max(2, ev.remaining // steps) if ev.remaining is not None else 10
        inner = max(1, min(int(prm["inner_epochs"]), samples))
        per_epoch = [samples // inner + (1 if i < samples % inner else 0) for i in range(inner)]
        rng = ctx.rng(2)
        logits = np.log(self._initial_policy(ctx))
        current = [g.channels for g in ctx.space.groups]
        lineage_q = 0.0
        chosen: Candidate | None = None
        start_cost, target = 1.0, ctx.budget.target
        sigma = float(prm["noise"])
        update = 0
        for step in range(steps):
            step_target = start_cost - (start_cost - target) * (step + 1) / steps
            step_cands: list[tuple[Candidate, np.ndarray]] = []
            for epoch in range(inner):
                batch: list[tuple[Candidate, np.ndarray]] = []
                for k in range(per_epoch[epoch]):
                    # the unperturbed policy is always sampled once per step
                    variant = logits if (epoch == 0 and k == 0) else logits + sigma * rng.standard_normal(len(logits))
                    counts = step_counts(ctx, current, _softmax(variant), step_target)
                    if counts is None:
                        continue
                    cand = ev.evaluate(counts, step=update, meta={
                        "strategy": self.name, "slice": step, "inner_epoch": epoch, "sample": k, "sigma": sigma,
                        "step_target": step_target})
                    cand.meta["q"] = float(cand.top1 + float(prm["discount"]) * lineage_q)
                    batch.append((cand, variant))
                if not batch:
                    raise PrunerError(f"rl could not reach {step_target:.3f} of the {ctx.budget.kind} at step {step}; "
                                      "raise the budget or allow more pruning")
                logits = self._update(logits, batch + step_cands)
                step_cands.extend(batch)
                best_so_far = max(step_cands, key=lambda cv: cv[0].top1)[0]
                ctx.emit("step", step=update, slice=step, inner_epoch=epoch, policy=_softmax(logits).tolist(),
                         step_target=step_target, sigma=sigma, best_top1=best_so_far.top1,
                         best_reward=best_so_far.reward, mean_reward=float(np.mean([c.reward for c, _ in batch])),
                         keep_ratios=best_so_far.keep_ratios)
                update += 1
                sigma = max(float(prm["min_noise"]), sigma * float(prm["noise_decay"]))
            # ε-greedy choice of the slice to prune
            eps = float(prm["epsilon"]) * (1 - step / max(1, steps - 1)) if steps > 1 else 0.0
            ranked = sorted(step_cands, key=lambda cv: cv[0].top1, reverse=True)
            pick = ranked[0] if (rng.random() >= eps or len(ranked) == 1) else ranked[int(rng.integers(1, len(ranked)))]
            chosen = pick[0]
            current = list(chosen.counts)
            lineage_q = float(prm["discount"]) * lineage_q + chosen.top1 * (1 - float(prm["discount"]))
            ctx.emit("log", level="info", message=f"rl slice {step + 1}/{steps}: kept candidate {chosen.id} "
                     f"(search top-1 {chosen.top1:.2f}%, cost {chosen.cost:.3f}, epsilon {eps:.2f})")
        # the last slice lands on the budget; pick its best candidate (not the ε choice)
        final = [c for c in ev.candidates if c.meta.get("slice") == steps - 1 and ctx.feasible(c)]
        return max(final, key=lambda c: c.top1) if final else chosen

    def _update(self, logits: np.ndarray, batch: list[tuple[Candidate, np.ndarray]]) -> np.ndarray:
        """Move the policy logits toward the advantage-weighted samples of this step (clipped)."""
        q = np.array([c.meta["q"] for c, _ in batch], dtype=float)
        if len(q) < 2 or q.std() < 1e-9:
            return logits
        adv = (q - q.mean()) / q.std()
        w = np.exp((adv - adv.max()) / float(self.params["temperature"]))
        w = w / w.sum()
        target = sum(wi * v for wi, (_, v) in zip(w, batch))
        delta = np.clip(float(self.params["lr"]) * (target - logits), -float(self.params["clip"]), float(self.params["clip"]))
        new = logits + delta
        return new - new.max()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()

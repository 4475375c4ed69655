"""RL-Pruner (arXiv 2411.06463), adapted so that a few dozen evaluations count.

The policy is a Gaussian over per-group log-allocations ``z``: ``exp(z_g)`` says how hard group
``g`` is pruned relative to the others (the solver, or a pruning slice, turns it into channel
counts on the budget). A search:

0. **start** — where the policy's mean begins (``start``):
   ``probe`` (default) measures each group's sensitivity through the shared evaluator (every
   probe counts against ``--search-evals``; shared with the ``sensitivity`` strategy) and starts
   from the inverse-damage allocation ``1/(damage + floor)^power``; a path to a finished
   Sensitivity analysis (run directory or ``sensitivity.json``) of the same model, data,
   protocol and split does the same for free; ``uniform`` / ``cost`` start without probes.
   The run records which start it used (a ``prior`` event and each candidate's ``meta``).
1. per pruning step (``steps``; 1 = straight to the budget), ``inner_epochs`` times: evaluate
   the policy's mean and noisy variants of it. The noise has two parts: per-group Gaussian
   noise (std ``noise``, decaying by ``noise_decay`` per update to ``min_noise``) and a shared
   multiplier along the start's own direction (std ``sharpen``), which makes the whole
   allocation sharper or flatter — the direction in which noisy probes are most often wrong.
2. move the mean toward the reward-weighted variants (softmax of standardised rewards at
   ``temperature``; 0 = toward the best only, as the paper does), step size ``lr``; each
   group's allocation may change by at most a factor within ``[1 - clip, 1 + clip]`` per update
   (the paper's [0.75, 1.25] is ``clip=0.25``). With probability ε (``epsilon``, decaying
   linearly to 0 over the updates) the update moves toward a random sample instead (ε-greedy).
3. with ``steps > 1``, the step's best structure (ε-greedy) becomes the starting point of the
   next step; with ``finetune_batches > 0`` it is first distilled from the original model for
   that many batches, its channel importance recomputed (``importance``: keep, l1, taylor) and
   the evaluator switched to the trained weights (``evaluator.set_model``) — RL-Pruner's own
   recipe, ``preset=paper``.

The answer is the best feasible candidate of the last step; when that is the start's own
allocation, its ``meta["is_start"]`` is true and the run says so.
See ``docs/algorithms.md`` for the mapping to the paper and the differences.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
import torch.nn as nn

from ..budget import KINDS
from ..errors import PrunerError
from .base import Param, SearchContext, Strategy, register
from .evaluator import Candidate
from .sensitivity_strategy import Probes, inverse_damage, measure_probes, probes_from_analysis

#: RL-Pruner's own recipe (arXiv 2411.06463, section 3), scaled to what ``--search-evals`` allows.
PRESETS = {
    "paper": {
        "start": "uniform", "steps": 4, "inner_epochs": 2, "noise": 0.3, "sharpen": 0.0, "noise_decay": 1.0,
        "min_noise": 0.3, "lr": 0.1, "clip": 0.25, "temperature": 0.0, "epsilon": 0.4,
        "finetune_batches": 20, "importance": "taylor",
    },
}
IMPORTANCE = ("keep", "l1", "l2", "taylor")


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
    budget_kinds = KINDS

    @classmethod
    def check_budget(cls, kind, params) -> None:
        super().check_budget(kind, params)
        p = {**cls.defaults(), **PRESETS.get(params.get("preset") or "", {}), **params}
        if kind == "sparsity" and int(p["steps"]) > 1 and int(p["finetune_batches"]) > 0:
            raise PrunerError("rl's distillation between steps (finetune_batches > 0 with steps > 1) prunes channels "
                              "only; for a sparsity budget set finetune_batches=0 (or steps=1)")

    param_specs = {
        "preset": Param("", str, "RL-Pruner's own recipe: 'paper' sets the keys of PRESETS['paper'] that are not given",
                        choices=("", "paper")),
        "start": Param("probe", str, "start allocation: probe (measured sensitivity, counted against --search-evals), "
                                     "uniform, cost, or the path of a Sensitivity run directory / sensitivity.json"),
        "probe_ratio": Param(0.5, float, "fraction of a group's channels removed in its probe", low=0.0, high=1.0,
                             low_open=True, high_open=True),
        "max_probes": Param(0, int, "cap on probes (adjacent groups probed together); 0 = about 40% of the evaluations",
                            low=0),
        "floor": Param(0.5, float, "start allocation 1/(damage + floor)^power: noise floor in top-1 points",
                       low=0.0, low_open=True),
        "power": Param(1.0, float, "sharpness of the start allocation", low=0.0, high=8.0, low_open=True),
        "steps": Param(1, int, "pruning steps toward the budget (1 = straight to the budget)", low=1, high=100),
        "samples": Param(0, int, "candidates per step; 0 = spread the evaluations left over the steps", low=0),
        "inner_epochs": Param(4, int, "policy updates per step", low=1),
        "noise": Param(0.35, float, "std of the per-group Gaussian noise on the log-allocation", low=0.0),
        "sharpen": Param(0.5, float, "std of the shared sharper/flatter noise along the start's direction", low=0.0),
        "noise_decay": Param(0.6, float, "noise multiplier per update", low=0.0, high=1.0, low_open=True),
        "min_noise": Param(0.1, float, "noise floor", low=0.0),
        "lr": Param(0.7, float, "step of the mean toward the weighted samples", low=0.0, high=1.0, low_open=True),
        "clip": Param(0.5, float, "per-group allocation ratio per update within [1-clip, 1+clip]", low=0.0, high=1.0,
                      low_open=True, high_open=True),
        "temperature": Param(0.5, float, "softmax temperature over standardised rewards; 0 = move toward the best",
                             low=0.0),
        "epsilon": Param(0.0, float, "initial ε of the ε-greedy update target / slice choice (linear decay to 0)",
                         low=0.0, high=1.0),
        "finetune_batches": Param(0, int, "distillation batches between steps (steps > 1)", low=0),
        "finetune_lr": Param(0.01, float, "learning rate of that distillation", low=0.0, low_open=True),
        "importance": Param("keep", str, "channel importance after each distilled step", choices=IMPORTANCE),
    }

    def __init__(self, **params):
        preset = params.get("preset", "") or ""
        if preset and preset not in PRESETS:
            raise PrunerError(f"unknown rl preset {preset!r}; use {', '.join(PRESETS)} or leave it empty")
        given = dict(params)
        params = {**PRESETS.get(preset, {}), **given}
        super().__init__(**params)

    # ------------------------------------------------------------------ the start
    def _start(self, ctx: SearchContext) -> tuple[np.ndarray, np.ndarray, dict]:
        """Initial mean log-allocation, the 'sharpen' direction, and a record of the start."""
        p = self.params
        n = len(ctx.space)
        start = str(p["start"])
        if start == "uniform":
            return np.zeros(n), np.zeros(n), {"source": "uniform", "evaluations": 0}
        if start == "cost":
            key = "params" if ctx.budget.kind == "params" else "macs"
            w = np.log(np.array([max(1, getattr(g, key)) / g.channels for g in ctx.space.groups], dtype=float))
            return w - w.max(), w - w.mean(), {"source": "cost", "evaluations": 0}
        if start == "probe":
            cap = int(p["max_probes"]) or n
            left = ctx.evaluator.remaining
            if left is not None:
                if not int(p["max_probes"]):  # about 40% of the evaluations probe, the rest learn
                    cap = min(cap, max(1, (left - 1) * 2 // 5))
                cap = min(cap, left - 1 - max(2 * int(p["steps"]), left // 5))
                if cap < 1:
                    raise PrunerError(f"rl with start=probe needs more than {left} evaluations to probe and then learn "
                                      f"in {p['steps']} step(s); raise --search-evals, or use start=uniform")
            probes: Probes = measure_probes(ctx, float(p["probe_ratio"]), max_probes=cap, tag=self.name)
        else:
            probes = probes_from_analysis(ctx, start, float(p["probe_ratio"]))
        z = np.log(inverse_damage(probes, float(p["floor"]), float(p["power"])))
        return z, z - z.mean(), probes.summary()

    # ------------------------------------------------------------------ the search
    def search(self, ctx: SearchContext) -> Candidate:
        prm = self.params
        steps = int(prm["steps"])
        ev = ctx.evaluator
        teacher = copy.deepcopy(ev.model).eval() if (steps > 1 and int(prm["finetune_batches"]) > 0) else None
        z, direction, record = self._start(ctx)
        ctx.emit("prior", strategy=self.name, **record)
        ctx.emit("log", level="info", message=f"rl starts from {_describe(record)}")
        samples = int(prm["samples"])
        if ev.remaining is not None and ev.remaining < 2 * steps and samples <= 0:
            raise PrunerError(f"rl with steps={steps} needs at least {2 * steps} evaluations after its start "
                              f"({ev.remaining} left); raise --search-evals or lower steps")
        if samples <= 0:
            samples = max(2, ev.remaining // steps) if ev.remaining is not None else 10
        inner = max(1, min(int(prm["inner_epochs"]), samples))
        per_epoch = [samples // inner + (1 if i < samples % inner else 0) for i in range(inner)]
        total_updates = steps * inner
        rng = ctx.rng(2)
        current = [g.channels for g in ctx.space.groups]
        chosen: Candidate | None = None
        start_cost, target = 1.0, ctx.budget.target
        sigma, sharp = float(prm["noise"]), float(prm["sharpen"])
        update = 0
        start_key = None
        for step in range(steps):
            step_target = start_cost - (start_cost - target) * (step + 1) / steps
            step_cands: list[tuple[Candidate, np.ndarray]] = []
            for epoch in range(inner):
                batch: list[tuple[Candidate, np.ndarray]] = []
                proposals = []
                for k in range(per_epoch[epoch]):
                    if k == 0:  # the policy's own (unperturbed) action, every update
                        variant = z
                    else:
                        variant = z + sigma * rng.standard_normal(len(z)) + sharp * rng.standard_normal() * direction
                    counts = self._counts(ctx, current, variant, step_target, steps)
                    if counts is not None:
                        proposals.append((k, variant, counts))
                ev.prefetch([counts for _, _, counts in proposals])  # the update's samples in parallel (--workers)
                for k, variant, counts in proposals:
                    is_start = step == 0 and epoch == 0 and k == 0
                    cand = ev.evaluate(counts, step=update, meta={
                        "strategy": self.name, "slice": step, "inner_epoch": epoch, "sample": k, "sigma": sigma,
                        "step_target": step_target, "start_source": record["source"]})
                    if is_start:
                        start_key = (ev.model_version, tuple(cand.counts))
                    batch.append((cand, variant))
                if not batch:
                    raise PrunerError(f"rl could not reach {step_target:.3f} of the {ctx.budget.kind} at step {step}; "
                                      "raise the budget or allow more pruning")
                eps = float(prm["epsilon"]) * (1.0 - update / max(1, total_updates))
                z = self._update(z, batch + step_cands, eps, rng)
                step_cands.extend(batch)
                best_so_far = max(step_cands, key=lambda cv: cv[0].top1)[0]
                ctx.emit("step", step=update, slice=step, inner_epoch=epoch, policy=_softmax(z).tolist(),
                         step_target=step_target, sigma=sigma, epsilon=eps, best_top1=best_so_far.top1,
                         best_reward=best_so_far.reward, mean_reward=float(np.mean([c.reward for c, _ in batch])),
                         keep_ratios=best_so_far.keep_ratios)
                update += 1
                sigma = max(float(prm["min_noise"]), sigma * float(prm["noise_decay"]))
                sharp *= float(prm["noise_decay"])
            if step == steps - 1:
                break
            # ε-greedy choice of the structure the next step starts from
            eps = float(prm["epsilon"]) * (1.0 - step / max(1, steps - 1))
            ranked = sorted(step_cands, key=lambda cv: cv[0].top1, reverse=True)
            pick = ranked[0] if (rng.random() >= eps or len(ranked) == 1) else ranked[int(rng.integers(1, len(ranked)))]
            chosen = pick[0]
            current = list(chosen.counts)
            ctx.emit("log", level="info", message=f"rl step {step + 1}/{steps}: kept candidate {chosen.id} "
                     f"(search top-1 {chosen.top1:.2f}%, cost {chosen.cost:.3f}, epsilon {eps:.2f})")
            if teacher is not None:
                self._distil(ctx, current, teacher, seed=step)
        final = [c for c in ev.candidates if c.meta.get("slice") == steps - 1 and c.meta.get("strategy") == self.name
                 and c.meta.get("model_version") == ev.model_version and ctx.feasible(c)]
        answer = max(final, key=lambda c: (c.top1, -c.cost)) if final else chosen
        if answer is not None:
            answer.meta["is_start"] = bool(start_key == (answer.meta.get("model_version"), tuple(answer.counts)))
            answer.meta["start_source"] = record["source"]
            if answer.meta["is_start"]:
                ctx.emit("log", level="warning", message=f"rl's answer is its starting allocation ({_describe(record)}): "
                         f"no sampled variant scored higher with {ev.evaluations} evaluations")
        return answer

    def _counts(self, ctx: SearchContext, current: list[int], z: np.ndarray, step_target: float,
                steps: int) -> list[int] | None:
        alloc = np.exp(z - z.max())
        if steps == 1:  # straight onto the budget with the shared solver
            try:
                return ctx.evaluator.solve(np.maximum(alloc, 1e-9).tolist()).counts
            except PrunerError:
                return None
        return step_counts(ctx, current, alloc, step_target)

    def _update(self, z: np.ndarray, batch: list[tuple[Candidate, np.ndarray]], eps: float,
                rng: np.random.Generator) -> np.ndarray:
        """Move the mean toward the reward-weighted samples (ε-greedy: a random one), clipped per group."""
        r = np.array([c.top1 for c, _ in batch], dtype=float)
        if len(r) < 2:
            return z
        temperature = float(self.params["temperature"])
        if eps > 0 and rng.random() < eps:
            w = np.zeros(len(r))
            w[int(rng.integers(len(r)))] = 1.0
        elif temperature == 0 or r.std() < 1e-9:
            w = (r == r.max()).astype(float)
        else:
            adv = (r - r.mean()) / r.std()
            w = np.exp((adv - adv.max()) / temperature)
        w = w / w.sum()
        target = sum(wi * v for wi, (_, v) in zip(w, batch))
        clip = float(self.params["clip"])
        delta = float(self.params["lr"]) * (target - z)
        delta = delta - delta.mean()  # the allocation is scale-free: only relative changes count
        delta = np.clip(delta, np.log(1.0 - clip), np.log(1.0 + clip))
        return z + delta

    # ------------------------------------------------------------------ distillation between steps
    def _distil(self, ctx: SearchContext, counts: list[int], teacher: nn.Module, *, seed: int) -> None:
        """Distil the structure ``counts`` from ``teacher`` for ``finetune_batches`` batches, write the
        trained weights back into a full-size model whose removed channels are zero (it computes
        exactly the pruned model), recompute importance, and switch the evaluator to it."""
        from ..data import batches as make_batches
        from ..finetune import FinetuneConfig, finetune
        from ..pruning.importance import channel_scores

        ev, space = ctx.evaluator, ctx.space
        prm = self.params
        pruned = ev.build(counts)
        cfg = FinetuneConfig(epochs=1, max_batches_per_epoch=int(prm["finetune_batches"]), lr=float(prm["finetune_lr"]),
                             seed=ctx.seed * 1000 + seed)
        finetune(pruned, ev.data, cfg, teacher=teacher, device=ev.device)
        pruned.eval()
        index, removed = _index_map(space, ev.model, counts, ev.ranking)
        full = _embed(ev.model, pruned, index)
        crit = str(prm["importance"])
        if crit == "keep":
            scores = None
        else:
            tb = None
            if crit == "taylor":
                gen = torch.Generator().manual_seed(ctx.seed * 1000 + seed)
                tb = list(make_batches(ev.data.fit.subset(256), 64, mean=ev.data.mean, std=ev.data.std, device=ev.device,
                                       shuffle=True, generator=gen))
            scores = channel_scores(full, space, crit, batches=tb, seed=ctx.seed)
        ranking = []
        for gi, g in enumerate(space.groups):
            gone = list(removed.get(g.name, []))
            old = [int(i) for i in ev.ranking[gi] if int(i) not in set(gone)]
            kept = old if scores is None else sorted(old, key=lambda i: float(scores[gi][i]))
            ranking.append(torch.tensor(gone + kept, dtype=torch.long))
        ev.set_model(full, ranking)
        ctx.emit("log", level="info", message=f"rl: distilled the kept structure for {prm['finetune_batches']} batches "
                 f"(lr {prm['finetune_lr']:g}), importance {crit}; the evaluator now scores model version "
                 f"{ev.model_version}")


def _float_tensors(model: nn.Module):
    """The learned state: parameters and BatchNorm statistics (not structural buffers such as a
    shortcut's channel mask, which stay those of the full model)."""
    stats = [(n, t) for n, t in model.named_buffers() if n.endswith(("running_mean", "running_var"))]
    return [(n, t) for n, t in itertools.chain(model.named_parameters(), stats) if t.is_floating_point()]


def _index_map(space, model: nn.Module, counts: list[int], ranking) -> tuple[dict[str, torch.Tensor], dict]:
    """For every floating tensor of the pruned model, the flat indices of its entries in ``model``'s
    tensor of the same name: prune a copy whose entries are their own indices (exact in float32
    below 2**24 entries per tensor)."""
    tag = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        for name, t in _float_tensors(tag):
            if t.numel() >= 2 ** 24:
                raise PrunerError(f"distillation between rl steps cannot map {name} ({t.numel()} entries); "
                                  "use finetune_batches=0 for this model")
            t.copy_(torch.arange(t.numel(), dtype=torch.float32).view_as(t))
    pruned_tag, record = space.prune(tag, counts, ranking)
    return {n: t.detach().round().long().reshape(-1) for n, t in _float_tensors(pruned_tag)}, record.removed


def _embed(full: nn.Module, pruned: nn.Module, index: dict[str, torch.Tensor]) -> nn.Module:
    """A full-size copy of ``full`` holding ``pruned``'s weights at their places and zeros elsewhere
    (running variances 1), so that it computes the pruned model's function."""
    out = copy.deepcopy(full)
    src = dict(_float_tensors(pruned))
    with torch.no_grad():
        for name, t in _float_tensors(out):
            new = torch.ones_like(t) if name.endswith("running_var") else torch.zeros_like(t)
            new.view(-1)[index[name].to(t.device)] = src[name].detach().reshape(-1).to(t)
            t.copy_(new)
        # scalar integer buffers (BatchNorm's batch counters) follow the trained copy; structural
        # integer buffers (channel indices of a shortcut) stay those of the full model
        pb = dict(pruned.named_buffers())
        for name, t in out.named_buffers():
            if not t.is_floating_point() and name in pb and t.dim() == 0:
                t.copy_(pb[name])
    return out.eval()


def _describe(record: dict) -> str:
    src = record.get("source")
    if src == "probes":
        return (f"measured sensitivity ({record.get('probes')} probes at {record.get('ratio'):.0%} of a group's "
                f"channels, {record.get('evaluations')} evaluations)")
    if src in ("uniform", "cost"):
        return f"the {src} policy"
    return f"the sensitivity analysis {src}"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()

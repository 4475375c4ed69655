"""RL-Pruner (arXiv 2411.06463), adapted so that a few dozen evaluations count.

The policy is a Gaussian over per-group log-allocations ``z``: ``exp(z_g)`` says how hard group
``g`` is pruned relative to the others (the solver, or a pruning slice, turns it into channel
counts on the budget). Its exploration is low-dimensional (``policy=features``, default): a
sample is ``z + noise * Phi @ eps`` with ``Phi`` a handful of per-group *features* computed
from the pruning space (does the group span a residual add / concatenation, the spatial
resolution of its layer, its relative depth among the ordinary groups of that resolution,
their products, log channels, log MAC share), so ~30 evaluations learn a few directions that
matter instead of 30 free per-group numbers (``policy=groups``: per-group noise, the paper's).
A search:

0. **start** — where the policy's mean begins (``start``):
   ``sensitivity`` (default) is the ``sensitivity`` strategy's measurement and answer, through
   :mod:`pruner.search.probes` (:func:`measure_probes`, :func:`allocate`): the unpruned model and each group
   pruned alone (capped so that a fifth of ``--search-evals`` is left to learn), the allocation
   ``1 / (damage + floor) ** power`` (under params and sparsity budgets ``(cost saved / (damage +
   floor)) ** power``) solved onto the budget and evaluated; the structures are the
   heuristic's own, so a shared evaluation cache serves them. ``probe`` prunes *blocks* of groups through the shared evaluator (every probe
   counts against ``--search-evals``): each group that spans a residual add alone, the ordinary
   groups of each resolution in ``parts`` by depth, at the fraction the budget needs
   (``probe_ratio=0``: ``1 - target``; half that for the coupled groups), so damage rises above
   the noise of the search images. With an additive damage model ``d_g(p) = a_g p^k``
   (``k = 1 + 1/power``) each block's probe gives its ``a``; the start allocation is the
   model's optimum on the budget, ``(s_g / a_g)^power``, ``s_g`` being the group's cost saved per
   fraction pruned. A path to a finished Sensitivity analysis (run directory or
   ``sensitivity.json``) of the same model, data, protocol and split gives per-group damages for
   free; ``uniform`` / ``cost`` start without probes. The run records its start (a ``prior``
   event and each candidate's ``meta``).
1. per pruning step (``steps``; 1 = straight to the budget), ``inner_epochs`` updates: evaluate
   the policy's mean (when new), the **surrogate**'s proposal (``surrogate``, off by default: the
   damage model refitted by non-negative least squares to *every* candidate evaluated so far, its
   optimum solved onto the budget) and noisy variants in antithetic pairs ``z ± d``
   (``antithetic``; std ``noise``, shrunk by ``noise_decay`` after an update that found nothing
   better, down to ``min_noise``; plus a shared sharper/flatter factor along the start's
   direction, ``sharpen``). Every proposal is a structure not evaluated before.
2. move the mean toward the reward-weighted candidates of the step so far, the evaluated start
   included (softmax of standardised rewards at ``temperature``; 0 = toward the best only), step size ``lr`` (1 with temperature 0, the default: elitist, the mean *is*
   the best candidate); with ``clip > 0`` each group's allocation changes by a factor within
   ``[1 - clip, 1 + clip]`` per update. With probability ε (``epsilon``, decaying linearly to 0)
   it moves toward a random sample.
3. with ``steps > 1``, the step's best structure (ε-greedy) becomes the starting point of the
   next step; with ``finetune_batches > 0`` it is first distilled from the original model for
   that many batches, its channel importance recomputed (``importance``: keep, l1, taylor) and
   the evaluator switched to the trained weights (``evaluator.set_model``) — the closer reading of
   RL-Pruner, ``preset=paper`` (docs/algorithms.md: where it still differs from the authors' code:
   the ε rule, the reset rule, the teacher swap, the filter-count step).

The answer is the best feasible candidate of the last step; when that is the start's own
allocation, its ``meta["is_start"]`` is true and the run says so.
See ``docs/algorithms.md`` for the mapping to the paper and the differences.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..budget import KINDS, bisect, floor_counts, saving_rates
from ..errors import PrunerError
from .base import Param, SearchContext, Strategy, register
from .evaluator import Candidate
from .probes import Probes, allocate, measure_probes, probe_defaults, probes_from_analysis

#: RL-Pruner's own recipe (arXiv 2411.06463, section 3), scaled to what ``--search-evals`` allows.
PRESETS = {
    "paper": {
        "start": "uniform", "policy": "groups", "surrogate": False, "steps": 4, "inner_epochs": 2, "noise": 0.3,
        "antithetic": False,
        "sharpen": 0.0, "noise_decay": 1.0, "min_noise": 0.3, "lr": 0.1, "clip": 0.25, "temperature": 0.0,
        "epsilon": 0.4, "finetune_batches": 20, "importance": "taylor",
    },
}
IMPORTANCE = ("keep", "l1", "l2", "taylor")
POLICIES = ("features", "groups")


def with_preset(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the keys of their ``preset`` (:data:`PRESETS`) that they do not set: the one
    place a preset is merged (an unknown preset adds nothing; ``RLPruner`` refuses it)."""
    return {**PRESETS.get(params.get("preset") or "", {}), **params}


#: how many times a noisy sample is redrawn when it lands on a structure already evaluated
REDRAWS = 6


def step_counts(ctx: SearchContext, current: list[int], policy: np.ndarray, target: float,
                iterations: int = 30) -> list[int] | None:
    """Prune ``current`` along ``policy`` until the relative cost reaches ``target``."""
    space = ctx.space
    cost = ctx.evaluator.cost_fn()
    floors = floor_counts(space)
    p = np.asarray(policy, dtype=float)
    p = p / p.max()

    def counts_at(s: float) -> list[int]:
        return [int(min(c, max(f, round(c * (1.0 - min(1.0, s * w)))))) for c, f, w in zip(current, floors, p)]

    hi = 1.0 / max(1e-6, p[p > 0].min())
    deepest = counts_at(hi)
    if cost(deepest) > target:
        return None
    if cost(counts_at(0.0)) <= target:
        return list(current)
    _scale, counts = bisect(counts_at, lambda c: cost(c) <= target, hi, 0.0, deepest,
                            iterations=iterations if ctx.budget.kind != "latency" else 10)
    return counts


# ---------------------------------------------------------------------- group features and blocks
def group_resolution(model: nn.Module, space, device) -> np.ndarray:
    """log2 of the spatial size (H*W) of each group's root layer output (0 for a linear layer),
    from one forward pass of a blank image."""
    modules = dict(model.named_modules())
    area: dict[str, float] = {}
    hooks = []
    for g in space.groups:
        mod = modules.get(g.name)
        if mod is None:
            continue
        def hook(m, i, o, name=g.name) -> None:  # records the size, leaves the output alone
            area.setdefault(name, float(np.prod(o.shape[2:])) if o.dim() > 2 else 1.0)

        hooks.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *space.input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return np.log2(np.array([max(1.0, area.get(g.name, 1.0)) for g in space.groups]))



def group_layout(space, resolution: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: its stage (index of its resolution, largest first), whether it is coupled
    (spans a residual add, a concatenation or a depthwise pair), and its relative depth in [0, 1]
    among the ordinary groups of its stage (0.5 for coupled groups and lone ordinary ones)."""
    levels = sorted({round(float(r), 1) for r in resolution}, reverse=True)
    stage = np.array([levels.index(round(float(r), 1)) for r in resolution])
    coupled = np.array([bool(g.coupled) for g in space.groups])
    depth = np.full(len(space.groups), 0.5)
    for s in range(len(levels)):
        members = [i for i in range(len(stage)) if stage[i] == s and not coupled[i]]
        if len(members) > 1:
            for k, i in enumerate(members):
                depth[i] = k / (len(members) - 1)
    return stage, coupled, depth


FEATURES = ("coupled", "resolution", "coupled x resolution", "depth", "depth x resolution", "log channels",
            "log MAC share")


def group_features(space, resolution: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The policy's features (``FEATURES``, one column each) per group, centred and scaled to unit
    standard deviation, and their names; constant columns are dropped (the allocation is
    scale-free, so a constant does nothing)."""
    stage, coupled, depth = group_layout(space, resolution)
    res = resolution - resolution.mean()
    c = coupled.astype(float)
    d = np.where(coupled, 0.0, depth - 0.5)
    share = np.array([max(1, g.macs) for g in space.groups], dtype=float) / max(1, space.base_macs)
    cols = [c, res, c * res, d, d * res, np.log([g.channels for g in space.groups]), np.log(share)]
    out, names = [], []
    for name, col in zip(FEATURES, cols):
        col = np.asarray(col, dtype=float) - np.mean(col)
        sd = col.std()
        if sd > 1e-9:
            out.append(col / sd)
            names.append(name)
    return (np.stack(out, axis=1) if out else np.zeros((len(space.groups), 0))), names


def feature_blocks(space, resolution: np.ndarray, cap: int, parts: int) -> list[list[int]]:
    """Groups probed (and modelled) together, at most ``cap`` blocks: each coupled group alone and
    the ordinary groups of each resolution in ``parts`` runs by depth; coarser when that is too
    many (ordinary groups per resolution, then coupled groups per resolution too, then runs of
    adjacent groups)."""
    stage, coupled, _ = group_layout(space, resolution)
    n = len(space.groups)

    def ordinary(k: int) -> list[list[int]]:
        out = []
        for s in sorted(set(stage.tolist())):
            members = [i for i in range(n) if stage[i] == s and not coupled[i]]
            if members:
                edges = np.linspace(0, len(members), min(k, len(members)) + 1).round().astype(int)
                out += [members[a:b] for a, b in zip(edges[:-1], edges[1:]) if b > a]
        return out

    alone = [[i] for i in range(n) if coupled[i]]
    per_stage = [[i for i in range(n) if stage[i] == s and coupled[i]] for s in sorted(set(stage.tolist()))]
    for blocks in (alone + ordinary(parts), alone + ordinary(1), [b for b in per_stage if b] + ordinary(1)):
        if len(blocks) <= cap:
            return sorted(blocks, key=lambda b: b[0])
    cap = max(1, min(n, cap))
    edges = np.linspace(0, n, cap + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class DamageModel:
    """Top-1 points lost ``sum_g a_b(g) * p_g ** k`` (``p_g`` the fraction of group ``g`` pruned,
    one coefficient per block), fitted by non-negative least squares to evaluated candidates;
    its optimum on the budget prunes group ``g`` in proportion to ``(s_g / a_g) ** (1 / (k - 1))``."""

    def __init__(self, blocks: list[list[int]], n: int, k: float, floor: float, ratio: float):
        self.blocks, self.n, self.k = blocks, n, k
        sizes = np.array([len(b) for b in blocks], dtype=float)
        #: a block pruned by ``ratio`` loses at least ``floor`` points (the noise floor)
        self.min_a = floor / (sizes * ratio ** k)
        self.a = np.ones(len(blocks))

    def design(self, pruned: np.ndarray) -> np.ndarray:
        pk = np.maximum(pruned, 0.0) ** self.k
        return np.stack([pk[:, b].sum(axis=1) for b in self.blocks], axis=1)

    def fit(self, pruned: np.ndarray, damage: np.ndarray) -> "DamageModel":
        """Fit to rows of pruned fractions and their damage; candidates that lost less weigh more
        (the optimum lies among them), and no block is more robust than the noise floor allows."""
        from scipy.optimize import nnls  # imported on first use: it costs every CLI command about a second

        X = self.design(pruned)
        w = 1.0 / np.sqrt(1.0 + np.maximum(damage, 0.0) / 10.0)
        coef, _ = nnls(X * w[:, None], np.maximum(damage, 0.0) * w)
        self.a = np.maximum(coef, self.min_a)
        return self

    def per_group(self) -> np.ndarray:
        a = np.zeros(self.n)
        for coef, b in zip(self.a, self.blocks):
            a[b] = coef
        return a

    def allocation(self, rates: np.ndarray, power: float) -> np.ndarray:
        alloc = (rates / np.maximum(self.per_group(), 1e-9)) ** power
        return alloc / alloc.max()


#: rl's built-in start allocations (any other ``start`` is the path of a Sensitivity analysis)
START_NAMES = ("sensitivity", "probe", "uniform", "cost")


@register
class RLPruner(Strategy):
    name = "rl"
    budget_kinds = KINDS

    @classmethod
    def check_budget(cls, kind, params) -> None:
        super().check_budget(kind, params)
        p = cls.settings(params)
        if kind == "sparsity" and int(p["steps"]) > 1 and int(p["finetune_batches"]) > 0:
            raise PrunerError("rl's distillation between steps (finetune_batches > 0 with steps > 1) prunes channels "
                              "only; for a sparsity budget set finetune_batches=0 (or steps=1)")

    @classmethod
    def check_setting(cls, params, *, find_analysis=None) -> None:
        """``start`` is a start name or a finished Sensitivity analysis that exists (``find_analysis``;
        a name that is neither used to fail inside the job, after the model and data had loaded)."""
        start = str(cls.settings(params)["start"])
        if start in START_NAMES or find_analysis is None:
            return
        if find_analysis(start) is None:
            raise PrunerError(f"rl's start {start!r} is neither one of {', '.join(START_NAMES)} nor a finished "
                              "Sensitivity analysis (its run directory or sensitivity.json); give one of those")

    @classmethod
    def check_score(cls, score, params) -> None:
        start = str(cls.settings(params)["start"])
        if score != "top1" and start not in START_NAMES:
            raise PrunerError(f"a Sensitivity analysis measures top-1, so rl cannot start from one ({start}) while "
                              f"the search maximises {score}; use --score top1, or start=sensitivity to probe "
                              "with this score")

    param_specs = {
        "preset": Param("", str, "'paper': a closer reading of RL-Pruner (docs/algorithms.md says where it differs); "
                                 "sets the keys of PRESETS['paper'] that are not given",
                        choices=("", "paper")),
        "start": Param("sensitivity", str, "start allocation: sensitivity (the sensitivity strategy's per-group probes "
                                           "and allocation; its answer is the first mean), probe (blocks "
                                           "of groups probed and a damage model), uniform, cost, or the path of a "
                                           "Sensitivity run directory / sensitivity.json; probes count against "
                                           "--search-evals"),
        "policy": Param("features", str, "exploration: features (noise on a few per-group features) or groups "
                                         "(independent noise per group, the paper's)", choices=POLICIES),
        "surrogate": Param(False, bool, "each update also evaluates the optimum of a damage model fitted to every "
                                        "candidate so far (steps=1)"),
        "probe_ratio": Param(0.0, float, "fraction of a group's (block's) channels removed in its probe; 0 = the "
                                         "sensitivity strategy's default (start=sensitivity) or what the budget needs, "
                                         "1 - target, with coupled groups at half of it (start=probe)", low=0.0,
                             high=1.0, high_open=True),
        "max_probes": Param(0, int, "cap on probes; 0 = one per group with the learning evaluations kept "
                                    "(start=sensitivity), about a quarter of the evaluations (start=probe)", low=0),
        "parts": Param(2, int, "ordinary groups of one resolution are probed (start=probe) and modelled by the "
                               "surrogate in this many blocks by depth", low=1),
        "floor": Param(0.5, float, "top-1 points added to every probe's damage (start=sensitivity), or the least a "
                                   "block is assumed to lose at the probe ratio (the damage model): the noise floor",
                       low=0.0, low_open=True),
        "power": Param(1.0, float, "start=sensitivity: allocation 1 / (damage + floor)^power; damage model: "
                                   "allocation (s/a)^power of a*p^k, k = 1 + 1/power (1 = quadratic damage)",
                       low=0.0, high=8.0, low_open=True),
        "steps": Param(1, int, "pruning steps toward the budget (1 = straight to the budget)", low=1, high=100),
        "samples": Param(0, int, "candidates per step; 0 = spread the evaluations left over the steps", low=0),
        "inner_epochs": Param(4, int, "policy updates per step", low=1),
        "noise": Param(0.15, float, "per-group std of the exploration noise on the log-allocation", low=0.0),
        "antithetic": Param(True, bool, "noise samples come in mirrored pairs (z + d, z - d)"),
        "sharpen": Param(0.1, float, "std of the shared sharper/flatter noise along the start's direction", low=0.0),
        "noise_decay": Param(0.7, float, "noise multiplier after an update whose candidates did not beat the best "
                                         "so far (a success-based step size)", low=0.0, high=1.0, low_open=True),
        "min_noise": Param(0.05, float, "noise floor", low=0.0),
        "lr": Param(1.0, float, "step of the mean toward the weighted candidates (the start and every earlier "
                                "candidate of the step included, so 1 with temperature 0 is elitist)", low=0.0,
                    high=1.0, low_open=True),
        "clip": Param(0.0, float, "per-group allocation ratio per update within [1-clip, 1+clip] (the paper's "
                                  "0.25); 0 = unclipped, so an elitist update lands on the best candidate itself",
                      low=0.0, high=1.0, high_open=True),
        "temperature": Param(0.0, float, "softmax temperature over standardised rewards; 0 = move toward the best",
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
        super().__init__(**with_preset(params))

    @classmethod
    def settings(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters a search with ``params`` runs with: the defaults, then the preset's keys
        (:func:`with_preset`), then ``params``; the checks judge these before any search starts."""
        return {**cls.defaults(), **with_preset(params)}

    # ------------------------------------------------------------------ the start
    def _probe_ratio(self, ctx: SearchContext) -> float:
        r = float(self.params["probe_ratio"])
        if r > 0:
            return r
        if str(self.params["start"]) == "sensitivity":
            return float(probe_defaults()["probe_ratio"])
        return float(np.clip(1.0 - ctx.budget.target, 0.1, 0.9))

    def _reserve(self, left: int, least: int | None = None) -> int:
        """Evaluations a probing start leaves for learning: a fifth, and at least ``least``
        (default two per step)."""
        return max(2 * int(self.params["steps"]) if least is None else least, left // 5)

    def _start(self, ctx: SearchContext, resolution: np.ndarray, rates: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, dict, list[list[int]], np.ndarray | None]:
        """Initial mean log-allocation, the 'sharpen' direction, a record of the start, the
        blocks of the damage model, and (start=sensitivity) the heuristic's allocation itself."""
        p = self.params
        n = len(ctx.space)
        start = str(p["start"])
        power = float(p["power"])
        k = 1.0 + 1.0 / power
        ev = ctx.evaluator
        left = ev.remaining
        auto_cap = max(1, (left - 1) // 4) if left is not None else 2 * len(set(np.round(resolution, 1))) + n
        cap = int(p["max_probes"]) or auto_cap
        if start == "uniform":
            return np.zeros(n), np.zeros(n), {"source": "uniform", "evaluations": 0}, \
                feature_blocks(ctx.space, resolution, auto_cap, int(p["parts"])), None
        if start == "cost":
            key = "params" if ctx.budget.kind == "params" else "macs"
            w = np.log(np.array([max(1, getattr(g, key)) / g.channels for g in ctx.space.groups], dtype=float))
            return w - w.max(), w - w.mean(), {"source": "cost", "evaluations": 0}, \
                feature_blocks(ctx.space, resolution, auto_cap, int(p["parts"])), None
        if start == "sensitivity":
            # the sensitivity strategy's own measurement and allocation (pruner.search.probes owns them)
            cap = int(p["max_probes"]) or n
            if left is not None:
                one_step = int(p["steps"]) == 1  # then the heuristic's answer is evaluated, and one more can learn
                cap = min(cap, left - 1 - int(one_step) - self._reserve(left, 1 if one_step else None))
                if cap < 1:
                    raise PrunerError(f"rl with start=sensitivity needs more than {left} evaluations to probe and then "
                                      f"learn in {p['steps']} step(s); raise --search-evals, or use start=uniform")
            probes = measure_probes(ctx, self._probe_ratio(ctx), max_probes=cap, tag=self.name)
            alloc, how = allocate(ctx, probes, float(p["floor"]), power, probe_defaults()["per_cost"])
            record = {**probes.summary(), "allocation": how}
            z = np.log(alloc)
            return z, z - z.mean(), record, feature_blocks(ctx.space, resolution, auto_cap, int(p["parts"])), alloc
        if start == "probe":
            if left is not None:
                cap = min(cap, left - 1 - self._reserve(left))
                if cap < 1:
                    raise PrunerError(f"rl with start=probe needs more than {left} evaluations to probe and then learn "
                                      f"in {p['steps']} step(s); raise --search-evals, or use start=uniform")
            model, record, blocks = self._probed_blocks(ctx, resolution, cap, k)
        else:
            self.check_score(ctx.evaluator.settings.score, {"start": start})
            probes = probes_from_analysis(ctx, start, self._probe_ratio(ctx))
            blocks = [[i] for i in range(n)]
            model = DamageModel(blocks, n, k, float(p["floor"]), probes.ratio)
            model.a = np.maximum(np.maximum(probes.damage, 0.0) / probes.ratio ** k, model.min_a)
            record = probes.summary()
            blocks = feature_blocks(ctx.space, resolution, auto_cap, int(p["parts"]))
        z = np.log(model.allocation(rates, power))
        return z, z - z.mean(), record, blocks, None

    def _probed_blocks(self, ctx: SearchContext, resolution: np.ndarray, cap: int, k: float
                       ) -> tuple["DamageModel", dict, list[list[int]]]:
        """start=probe: at most ``cap`` blocks of groups probed at the budget's ratio (half of it for
        blocks of coupled groups), each block's damage coefficient from its own probe (the model
        reproduces every probe); the model, a record of the probes and the blocks."""
        p = self.params
        n = len(ctx.space)
        blocks = feature_blocks(ctx.space, resolution, cap, int(p["parts"]))
        ratio = self._probe_ratio(ctx)
        ratios = [ratio / 2 if all(ctx.space.groups[i].coupled for i in b) else ratio for b in blocks]
        probes: Probes = measure_probes(ctx, ratio, max_probes=len(blocks), tag=self.name, chunks=blocks,
                                        ratios=ratios)
        model = DamageModel(blocks, n, k, float(p["floor"]), ratio)
        dmg = np.array([max(0.0, probes.damage[b[0]]) for b in blocks])
        sizes = np.array([len(b) for b in blocks], dtype=float)
        model.a = np.maximum(dmg / (sizes * np.asarray(ratios) ** k), model.min_a)
        record = {**probes.summary(), "blocks": [[ctx.space.groups[i].name for i in b] for b in blocks],
                  "block_ratios": [round(r, 4) for r in ratios]}
        return model, record, blocks

    # ------------------------------------------------------------------ the search
    def search(self, ctx: SearchContext) -> Candidate:
        """The start, then per pruning step its updates and the next step's start (module docstring)."""
        run = self._prepare(ctx)
        for step in range(run.steps):
            step_cands = self._step(ctx, run, step)
            if step == run.steps - 1:
                break
            self._next_start(ctx, run, step, step_cands)
        return self._answer(ctx, run)

    def _prepare(self, ctx: SearchContext) -> "_Run":
        """The start (``prior`` event), the evaluations per update and the state the steps share."""
        prm = self.params
        steps = int(prm["steps"])
        ev = ctx.evaluator
        space = ctx.space
        n = len(space)
        teacher = copy.deepcopy(ev.model).eval() if (steps > 1 and int(prm["finetune_batches"]) > 0) else None
        resolution = group_resolution(ev.model, space, ev.device)
        try:
            at = ev.solve([1.0] * n).counts if ctx.budget.kind != "latency" else [g.channels for g in space.groups]
        except PrunerError:
            at = [g.channels for g in space.groups]
        rates = saving_rates(space, ctx.budget.kind, at)
        z, direction, record, blocks, alloc = self._start(ctx, resolution, rates)
        feats, names = group_features(space, resolution) if prm["policy"] == "features" else (np.eye(n), ["per group"])
        record = {**record, "policy": prm["policy"], "features": names}
        ctx.emit("prior", strategy=self.name, **record)
        ctx.emit("log", level="info", message=f"rl starts from {_describe(record)}")
        start_cand = None
        if alloc is not None and steps == 1:
            # the heuristic's answer, solved exactly as the sensitivity strategy solves it: the first mean
            start_cand = ev.evaluate(ev.solve(alloc.tolist()).counts, step=0, meta={
                "strategy": self.name, "slice": 0, "inner_epoch": -1, "sample": 0, "proposal": "mean",
                "allocation": record["allocation"], "sigma": float(prm["noise"]), "step_target": ctx.budget.target,
                "start_source": record["source"]})
            ctx.emit("log", level="info", message=f"rl: the {record['allocation']} allocation (the sensitivity strategy's "
                     f"answer) scores {start_cand.top1:.2f}%; learning from there")
        samples = int(prm["samples"])
        least = 1 if start_cand is not None else 2  # an evaluated start is already one candidate of the step
        if ev.remaining is not None and ev.remaining < least * steps and samples <= 0:
            raise PrunerError(f"rl with steps={steps} needs at least {least * steps} evaluations after its start "
                              f"({ev.remaining} left); raise --search-evals or lower steps")
        if samples <= 0:
            samples = max(least, ev.remaining // steps) if ev.remaining is not None else 10
        inner = max(1, min(int(prm["inner_epochs"]), samples))
        per_epoch = [samples // inner + (1 if i < samples % inner else 0) for i in range(inner)]
        rng = ctx.rng(2)
        damage_model = DamageModel(blocks, n, 1.0 + 1.0 / float(prm["power"]), float(prm["floor"]),
                                   self._probe_ratio(ctx))
        base_top1 = next((c.score for c in ev.candidates if c.meta.get("probe") == "base"
                          and c.meta.get("strategy") == self.name), None)
        return _Run(steps=steps, inner=inner, per_epoch=per_epoch, total_updates=steps * inner, rng=rng,
                    teacher=teacher, rates=rates, feats=feats, direction=direction, record=record,
                    damage_model=damage_model, base_top1=base_top1, z=z,
                    current=[g.channels for g in space.groups], start_cost=1.0, target=ctx.budget.target,
                    sigma=float(prm["noise"]), sharp=float(prm["sharpen"]),
                    use_surrogate=bool(prm["surrogate"]) and steps == 1, start_cand=start_cand,
                    start_key=(ev.model_version, tuple(start_cand.counts)) if start_cand is not None else None)

    def _step(self, ctx: SearchContext, run: "_Run", step: int) -> list[tuple[Candidate, np.ndarray]]:
        """One pruning step's ``inner_epochs`` updates toward its target; returns the step's candidates."""
        ev = ctx.evaluator
        step_target = run.start_cost - (run.start_cost - run.target) * (step + 1) / run.steps
        step_cands: list[tuple[Candidate, np.ndarray]] = []
        if step == 0 and run.start_cand is not None:  # the evaluated start takes part in every update (elitism)
            step_cands.append((run.start_cand, run.z.copy()))
        seen = {tuple(ctx.space.align(c.counts)) for c in ev.candidates if c.meta.get("model_version") == ev.model_version}
        for epoch in range(run.inner):
            self._epoch(ctx, run, step, epoch, step_target, seen, step_cands)
        return step_cands

    def _epoch(self, ctx: SearchContext, run: "_Run", step: int, epoch: int, step_target: float, seen: set,
               step_cands: list[tuple[Candidate, np.ndarray]]) -> None:
        """One update: evaluate its proposals, move the mean, emit the ``step`` event, decay the noise;
        the update's candidates are appended to ``step_cands``."""
        prm = self.params
        ev = ctx.evaluator
        batch: list[tuple[Candidate, np.ndarray]] = []
        proposals = self._proposals(ctx, run, epoch, step_target, seen)
        ev.prefetch([counts for _, _, counts in proposals])  # the update's samples in parallel (--workers)
        for k, (kind, variant, counts) in enumerate(proposals):
            is_start = step == 0 and epoch == 0 and kind == "mean" and run.start_key is None
            cand = ev.evaluate(counts, step=run.update, meta={
                "strategy": self.name, "slice": step, "inner_epoch": epoch, "sample": k, "proposal": kind,
                "sigma": run.sigma, "step_target": step_target, "start_source": run.record["source"]})
            if is_start:
                run.start_key = (ev.model_version, tuple(cand.counts))
            batch.append((cand, variant))
        if not batch and not step_cands:
            raise PrunerError(f"rl could not reach {step_target:.3f} of the {ctx.budget.kind} at step {step}; "
                              "raise the budget or allow more pruning")
        eps_greedy = float(prm["epsilon"]) * (1.0 - run.update / max(1, run.total_updates))
        best_before = max((c.score for c, _ in step_cands), default=None)
        run.z = self._update(run.z, batch + step_cands, eps_greedy, run.rng)
        step_cands.extend(batch)
        best_so_far = max(step_cands, key=lambda cv: cv[0].score)[0]
        improved = best_before is None or best_so_far.score > best_before
        ctx.emit("step", step=run.update, slice=step, inner_epoch=epoch, policy=_softmax(run.z).tolist(),
                 step_target=step_target, sigma=run.sigma, epsilon=eps_greedy, best_top1=best_so_far.top1,
                 best_reward=best_so_far.reward,
                 mean_reward=float(np.mean([c.reward for c, _ in batch])) if batch else best_so_far.reward,
                 keep_ratios=best_so_far.keep_ratios)
        run.update += 1
        if not improved:  # explore closer to the best once a step size stops finding better structures
            run.sigma = max(float(prm["min_noise"]), run.sigma * float(prm["noise_decay"]))
            run.sharp *= float(prm["noise_decay"])

    def _proposals(self, ctx: SearchContext, run: "_Run", epoch: int, step_target: float,
                   seen: set) -> list[tuple[str, np.ndarray, list[int]]]:
        """The update's new structures ``(kind, variant, counts)``: the policy's mean, the surrogate's
        optimum (steps=1) and noisy variants; each one not evaluated before (``seen`` is updated)."""
        prm = self.params
        proposals = []

        def propose(kind: str, variant: np.ndarray) -> bool:
            counts = self._counts(ctx, run.current, variant, step_target, run.steps)
            if counts is None:
                return False
            key = tuple(ctx.space.align(counts))
            if key in seen:
                return False
            seen.add(key)
            proposals.append((kind, variant, counts))
            return True

        want = run.per_epoch[epoch]
        propose("mean", run.z)  # the policy's own (unperturbed) action, unless evaluated already
        if run.use_surrogate and len(proposals) < want:
            sz = self._surrogate(ctx, run.damage_model, run.rates, run.base_top1)
            if sz is not None:
                propose("surrogate", sz)
        tries = 0
        feats, rng = run.feats, run.rng
        mirror = None
        while len(proposals) < want and tries < want * REDRAWS:
            tries += 1
            if mirror is not None:  # the other half of an antithetic pair
                d, mirror = -mirror, None
            else:
                eps = rng.standard_normal(feats.shape[1])
                noise = feats @ eps / np.sqrt(max(1, feats.shape[1])) if prm["policy"] == "features" else eps
                d = run.sigma * noise + run.sharp * rng.standard_normal() * run.direction
                if prm["antithetic"]:
                    mirror = d
            propose("noise", run.z + d)
        return proposals

    def _next_start(self, ctx: SearchContext, run: "_Run", step: int,
                    step_cands: list[tuple[Candidate, np.ndarray]]) -> None:
        """ε-greedy choice of the structure the next step starts from (distilled with a teacher)."""
        eps_greedy = float(self.params["epsilon"]) * (1.0 - step / max(1, run.steps - 1))
        ranked = sorted(step_cands, key=lambda cv: cv[0].score, reverse=True)
        pick = ranked[0] if (run.rng.random() >= eps_greedy or len(ranked) == 1) \
            else ranked[int(run.rng.integers(1, len(ranked)))]
        chosen = run.chosen = pick[0]
        run.current = list(chosen.counts)
        ctx.emit("log", level="info", message=f"rl step {step + 1}/{run.steps}: kept candidate {chosen.id} "
                 f"(search top-1 {chosen.top1:.2f}%, cost {chosen.cost:.3f}, epsilon {eps_greedy:.2f})")
        if run.teacher is not None:
            self._distil(ctx, run.current, run.teacher, seed=step)

    def _answer(self, ctx: SearchContext, run: "_Run") -> Candidate | None:
        """The best feasible candidate of the last step (else the last chosen one), marked when it is the start."""
        ev = ctx.evaluator
        record = run.record
        final = [c for c in ev.candidates if c.meta.get("slice") == run.steps - 1 and c.meta.get("strategy") == self.name
                 and c.meta.get("model_version") == ev.model_version and ctx.feasible(c)]
        answer = max(final, key=lambda c: (c.score, -c.cost)) if final else run.chosen
        if answer is not None:
            answer.meta["is_start"] = bool(run.start_key == (answer.meta.get("model_version"), tuple(answer.counts)))
            answer.meta["start_source"] = record["source"]
            if answer.meta["is_start"]:
                ctx.emit("log", level="warning", message=f"rl's answer is its starting allocation ({_describe(record)}): "
                         f"no sampled variant scored higher with {ev.evaluations} evaluations")
        return answer

    def _surrogate(self, ctx: SearchContext, model: DamageModel, rates: np.ndarray,
                   base_top1: float | None) -> np.ndarray | None:
        """The log-allocation of the damage model's optimum, refitted to every candidate of the current
        weights (probes included); None before there is a reference top-1 and enough candidates."""
        ev = ctx.evaluator
        cands = [c for c in ev.candidates if c.meta.get("model_version") == ev.model_version
                 and c.meta.get("strategy") == self.name]
        if base_top1 is None:
            base_top1 = max((c.score for c in cands if all(k >= 1.0 for k in c.keep_ratios)), default=None)
        if base_top1 is None or len(cands) < len(model.blocks) + 1:
            return None
        pruned = np.array([[1.0 - k for k in c.keep_ratios] for c in cands])
        damage = np.array([base_top1 - c.score for c in cands])
        model.fit(pruned, damage)
        return np.log(model.allocation(rates, float(self.params["power"])))

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
        r = np.array([c.score for c, _ in batch], dtype=float)
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
        if clip > 0:
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


@dataclass
class _Run:
    """What the steps of one rl search share: the fixed plan and the policy's moving state."""
    steps: int
    inner: int
    per_epoch: list[int]
    total_updates: int
    rng: np.random.Generator
    teacher: nn.Module | None
    rates: np.ndarray
    feats: np.ndarray
    direction: np.ndarray
    record: dict
    damage_model: DamageModel
    base_top1: float | None
    z: np.ndarray
    current: list[int]
    start_cost: float
    target: float
    sigma: float
    sharp: float
    use_surrogate: bool
    start_cand: Candidate | None = None
    chosen: Candidate | None = None
    update: int = 0
    start_key: tuple | None = None


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
    if src == "probes" and record.get("allocation"):  # start=sensitivity: the heuristic's own allocation
        return (f"the sensitivity strategy's {record.get('probes')} probes (groups pruned by {record.get('ratio'):.0%} "
                f"alone, or in chunks; {record.get('evaluations')} evaluations) and its {record['allocation']} "
                "allocation")
    if src == "probes":
        return (f"measured damage of {record.get('probes')} blocks of groups (at {record.get('ratio'):.0%} of their "
                f"channels, coupled groups at half that; {record.get('evaluations')} evaluations)")
    if src in ("uniform", "cost"):
        return f"the {src} policy"
    return f"the sensitivity analysis {src}"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()

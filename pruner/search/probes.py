"""Sensitivity probes: how much each group hurts when pruned alone, and the allocation they imply.

Several strategies start from them: ``sensitivity`` (its answer is their allocation solved onto the
budget), ``rl`` (``start=sensitivity`` / ``probe`` / an analysis), ``constrained`` (``init=sensitivity``)
and ``optuna`` (``warm_start=sensitivity``). They live here so that no strategy imports another.

* :func:`measure_probes`: the unpruned model and every group (or chunk of adjacent groups, when
  evaluations are short) pruned alone by a ratio, each an evaluation through the shared evaluator
  (every probe counts against ``--search-evals``);
* :func:`probes_from_analysis`: the same damages read from a finished Sensitivity analysis (free),
  after :func:`check_analysis` has matched its :func:`fingerprint` to this run;
* :func:`allocate`: the allocation ``(rate_g / (damage_g + floor)) ** power`` and its label;
  :data:`PROBE_PARAMS` are the ``sensitivity`` strategy's parameters and :func:`probe_defaults`
  their defaults, which the other strategies use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..budget import saving_rates
from ..errors import PrunerError
from .base import Param, SearchContext
from .evaluator import Evaluator

#: the ``sensitivity`` strategy's parameters: how it probes and allocates (its defaults are every
#: probing strategy's)
PROBE_PARAMS = {
    "probe_ratio": Param(0.5, float, "fraction of a group's channels removed in its probe", low=0.0, high=1.0,
                         low_open=True, high_open=True),
    "floor": Param(0.5, float, "top-1 points added to every damage (noise floor; a zero damage is not "
                               "infinitely robust)", low=0.0, low_open=True),
    "power": Param(1.0, float, "allocation = (cost saved / (damage + floor)) ** power (cost saved = 1 without per_cost)", low=0.0, high=8.0, low_open=True),
    "max_probes": Param(0, int, "cap on probes (adjacent groups probed together); 0 = one per group", low=0),
    "per_cost": Param("auto", str, "divide each group's damage by the budget's cost it saves: yes, no (damage "
                                   "alone), or auto = yes for params and sparsity budgets, no for flops and "
                                   "latency (docs/algorithms.md, sensitivity)", choices=("auto", "yes", "no")),
}


def probe_defaults() -> dict[str, Any]:
    """The default probe ratio, floor, power, probe cap and ``per_cost`` (:data:`PROBE_PARAMS`)."""
    return {k: p.default for k, p in PROBE_PARAMS.items()}


@dataclass
class Probes:
    """What a strategy knows about each group's sensitivity before it searches."""

    damage: np.ndarray            # top-1 points lost when the group is pruned by ``ratio`` alone
    saved: np.ndarray             # fraction of the budget's cost that probe saved
    ratio: float                  # fraction of channels removed in the probe
    base_top1: float
    source: str                   # "probes" (measured in this run) or the analysis' path
    evaluations: int = 0          # evaluations this run spent on them
    chunks: int = 0               # how many probes (== groups unless chunked)
    meta: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"source": self.source, "ratio": self.ratio, "evaluations": self.evaluations,
                "probes": self.chunks, "base_top1": self.base_top1,
                "damage": [round(float(d), 3) for d in self.damage]}


def _split(run: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(len(run), parts))
    edges = np.linspace(0, len(run), parts + 1).round().astype(int)
    return [run[a:b] for a, b in zip(edges[:-1], edges[1:]) if b > a]


def probe_chunks(coupled: list[bool], n_probes: int) -> list[list[int]]:
    """Group indices in at most ``n_probes`` chunks of adjacent groups probed together.

    Groups that span a residual add (``coupled``) are usually the most sensitive: they are
    probed alone while the probes allow it, and never share a probe with an ordinary group; the
    other probes are spread over the runs of adjacent ordinary groups in proportion to their length."""
    n = len(coupled)
    n_probes = max(1, min(n, n_probes))
    if n_probes >= n:
        return [[i] for i in range(n)]
    runs: list[list[int]] = []
    for i, c in enumerate(coupled):
        if runs and coupled[runs[-1][-1]] == c and (not c or len(runs[-1]) == 0):
            runs[-1].append(i)
        else:
            runs.append([i])
    singles = [r for r in runs if coupled[r[0]]]
    plain = [r for r in runs if not coupled[r[0]]]
    if len(singles) + len(plain) > n_probes:  # too few probes even for one per run: contiguous chunks
        return _split(list(range(n)), n_probes)
    left = n_probes - len(singles)
    total = sum(len(r) for r in plain) or 1
    share = [max(1, int(left * len(r) / total)) for r in plain]
    for k in sorted(range(len(plain)), key=lambda k: -len(plain[k])):  # hand out what rounding left
        if sum(share) >= left:
            break
        share[k] += 1
    chunks = singles + [c for r, m in zip(plain, share) for c in _split(r, m)]
    return sorted(chunks, key=lambda c: c[0])


def min_probe_evals() -> int:
    """Fewest evaluations a probing strategy can work with: the unpruned model, one probe, one answer."""
    return 3


def measure_probes(ctx: SearchContext, ratio: float, *, max_probes: int | None = None, tag: str = "",
                   chunks: list[list[int]] | None = None, ratios: list[float] | None = None) -> Probes:
    """Probe every group (or chunks of adjacent groups when evaluations are short) pruned by ``ratio``.

    ``max_probes`` caps the probes (default: all groups, or what the evaluation cap leaves after
    the unpruned model and one answer). ``chunks`` (lists of group indices probed together) replaces
    the adjacent chunks, and ``ratios`` gives each chunk its own fraction removed (``rl``'s blocks)."""
    if not 0.0 < ratio < 1.0:
        raise PrunerError(f"probe_ratio must be in (0, 1), got {ratio}")
    ev, space = ctx.evaluator, ctx.space
    n = len(space)
    budget_left = ev.remaining
    limit = n if max_probes is None else max(1, int(max_probes))
    if budget_left is not None:
        if budget_left < min_probe_evals():
            raise PrunerError(f"probing sensitivity needs at least {min_probe_evals()} evaluations "
                              f"({budget_left} left); raise --search-evals")
        limit = min(limit, budget_left - 2)
    if chunks is None:
        chunks = probe_chunks([bool(g.coupled) for g in space.groups], limit)
    elif len(chunks) > limit:
        raise PrunerError(f"{len(chunks)} probes do not fit in {limit} evaluations; raise --search-evals")
    per_chunk = [float(ratio)] * len(chunks) if ratios is None else [float(r) for r in ratios]
    full = [g.channels for g in space.groups]
    used0 = ev.evaluations
    probes = []
    for members, r in zip(chunks, per_chunk):
        counts = list(full)
        for gi in members:
            counts[gi] = space.counts([1.0 - r if i == gi else 1.0 for i in range(n)])[gi]
        probes.append(counts)
    ev.prefetch([full, *probes])  # all probes at once on --workers
    base = ev.evaluate(full, step=0, meta={"strategy": tag, "probe": "base"})
    damage, saved = np.zeros(n), np.zeros(n)
    for k, (members, counts, r) in enumerate(zip(chunks, probes, per_chunk)):
        cand = ev.evaluate(counts, step=0, meta={"strategy": tag, "probe": k, "groups": [space.groups[i].name for i in members],
                                                  "ratio": r})
        for gi in members:
            damage[gi] = base.score - cand.score
            saved[gi] = max(1e-6, 1.0 - cand.cost) / len(members)
        ctx.emit("step", step=k, probe=k, best_top1=cand.top1, best_reward=cand.reward, mean_reward=cand.reward,
                 keep_ratios=cand.keep_ratios)
    meta = {} if ratios is None else {"chunks": [list(c) for c in chunks], "chunk_ratios": per_chunk}
    return Probes(damage=damage, saved=saved, ratio=ratio, base_top1=base.score, source="probes",
                  evaluations=ev.evaluations - used0, chunks=len(chunks), meta=meta)


# ------------------------------------------------------------------ a finished Sensitivity analysis
def fingerprint(ev: Evaluator) -> dict:
    """What a sensitivity analysis must share with a search to be its prior: the weights,
    the data set and protocol, the search split's images, and the groups."""
    h = hashlib.sha1()
    for k, v in sorted(ev.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    d = hashlib.sha1()
    d.update(ev.data.search.x.cpu().contiguous().numpy().tobytes())
    d.update(ev.data.search.y.cpu().contiguous().numpy().tobytes())
    return {"model": h.hexdigest()[:16], "data": ev.data.name, "protocol": ev.data.protocol,
            "search_split": d.hexdigest()[:16],
            "groups": [[g.name, g.channels] for g in ev.space.groups]}


def check_analysis(analysis: dict, ev: Evaluator, where: str | Path) -> None:
    """Refuse (one line) an analysis of another model, data set, protocol or split."""
    theirs = analysis.get("fingerprint")
    if not theirs:
        raise PrunerError(f"the sensitivity analysis {where} does not record which model and data it measured "
                          "(made by an older version); run the analysis again")
    ours = fingerprint(ev)
    labels = {"groups": "pruning groups (another model)", "model": "model weights", "data": "data set",
              "protocol": "protocol", "search_split": "search split (another seed or data copy)"}
    for key in ("groups", "model", "data", "protocol", "search_split"):
        if theirs.get(key) != ours[key]:
            raise PrunerError(f"the sensitivity analysis {where} was made with different {labels[key]} than this run; "
                              "run the analysis with this run's model, data, protocol and seed, or use start=probe")


def probes_from_analysis(ctx: SearchContext, path: str | Path, ratio: float) -> Probes:
    """Damage at ``ratio`` per group, interpolated from a finished analysis (read by the context's
    ``read_analysis``: the search does not know where runs keep it); costs no evaluations."""
    if ctx.read_analysis is None:
        raise PrunerError(f"this search was given no way to read the sensitivity analysis {path}; run it as a job "
                          "(python -m pruner prune), or use start=sensitivity")
    analysis, f = ctx.read_analysis(path)
    check_analysis(analysis, ctx.evaluator, f)
    ratios = np.asarray(analysis["ratios"], dtype=float)
    order = np.argsort(ratios)
    damage, saved = [], []
    for row, srow in zip(analysis["top1"], analysis.get("macs_saved") or [[]] * len(analysis["top1"])):
        drop = analysis["base_top1"] - np.asarray(row, dtype=float)
        damage.append(float(np.interp(ratio, np.r_[0.0, ratios[order]], np.r_[0.0, drop[order]])))
        saved.append(float(np.interp(ratio, np.r_[0.0, ratios[order]], np.r_[0.0, np.asarray(srow, float)[order]]))
                     if len(srow) else ratio)
    return Probes(damage=np.asarray(damage), saved=np.maximum(1e-6, np.asarray(saved)), ratio=ratio,
                  base_top1=float(analysis["base_top1"]), source=str(f), evaluations=0, chunks=len(damage),
                  meta={"analysis_ratios": analysis["ratios"]})


#: Budgets under which ``per_cost=auto`` weighs damage against cost. Parameters per channel grow
#: about 4x per CNN stage (and a sparsity budget counts a layer's weights), so ignoring cost
#: misallocates by an order of magnitude; MACs per convolution are about equal across the stages
#: of ResNets and VGGs, and there the rates mainly push the groups that span a residual add, whose
#: damage rises faster than the square law assumes (measured: docs/algorithms.md, sensitivity).
PER_COST_KINDS = ("params", "sparsity")


def uses_cost(per_cost: str, kind: str) -> bool:
    """Whether ``per_cost`` (auto / yes / no) weighs damage against cost under a ``kind`` budget."""
    return per_cost == "yes" or (per_cost == "auto" and kind in PER_COST_KINDS)


def allocate(ctx: SearchContext, probes: Probes, floor: float, power: float, per_cost: str) -> tuple[np.ndarray, str]:
    """The sensitivity strategy's allocation from ``probes`` and its label: damage per unit of the
    budget's cost (rates at the unpruned model) when ``per_cost`` says so (:func:`uses_cost`), else
    damage alone."""
    if not uses_cost(per_cost, ctx.budget.kind):
        return inverse_damage(probes, floor, power), "inverse-damage"
    rates = saving_rates(ctx.space, ctx.budget.kind, [g.channels for g in ctx.space.groups])
    return inverse_damage(probes, floor, power, rates), "damage-per-cost"


def inverse_damage(probes: Probes, floor: float, power: float, rates: np.ndarray | None = None) -> np.ndarray:
    """Pruning allocation ``(rate / (max(damage, 0) + floor)) ** power`` (largest = 1).

    ``rates`` (:func:`~pruner.budget.saving_rates`): the budget's cost each group saves per fraction
    pruned. With them a group is pruned by the damage it costs per unit of budget it frees, the
    optimum when damage grows with the square of the fraction pruned; without them (all equal) the
    allocation is blind to cost, which misallocates whenever groups' costs differ (parameters grow
    4x per ResNet stage)."""
    r = np.ones(len(probes.damage)) if rates is None else np.asarray(rates, dtype=float) / np.mean(rates)
    a = (r / (np.maximum(probes.damage, 0.0) + floor)) ** power
    return a / a.max()

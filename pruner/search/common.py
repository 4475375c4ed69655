"""Small numerical pieces the RL strategies share: sigmoid/logit, filling the undecided groups to the
budget, and the small MLP their networks are built from."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from ..budget import bisect, floor_ratios


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def logit(p: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def fill_to_budget(space, cost_fn, target: float, keeps, free, *, iterations: int = 40):
    """Keep ratios with the groups in ``free`` at one common keep ``k`` (each clipped to its floor
    and 1) and every other group at ``keeps``, ``k`` the largest whose structure costs at most
    ``target`` (bisection: the cost grows with ``k``).

    Returns ``(counts, k, status)``: ``status`` is ``"ok"`` (on the budget), ``"under"`` (even
    ``k = 1`` costs less than ``target``), ``"over"`` (even every free group at its floor costs
    more) or ``"none"`` (no free group: ``keeps`` as they are).
    """
    lo_keep = floor_ratios(space)
    keeps = np.asarray(keeps, dtype=float)
    free = list(free)

    def at(k: float) -> list[int]:
        ratios = keeps.copy()
        for g in free:
            ratios[g] = min(1.0, max(lo_keep[g], k))
        return space.counts(ratios.tolist())

    if not free:
        return at(0.0), None, "none"
    top = at(1.0)
    if cost_fn(top) <= target:
        return top, 1.0, "under"
    bottom = at(0.0)
    if cost_fn(bottom) > target:
        return bottom, 0.0, "over"
    k, best = bisect(at, lambda counts: cost_fn(counts) <= target, 0.0, 1.0, bottom, iterations=iterations, tol=1e-5)
    return best, k, "ok"


def mlp(n_in: int, hidden: int, n_out: int, *, depth: int = 1, zero_last: bool = False) -> nn.Sequential:
    """A float64 tanh MLP, ``n_in -> hidden (x depth) -> n_out``, its layers initialised in order from
    torch's RNG (callers fork and seed it); ``zero_last``: the output layer starts at zero. PuRL's
    Q-network, constrained RL's actor and critics and joint's per-layer
    agent are built here."""
    sizes = [n_in] + [hidden] * depth
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(hidden, n_out))
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net.double()

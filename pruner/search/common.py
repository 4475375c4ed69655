"""Small numerical pieces the RL strategies share: a numpy Adam, sigmoid/logit, each group's floor,
and filling the undecided groups to the budget."""

from __future__ import annotations

import numpy as np

from .base import SearchContext


class Adam:
    """Plain Adam on a numpy vector (ascent), deterministic and dependency-free."""

    def __init__(self, size: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        mhat = self.m / (1 - self.b1 ** self.t)
        vhat = self.v / (1 - self.b2 ** self.t)
        return self.lr * mhat / (np.sqrt(vhat) + self.eps)


def floors(ctx: SearchContext) -> np.ndarray:
    """Smallest keep ratio each group may have."""
    return floors_of(ctx.space)


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
    lo_keep = floors_of(space)
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
    lo, hi, best = 0.0, 1.0, bottom
    for _ in range(iterations):
        mid = (lo + hi) / 2
        counts = at(mid)
        if cost_fn(counts) <= target:
            lo, best = mid, counts
        else:
            hi = mid
        if hi - lo < 1e-5:
            break
    return best, lo, "ok"


def floors_of(space) -> np.ndarray:
    """Smallest keep ratio each group of ``space`` may have (:func:`floors` for a bare space)."""
    return np.array([space.min_keep(g) / g.channels for g in space.groups], dtype=float)

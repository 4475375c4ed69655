"""Small numerical pieces the RL strategies share: a numpy Adam, sigmoid/logit, each group's floor."""

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
    return np.array([ctx.space.min_keep(g) / g.channels for g in ctx.space.groups], dtype=float)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def logit(p: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))

"""The agent of the ``joint`` strategy (:mod:`pruner.search.joint`): how a structure is drawn from the drift
model's state ``h_e`` and how likely a drawn structure is under the current policy.

:class:`LayerAgent` is the paper's per-layer MDP (Ganjdanesh et al., CVPR 2024: "each action of our agent
prunes one layer"). One episode walks the groups in the space's order; the state of step ``i`` is the GRU
state ``h_e``, the group's own features (position, width, share of the cost, floor), the previous actions
(the last keep ratio and the mean so far) and the cost left against the budget (the cost with the groups
decided so far and the rest unpruned, and with the rest at their floor, each minus the target, and the
share of the still-reducible cost that must go). The action is that group's keep ratio,
``floor + (1 - floor) * sigmoid(3 a)`` with ``a ~ N(tanh(mlp(h_e, s_i)), sigma_i^2)``, bounded (as AMC
bounds it) so that the groups after it can still meet the budget at their floor. The episode's keep
ratios then go through the shared solver (as pruning fractions ``1 - keep``) so the structure lands on the
budget exactly.

The agent of issue 14, a contextual bandit drawing all groups' allocation logits at once from one
Gaussian, was removed: from scratch on CIFAR-10 (ResNet-20, ``flops=0.5``, 12 + 3 epochs, one seed) it
reached 76.16 % report top-1 against this agent's 81.98 % (docs/results.md, "Joint from scratch").

:meth:`LayerAgent.draw` gives ``K`` structures (the first the policy mean) and :meth:`LayerAgent.log_prob`
their density (differentiable, for REINFORCE and the importance ratio of reused samples). A draw keeps
what :meth:`~LayerAgent.log_prob` needs to recompute its density later: the raw actions ``u`` and the step
features (they depend only on earlier keep ratios, not on the policy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..budget import bisect, floor_ratios, model_cost_fn, saving_rates
from .common import mlp, sigmoid

@dataclass
class Draw:
    """One structure drawn by the agent: raw actions ``u``, per-step features and the allocation (pruning
    fractions) the shared solver puts on the budget."""

    u: np.ndarray
    feats: np.ndarray
    allocation: list[float]


class LayerAgent(nn.Module):
    """The per-layer MDP (module docstring): a shared MLP ``mu_theta([h, s_i])``, bounded by ``tanh`` (so the
    policy updates cannot push the mean into the sigmoid's flat tails, where the noise no longer changes
    the structure: without the bound one epoch's updates collapsed every draw onto one structure), and a
    per-step ``log sigma``."""

    FEATURES = 10
    #: keep = floor + (1 - floor) * sigmoid(GAIN * a): at sigma 0.5 a group's pruned fraction moves by about
    #: +-50 %, as the allocation logits of the removed bandit did (without the gain, the sigmoid's slope of
    #: 1/4 kept the draws 4x closer together)
    GAIN = 3.0

    def __init__(self, space, budget, hidden: int, sigma: float):
        super().__init__()
        n = len(space.groups)
        kind = budget.kind if budget.kind in ("flops", "params") else "flops"   # MACs stand in for latency
        self._cost = model_cost_fn(space, kind)
        self._space = space
        self.target = float(budget.target)
        self.floor = floor_ratios(space)
        rates = saving_rates(space, kind, [g.channels for g in space.groups])
        widths = np.array([g.channels for g in space.groups], dtype=float)
        self.static = np.stack([np.arange(n) / max(1, n - 1), widths / widths.max(), rates / rates.sum(),
                                self.floor], axis=1)
        self.net = mlp(hidden + self.FEATURES, hidden, 1)
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()
        self.log_sigma = nn.Parameter(torch.full((n,), math.log(sigma), dtype=torch.float64))

    def cost(self, keeps) -> float:
        """Relative cost (MACs or params) of the keep ratios ``keeps`` on the space's cost model."""
        return self._cost(self._space.counts([float(k) for k in keeps]))

    def _step_features(self, i: int, keeps: list[float]) -> tuple[np.ndarray, float]:
        """Step ``i``'s features (decided keeps ``keeps[:i]``) and the largest keep that leaves the budget
        reachable with the later groups at their floor."""
        n = len(self.floor)
        done = list(keeps[:i])
        committed = self.cost(done + [1.0] * (n - i))
        lowest = self.cost(done + self.floor[i:].tolist())
        must = (committed - self.target) / max(committed - lowest, 1e-9)
        prev = done[-1] if done else 1.0
        mean = float(np.mean(done)) if done else 1.0
        f = np.concatenate([self.static[i], [prev, mean, committed - self.target, lowest - self.target, must,
                                              1.0 - i / n]])
        rest = self.floor[i + 1:].tolist()
        if self.cost(done + [1.0] + rest) <= self.target:
            return f, 1.0
        if lowest > self.target:
            return f, float(self.floor[i])
        top, _ = bisect(lambda k: self.cost(done + [k] + rest), lambda c: c <= self.target,
                        float(self.floor[i]), 1.0, 0.0, iterations=14)
        return f, top

    def _mu(self, h: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Policy means for step features ``feats`` (``... x n x F``) at state ``h``."""
        hh = h.expand(*feats.shape[:-1], h.shape[-1])
        return torch.tanh(self.net(torch.cat([hh, feats], -1)).squeeze(-1))

    def rollout(self, h: torch.Tensor, noise: np.ndarray | None) -> Draw:
        """One episode over the groups; ``noise`` (standard normal per step) or ``None`` for the mean."""
        n = len(self.floor)
        sigma = self.log_sigma.detach().exp().numpy()
        keeps: list[float] = []
        us, feats = np.zeros(n), np.zeros((n, self.FEATURES))
        for i in range(n):
            f, top = self._step_features(i, keeps)
            with torch.no_grad():
                mu = float(self._mu(h, torch.tensor(f, dtype=torch.float64).unsqueeze(0))[0])
            a = mu + (0.0 if noise is None else float(sigma[i] * noise[i]))
            keep = self.floor[i] + (1.0 - self.floor[i]) * float(sigmoid(np.asarray(self.GAIN * a)))
            keeps.append(float(min(keep, top)))
            us[i], feats[i] = a, f
        pruned = [max(0.0, 1.0 - k) for k in keeps]
        if max(pruned) <= 0:
            pruned = [1.0] * n
        return Draw(us, feats, pruned)

    def draw(self, h: torch.Tensor, rng: np.random.Generator, K: int) -> list[Draw]:
        n = len(self.floor)
        return [self.rollout(h, None)] + [self.rollout(h, rng.standard_normal(n)) for _ in range(K - 1)]

    def log_prob(self, h: torch.Tensor, U: torch.Tensor, feats: list) -> torch.Tensor:
        F = torch.tensor(np.stack(feats), dtype=torch.float64)
        return torch.distributions.Normal(self._mu(h, F), self.log_sigma.exp()).log_prob(U).sum(-1)


__all__ = ["Draw", "LayerAgent"]

"""PuRL (Gupta et al., "Learning to Prune Deep Neural Networks via Reinforcement Learning", 2020):
a reward at *every* pruning step, so the agent learns from short episodes.

MDP (one episode = ``steps`` pruning steps from the full model down to the budget):

* **state** ``s_t = (t / T, keep ratios of every group, current relative cost, 1)``;
* **action** ``a_t``: for every group, the fraction of its *current* channels to remove in
  this step, ``a_t,g = sigmoid(u_g)`` with ``u ~ N(actor(s_t), diag(sigma^2))``; the new keep
  ratios are ``keep * (1 - a_t)`` clipped to the group floors. On the last step the proposed
  structure is projected onto the budget along its own pruning direction (the shared
  budget solver with allocation ``1 - keep``), so every episode **ends on the budget**;
* **reward at every step** (each intermediate structure is a real candidate scored by the
  shared evaluator): ``r_t = acc_weight * top1_t / 100 - sparsity_weight * |cost_t - c*_t| / (1 - B)``
  where ``c*_t = 1 - (1 - B) (t + 1) / T`` is the step's point on a linear schedule from the
  full model (cost 1) to the budget ``B``: an accuracy term and a sparsity term that pays for
  being on schedule (neither behind nor ahead of it);
* **learning**: actor-critic. The actor is a small MLP (tanh) giving the mean of ``u``; a
  state-independent ``log sigma`` is learned with it; the critic ``V(s)`` is a second MLP.
  After every ``batch`` episodes: discounted per-step returns ``G_t``, advantages
  ``G_t - V(s_t)`` (normalised), one or more Adam steps on
  ``-A log pi(a|s) - entropy_bonus * H + value_weight * (V - G)^2``.

The actor's output bias starts at the per-step fraction that prunes uniformly to the budget in
``T`` steps, so the first episodes already land near sensible structures. The last episode
is greedy (``sigma = 0``). The returned candidate is the best (top-1) feasible *final* structure of
an episode (an intermediate one only if no episode finished).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ..errors import PrunerError
from .base import Param, SearchContext, Strategy, register
from .common import logit
from .evaluator import Candidate


class _MLP(nn.Module):
    def __init__(self, n_in: int, n_out: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.net(x)


@register
class PuRL(Strategy):
    name = "purl"

    param_specs = {
        "steps": Param(3, int, "pruning steps per episode (T); the last lands on the budget", low=1, high=20),
        "episodes": Param(0, int, "0 = as many as --search-evals allows (20 without a cap)", low=0),
        "batch": Param(2, int, "episodes per policy update", low=1, high=64),
        "updates": Param(4, int, "Adam steps per update", low=1, high=100),
        "lr": Param(0.01, float, "Adam learning rate (actor and critic)", low=0.0, high=1.0, low_open=True),
        "hidden": Param(32, int, "hidden units of the actor and critic MLPs", low=1, high=1024),
        "sigma": Param(0.4, float, "initial exploration std of the action logits", low=0.0, high=5.0, low_open=True),
        "min_sigma": Param(0.05, float, "exploration std floor", low=0.0, high=5.0, low_open=True),
        "gamma": Param(0.9, float, "discount of the per-step returns", low=0.0, high=1.0),
        "acc_weight": Param(1.0, float, "weight of top1/100 in the step reward", low=0.0),
        "sparsity_weight": Param(0.5, float, "weight of the off-schedule penalty in the step reward", low=0.0),
        "entropy_bonus": Param(0.0, float, "weight of the policy's entropy in the loss", low=0.0),
        "value_weight": Param(0.5, float, "weight of the critic's loss", low=0.0),
    }

    # ------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Candidate:
        p = self.params
        ev = ctx.evaluator
        space = ctx.space
        n = len(space)
        T = int(p["steps"])
        B = ctx.budget.target
        cost_fn = ev.cost_fn()
        rng = ctx.rng(47)
        n_state = n + 3

        # networks: initialised from the seed, isolated from torch's global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed) * 1000 + 47)
            actor = _MLP(n_state, n, int(p["hidden"])).double()
            critic = _MLP(n_state, 1, int(p["hidden"])).double()
        uniform_keep = np.array(ev.solve([1.0] * n).keep_ratios)
        per_step = 1.0 - float(np.clip(uniform_keep.mean(), 1e-3, 1.0)) ** (1.0 / T)
        with torch.no_grad():
            actor.net[-1].weight.mul_(0.1)
            actor.net[-1].bias.fill_(float(logit(np.array([per_step]))[0]))
        log_sigma = nn.Parameter(torch.full((n,), math.log(float(p["sigma"])), dtype=torch.float64))
        opt = torch.optim.Adam([*actor.parameters(), *critic.parameters(), log_sigma], lr=float(p["lr"]))
        min_log_sigma = math.log(float(p["min_sigma"]))

        def state(t: int, keep: np.ndarray, cost: float) -> np.ndarray:
            return np.concatenate([[t / T], keep, [cost, 1.0]])

        best: Candidate | None = None
        buffer: list[list[tuple[np.ndarray, np.ndarray, float]]] = []   # episodes of (state, u, reward)
        # with a cap, run while an episode fits; the bound only guards against episodes served from the memo
        max_eps = int(p["episodes"]) or (3 * max(1, ev.remaining // T) if ev.remaining is not None else 20)
        episode = 0
        while episode < max_eps and (ev.remaining is None or ev.remaining >= T):
            # The episodes until the next policy update run side by side, step by step: each step's
            # structures are proposed together (scored in parallel with --workers; the order, and so
            # the candidates, do not depend on the number of workers). The last episode is greedy
            # and alone, once only one more episode fits the evaluation cap.
            if ev.remaining is not None and ev.remaining < 2 * T and episode > 0 or episode == max_eps - 1:
                group, greedy = 1, episode > 0
            else:
                group = max(1, int(p["batch"]) - len(buffer))
                group = min(group, max_eps - 1 - episode) if max_eps - 1 - episode > 0 else 1
                if ev.remaining is not None:
                    group = max(1, min(group, ev.remaining // T - 1))
                greedy = False
            eps_ids = list(range(episode, episode + group))
            keeps = [np.ones(n) for _ in eps_ids]
            costs = [1.0 for _ in eps_ids]
            trajs: list[list[tuple[np.ndarray, np.ndarray, float]]] = [[] for _ in eps_ids]
            returns = [0.0 for _ in eps_ids]
            last_cands: list[Candidate | None] = [None for _ in eps_ids]
            for t in range(T):
                target_t = 1.0 - (1.0 - B) * (t + 1) / T
                proposals = []
                for j in range(group):
                    s = state(t, keeps[j], costs[j])
                    with torch.no_grad():
                        mean = actor(torch.from_numpy(s)).numpy()
                        sigma = log_sigma.exp().numpy()
                    u = mean if greedy else mean + sigma * rng.standard_normal(n)
                    a = 1.0 / (1.0 + np.exp(-np.clip(u, -30, 30)))
                    proposal = keeps[j] * (1.0 - a)
                    if t == T - 1:
                        counts = ev.solve((np.clip(1.0 - proposal, 0.0, None) + 1e-3).tolist()).counts
                    else:
                        counts = space.counts(np.clip(proposal, 0.0, 1.0).tolist())
                    proposals.append((s, u, counts, cost_fn(counts)))
                ev.prefetch([c for _, _, c, _ in proposals])
                for j, (s, u, counts, c_now) in enumerate(proposals):

                    def reward_fn(cand: Candidate, c_now=c_now, target_t=target_t) -> float:
                        return (float(p["acc_weight"]) * cand.top1 / 100.0
                                - float(p["sparsity_weight"]) * abs(c_now - target_t) / max(1e-9, 1.0 - B))

                    cand = ev.evaluate(counts, step=eps_ids[j] * T + t, reward_fn=reward_fn, meta={
                        "strategy": self.name, "episode": eps_ids[j], "pruning_step": t, "greedy": greedy,
                        "step_target": target_t})
                    trajs[j].append((s, u, float(cand.reward)))
                    returns[j] += float(cand.reward)
                    keeps[j] = np.array(cand.keep_ratios)
                    costs[j] = c_now
                    last_cands[j] = cand
                    if t == T - 1 and ctx.feasible(cand) and (best is None or (cand.top1, -cand.cost) >
                                                              (best.top1, -best.cost)):
                        best = cand
                    ctx.emit("purl", level="step", episode=eps_ids[j], step=t, reward=float(cand.reward),
                             top1=cand.top1, cost=c_now, step_target=target_t, keep_ratios=cand.keep_ratios,
                             greedy=greedy)
            for j, ep in enumerate(eps_ids):
                cand = last_cands[j]
                ctx.emit("purl", level="episode", episode=ep, **{"return": returns[j]},
                         final_top1=cand.top1, final_cost=costs[j], greedy=greedy,
                         sigma=float(log_sigma.detach().exp().mean()),
                         best_feasible_top1=None if best is None else best.top1)
                ctx.emit("step", step=ep, best_top1=None if best is None else best.top1,
                         best_reward=max(r for _, _, r in trajs[j]), mean_reward=returns[j] / T,
                         keep_ratios=best.keep_ratios if best is not None else cand.keep_ratios)
                if not greedy:
                    buffer.append(trajs[j])
            if len(buffer) >= int(p["batch"]):
                self._update(buffer, actor, critic, log_sigma, opt, min_log_sigma)
                buffer = []
            episode += group
            if greedy:
                break
        if best is None:  # no episode finished on the budget: any feasible intermediate structure
            feasible = [c for c in ev.candidates if c.meta.get("strategy") == self.name and ctx.feasible(c)]
            best = max(feasible, key=lambda c: (c.top1, -c.cost)) if feasible else None
        if best is None:
            raise PrunerError("purl found no candidate meeting the budget; raise --search-evals "
                              f"(each episode needs {T} evaluations) or lower steps")
        return best

    def _update(self, buffer, actor, critic, log_sigma, opt, min_log_sigma) -> None:
        p = self.params
        gamma = float(p["gamma"])
        states, actions, returns = [], [], []
        for traj in buffer:
            g = 0.0
            rets = []
            for _, _, r in reversed(traj):
                g = r + gamma * g
                rets.append(g)
            rets.reverse()
            for (s, u, _), G in zip(traj, rets):
                states.append(s)
                actions.append(u)
                returns.append(G)
        S = torch.from_numpy(np.stack(states))
        U = torch.from_numpy(np.stack(actions))
        G = torch.tensor(returns, dtype=torch.float64)
        for _ in range(int(p["updates"])):
            V = critic(S).squeeze(-1)
            adv = (G - V).detach()
            if len(adv) > 1 and float(adv.std()) > 1e-9:
                adv = (adv - adv.mean()) / adv.std()
            mean = actor(S)
            dist = torch.distributions.Normal(mean, log_sigma.exp().expand_as(mean))
            logp = dist.log_prob(U).sum(-1)
            loss = (-(adv * logp).mean() - float(p["entropy_bonus"]) * dist.entropy().sum(-1).mean()
                    + float(p["value_weight"]) * ((V - G) ** 2).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                log_sigma.clamp_(min_log_sigma, math.log(5.0))

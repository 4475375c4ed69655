"""PuRL (Gupta et al., "Learning to Prune Deep Neural Networks via Reinforcement Learning", 2020):
a per-layer MDP with a reward at *every* pruning step, learnt by a deep Q-network.

One episode walks the layer groups in network order and decides one group per step
(``steps`` groups; 0 = every group, as the paper prunes every layer):

* **state** ``s_t``: the group's features (its share of the budget's cost, its floor, its size,
  its position ``t / T``), the sparsity so far (the cost the decided groups leave with the
  rest unpruned, the budget), the running default keep of the undecided groups and the last
  action; see :meth:`PuRL._state`;
* **action** ``a_t`` (discrete, ``2 * levels + 1`` of them): that group's keep ratio (weight density with
  ``--budget sparsity=F``, channel keep ratio with flops/params) as a multiple of the running
  default, ``keep = default * spread ** m`` with ``m`` on an even grid over ``[-1, 1]``; the
  middle level (``m = 0``) keeps the default;
* **the structure scored at step t** is complete: groups ``0..t`` as decided, every undecided
  group at the *running default*, the one keep that puts the structure on the budget
  (:func:`~pruner.search.common.fill_to_budget`, exact cost model). When the undecided groups
  cannot absorb the decisions (none left, or all at their floors or unpruned), the structure
  is projected onto the budget by the shared solver along its own direction, and that miss is
  what the sparsity term of the reward pays for. So every scored structure meets the budget,
  earlier decisions are never re-solved away while the rest can absorb them, and a step that
  keeps the default proposes the previous structure again (memoised: no evaluation);
* **reward at every step**: ``r_t = acc_weight * (top1_t - top1_{t-1}) / 100
  - sparsity_weight * |cost'_t - B| / B`` where ``top1_{-1}`` is the all-default (uniform) start
  and ``cost'_t`` the cost before any projection: the accuracy term is a potential-based
  shaping of the final accuracy (its undiscounted sum is the episode's gain over the start);
* **learning**: double DQN (Q-network and a target network, one hidden tanh layer of
  ``hidden``), epsilon-greedy exploration (``eps_start * eps_decay ** episode``, floor
  ``eps_end``), a replay memory of every transition, ``updates`` Adam steps on the Huber TD
  loss (minibatches of ``minibatch``) after every round of steps; the target network follows
  after every ``target_every`` rounds. The Q-network starts almost flat with the default level
  on top, so the first greedy policy is the uniform fill.

``batch`` episodes run side by side, step by step: each round's structures are proposed
together (:meth:`Evaluator.prefetch`, scored in parallel with ``--workers``; the candidates do not
depend on the number of workers). The last episode is greedy (epsilon 0). The answer is the most
accurate structure scored that meets the budget (every step's structure is a complete one).
Latency budgets are refused: the fill needs an exact cost model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..budget import floor_ratios
from ..errors import PrunerError
from .base import Param, SearchContext, Strategy, best_meeting, register
from .common import fill_to_budget, mlp
from .evaluator import Candidate, EvaluationBudgetExhausted

#: the budget kinds purl searches (the fill needs an exact, analytic cost)
PURL_KINDS = ("flops", "params", "sparsity")
N_FEATURES = 11


@register
class PuRL(Strategy):
    name = "purl"
    budget_kinds = PURL_KINDS

    param_specs = {
        "steps": Param(0, int, "groups decided per episode, one per step (0 = every group, as the paper; "
                               "k = the k groups with the largest share of the cost, in network order)", low=0),
        "episodes": Param(0, int, "0 = as many as --search-evals allows (30 without a cap)", low=0),
        "batch": Param(2, int, "episodes run side by side (their structures proposed together)", low=1, high=64),
        "levels": Param(3, int, "keep levels on each side of the default: 2*levels+1 actions per step",
                        low=1, high=15),
        "spread": Param(2.0, float, "the extreme levels keep default*spread and default/spread", low=1.0,
                        high=10.0, low_open=True),
        "hidden": Param(64, int, "hidden units of the Q-network", low=1, high=1024),
        "lr": Param(0.005, float, "Adam learning rate of the Q-network", low=0.0, high=1.0, low_open=True),
        "gamma": Param(0.95, float, "discount of the per-step rewards", low=0.0, high=1.0),
        "eps_start": Param(0.6, float, "exploration rate of the first episodes", low=0.0, high=1.0),
        "eps_decay": Param(0.8, float, "exploration rate multiplied by this every episode", low=0.0, high=1.0),
        "eps_end": Param(0.05, float, "exploration rate floor (the last episode is greedy)", low=0.0, high=1.0),
        "updates": Param(8, int, "Adam steps on the TD loss after every round of steps", low=1, high=200),
        "minibatch": Param(32, int, "transitions per Adam step (drawn from the replay memory)", low=1, high=4096),
        "target_every": Param(2, int, "rounds of updates between target-network syncs", low=1, high=1000),
        "acc_weight": Param(1.0, float, "weight of the top-1 change (/100) in the step reward", low=0.0),
        "sparsity_weight": Param(1.0, float, "weight of the relative budget miss in the step reward", low=0.0),
    }

    @classmethod
    def check_budget(cls, kind: str, params: Mapping[str, Any]) -> None:
        if kind not in PURL_KINDS:
            raise PrunerError(f"strategy 'purl' fills the undecided layers to the budget with the exact cost model and "
                              f"cannot search a {kind} budget (measured); use a flops, params or sparsity budget, or "
                              "rl / random / constrained for latency")

    # ------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Candidate:
        """The uniform start, then rounds of ``batch`` episodes side by side until the evaluations run
        out (the last round greedy); the answer is the best structure scored that meets the budget."""
        p = self.params
        ev = ctx.evaluator
        self.check_budget(ctx.budget.kind, p)
        cost_fn = ev.cost_fn()
        rng = ctx.rng(47)
        plan = self._plan(ctx, cost_fn)
        agent = _QLearner(plan, p, seed=int(ctx.seed) * 1000 + 47)
        start, start_k = self._start(ctx, plan, cost_fn)
        # with a cap, episodes run until it is used; the bound only guards against episodes served from the memo
        max_eps = int(p["episodes"]) or (2 * ev.remaining + 2 if ev.remaining is not None else 30)
        episode = 0
        exhausted = False
        while episode < max_eps and not exhausted and (ev.remaining is None or ev.remaining > 0):
            eps_ids, epsilon, greedy = self._round(ev, plan, episode, max_eps)
            runs = [{"keeps": np.array(start.keep_ratios), "counts": list(start.counts), "score": start.score,
                     "default": start_k, "last_action": plan.neutral, "return": 0.0, "cand": start, "rewards": []}
                    for _ in eps_ids]
            exhausted = self._play(ctx, plan, agent, rng, cost_fn, runs, eps_ids, epsilon, greedy)
            self._report(ctx, plan, runs, eps_ids, epsilon, greedy, exhausted)
            episode += len(eps_ids)
            if greedy:
                break
        best = self._best(ctx)
        if best is None:
            raise PrunerError("purl scored no structure that meets the budget; raise --search-evals or the target")
        return best

    def _plan(self, ctx: SearchContext, cost_fn) -> "_Plan":
        """Which groups are decided (all, or the ``steps`` with the largest cost share, in network
        order), their static features and the action levels."""
        p = self.params
        space = ctx.space
        n = len(space)
        lo_keep = floor_ratios(space)
        full = space.counts([1.0] * n)
        base_cost = cost_fn(full)
        share = np.array([base_cost - cost_fn(space.counts([lo_keep[g] if i == g else 1.0 for i in range(n)]))
                          for g in range(n)])
        share = share / max(float(share.max()), 1e-12)
        T = int(p["steps"]) or n
        if T > n:
            raise PrunerError(f"purl parameter steps is {T} but the model has only {n} groups; use at most {n} "
                              "(0 = every group)")
        order = sorted(np.argsort(-share, kind="stable")[:T].tolist())
        size = np.log1p([g.channels for g in space.groups])
        size = size / max(float(size.max()), 1e-12)
        levels = float(p["spread"]) ** np.linspace(-1.0, 1.0, 2 * int(p["levels"]) + 1)
        return _Plan(order=order, share=share, size=size, lo_keep=lo_keep, target=float(ctx.budget.target),
                     steps=T, levels=levels)

    def _structure(self, ctx: SearchContext, plan: "_Plan", cost_fn, keeps: np.ndarray,
                   free: list[int]) -> tuple[list[int], float, float, bool]:
        """(counts, default keep of the undecided groups, cost before any projection, projected)."""
        space = ctx.space
        counts, k, status = fill_to_budget(space, cost_fn, plan.target, keeps, free)
        raw = cost_fn(counts)
        if status == "ok":
            return counts, k, raw, False
        # the undecided groups cannot absorb the decisions: project onto the budget along the
        # structure's own direction (the shared solver)
        ratios = [c / g.channels for c, g in zip(counts, space.groups)]
        try:
            sol = ctx.evaluator.solve([max(0.0, 1.0 - r) + 1e-3 for r in ratios])
        except PrunerError:
            sol = None
        return (counts if sol is None else list(sol.counts)), k, raw, sol is not None

    def _start(self, ctx: SearchContext, plan: "_Plan", cost_fn) -> tuple[Candidate, float]:
        """Every group at the uniform default: one evaluation, shared by every episode, and its keep."""
        ev = ctx.evaluator
        n = len(ctx.space)
        start_counts, start_k, _, _ = self._structure(ctx, plan, cost_fn, np.ones(n), list(range(n)))
        ev.prefetch([start_counts])
        try:
            start = ev.evaluate(start_counts, step=0, meta={"strategy": self.name, "episode": -1, "start": True})
        except EvaluationBudgetExhausted:
            raise PrunerError("purl needs at least 2 evaluations (the uniform start and one step); raise "
                              "--search-evals") from None
        if not ctx.feasible(start):
            raise PrunerError(f"purl's uniform start misses the budget {ctx.budget} (cost {start.cost:.3f}); "
                              "raise the target or allow more pruning (max prune fraction, min channels)")
        return start, start_k

    def _round(self, ev, plan: "_Plan", episode: int, max_eps: int) -> tuple[list[int], list[float], bool]:
        """The episodes of the next round, their exploration rates and whether it is the greedy last:
        exploring episodes while the cap leaves room for them *and* a final greedy one (T at most each)."""
        p = self.params
        T = plan.steps
        group = min(int(p["batch"]), max_eps - 1 - episode)
        if ev.remaining is not None:
            group = min(group, (ev.remaining - T) // T)
        last = group < 1
        greedy = last and episode > 0
        group = max(1, group)
        eps_ids = list(range(episode, episode + group))
        epsilon = [0.0 if greedy else max(float(p["eps_end"]), float(p["eps_start"]) * float(p["eps_decay"]) ** e)
                   for e in eps_ids]
        return eps_ids, epsilon, greedy

    def _play(self, ctx: SearchContext, plan: "_Plan", agent: "_QLearner", rng, cost_fn, runs: list[dict],
              eps_ids: list[int], epsilon: list[float], greedy: bool) -> bool:
        """One round: at each step every episode proposes (prefetched together), the proposals are
        scored and remembered, and the Q-network learns. True when the evaluations ran out."""
        n = len(ctx.space)
        for t in range(plan.steps):
            free = plan.order[t + 1:] + [i for i in range(n) if i not in plan.order]
            proposals = [self._propose(ctx, plan, agent, rng, cost_fn, run, t, free, eps)
                         for run, eps in zip(runs, epsilon)]
            ctx.evaluator.prefetch([pr[3] for pr in proposals])
            try:
                for j, proposal in enumerate(proposals):
                    self._score(ctx, plan, agent, cost_fn, runs[j], proposal, t, eps_ids[j], epsilon[j], greedy)
            except EvaluationBudgetExhausted:
                return True
            agent.learn(rng)
        return False

    def _propose(self, ctx: SearchContext, plan: "_Plan", agent: "_QLearner", rng, cost_fn, run: dict, t: int,
                 free: list[int], eps: float) -> tuple:
        """Episode ``run``'s action at step ``t`` (epsilon-greedy) and the structure it leads to:
        ``(state, action, keep, counts, default, raw cost, projected)``."""
        space = ctx.space
        n = len(space)
        g = plan.order[t]
        s = self._state(plan, t, run, cost_fn, space)
        a = int(rng.integers(plan.actions)) if rng.random() < eps else agent.act(s)
        current = float(run["keeps"][g])
        keep = float(np.clip(current * plan.levels[a], plan.lo_keep[g], 1.0))
        want = space.counts([keep if i == g else 1.0 for i in range(n)])[g]
        if want == run["counts"][g]:   # the default: the previous structure again (memoised)
            return s, a, keep, list(run["counts"]), run["default"], cost_fn(run["counts"]), False
        keeps = np.array(run["keeps"])
        keeps[g] = want / space.groups[g].channels
        counts, default, raw, projected = self._structure(ctx, plan, cost_fn, keeps, free)
        return s, a, keep, counts, (run["default"] if default is None else default), raw, projected

    def _score(self, ctx: SearchContext, plan: "_Plan", agent: "_QLearner", cost_fn, run: dict, proposal: tuple,
               t: int, episode: int, eps: float, greedy: bool) -> None:
        """Score one proposal with its step reward, move its episode on, remember the transition
        (exploring rounds only) and record the step (a ``purl`` event)."""
        p = self.params
        space = ctx.space
        s, a, keep, counts, default, raw, projected = proposal
        g = plan.order[t]
        T, B = plan.steps, plan.target
        miss = abs(raw - B) / max(B, 1e-9)

        def reward_fn(c: Candidate, before=run["score"], miss=miss) -> float:
            return (float(p["acc_weight"]) * (c.score - before) / 100.0
                    - float(p["sparsity_weight"]) * miss)

        cand = ctx.evaluator.evaluate(counts, step=episode * T + t, reward_fn=reward_fn, meta={
            "strategy": self.name, "episode": episode, "pruning_step": t, "layer": int(g),
            "action": a, "greedy": greedy, "projected": projected})
        r = float(cand.reward)
        run.update(keeps=np.array(cand.keep_ratios), counts=list(cand.counts), score=cand.score,
                   default=default, last_action=a, cand=cand)
        run["return"] += r
        run["rewards"].append(r)
        s_next = self._state(plan, t + 1, run, cost_fn, space) if t + 1 < T else np.zeros(N_FEATURES)
        if not greedy:
            agent.memory.append((s, a, r, s_next, t + 1 == T))
        ctx.emit("purl", level="step", episode=episode, step=t, steps=T, layer=space.groups[g].name,
                 group=int(g), action=a, keep=float(cand.keep_ratios[g]), default=float(default),
                 reward=r, top1=cand.top1, cost=cand.cost, miss=miss, projected=projected,
                 epsilon=eps, greedy=greedy, keep_ratios=cand.keep_ratios)

    def _best(self, ctx: SearchContext) -> Candidate | None:
        return best_meeting([c for c in ctx.evaluator.candidates if c.meta.get("strategy") == self.name], ctx.budget)

    def _report(self, ctx: SearchContext, plan: "_Plan", runs: list[dict], eps_ids: list[int],
                epsilon: list[float], greedy: bool, exhausted: bool) -> None:
        """An ``episode`` and a ``step`` event per finished episode of the round."""
        T = plan.steps
        best = self._best(ctx)
        for j, ep in enumerate(eps_ids):
            run = runs[j]
            if exhausted and len(run["rewards"]) < T:
                continue
            ctx.emit("purl", level="episode", episode=ep, steps=T, **{"return": run["return"]},
                     final_top1=run["cand"].top1, final_cost=run["cand"].cost, greedy=greedy, epsilon=epsilon[j],
                     best_feasible_top1=None if best is None else best.top1)
            ctx.emit("step", step=ep, best_top1=None if best is None else best.top1,
                     best_reward=max(run["rewards"]), mean_reward=run["return"] / T,
                     keep_ratios=best.keep_ratios if best is not None else run["cand"].keep_ratios)

    # ------------------------------------------------------------------
    def _state(self, plan: "_Plan", t: int, run: dict, cost_fn, space) -> np.ndarray:
        """Features of step ``t``'s group and of the structure so far (all in about [0, 1])."""
        g = plan.order[t]
        decided = plan.order[:t]
        keeps = np.ones(len(space))
        keeps[decided] = run["keeps"][decided]
        so_far = cost_fn(space.counts(keeps.tolist()))   # the decided groups as chosen, the rest unpruned
        default = run["default"]
        return np.array([
            t / plan.steps, plan.share[g], plan.lo_keep[g], plan.size[g], float(run["keeps"][g]),
            so_far, plan.target, float(default),
            run["last_action"] / (plan.actions - 1), run["score"] / 100.0, 1.0], dtype=np.float64)


@dataclass(frozen=True)
class _Plan:
    """What every step of a PuRL search shares: the groups decided and their static features."""

    order: list[int]          # the groups decided, in network order
    share: np.ndarray         # each group's share of the cost (what its floor saves; largest = 1)
    size: np.ndarray          # log channels (largest = 1)
    lo_keep: np.ndarray       # each group's floor keep ratio (pruner.budget.floor_ratios)
    target: float             # the budget's target B
    steps: int                # groups decided per episode, T
    levels: np.ndarray        # the keep multiplier of each action

    @property
    def actions(self) -> int:
        return len(self.levels)

    @property
    def neutral(self) -> int:
        """The action that keeps the default."""
        return len(self.levels) // 2


class _QLearner:
    """PuRL's double DQN: a Q-network and its target network (:func:`~pruner.search.common.mlp`,
    initialised from the run's seed, isolated from torch's global RNG), Adam, the replay memory."""

    def __init__(self, plan: _Plan, params: Mapping[str, Any], seed: int):
        self.params = params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.qnet = mlp(N_FEATURES, int(params["hidden"]), plan.actions)
        with torch.no_grad():   # almost flat, the default level on top: the first greedy policy is uniform
            self.qnet[-1].weight.mul_(0.01)
            self.qnet[-1].bias.zero_()
            self.qnet[-1].bias[plan.neutral] = 0.01
        self.target = mlp(N_FEATURES, int(params["hidden"]), plan.actions)
        self.target.load_state_dict(self.qnet.state_dict())
        self.opt = torch.optim.Adam(self.qnet.parameters(), lr=float(params["lr"]))
        self.memory: list[tuple[np.ndarray, int, float, np.ndarray, bool]] = []
        self.rounds = 0

    def act(self, s: np.ndarray) -> int:
        """The greedy action in state ``s``."""
        with torch.no_grad():
            return int(torch.argmax(self.qnet(torch.from_numpy(s))).item())

    def learn(self, rng) -> None:
        """After a round of steps: ``updates`` Adam steps on the Huber TD loss; the target network
        follows every ``target_every`` rounds. Nothing before the memory holds a transition."""
        if not self.memory:
            return
        self._updates(rng)
        self.rounds += 1
        if self.rounds % int(self.params["target_every"]) == 0:
            self.target.load_state_dict(self.qnet.state_dict())

    def _updates(self, rng) -> None:
        p, memory, qnet, target, opt = self.params, self.memory, self.qnet, self.target, self.opt
        gamma = float(p["gamma"])
        for _ in range(int(p["updates"])):
            idx = rng.integers(len(memory), size=min(len(memory), int(p["minibatch"])))
            S = torch.from_numpy(np.stack([memory[i][0] for i in idx]))
            A = torch.tensor([memory[i][1] for i in idx])
            R = torch.tensor([memory[i][2] for i in idx], dtype=torch.float64)
            S2 = torch.from_numpy(np.stack([memory[i][3] for i in idx]))
            done = torch.tensor([memory[i][4] for i in idx], dtype=torch.float64)
            with torch.no_grad():   # double DQN: the online network picks, the target network values
                a2 = qnet(S2).argmax(-1, keepdim=True)
                y = R + gamma * (1.0 - done) * target(S2).gather(-1, a2).squeeze(-1)
            q = qnet(S).gather(-1, A.unsqueeze(-1)).squeeze(-1)
            loss = nn.functional.smooth_l1_loss(q, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

"""Pruning through constrained RL (Malik et al., arXiv 2110.08558), for a few hundred evaluations.

The budget is a *constraint* on a cost the user can evaluate, differentiable or not:
relative MACs or params (exact cost model), the density of a weight-sparsity run, measured
latency (PyTorch or ONNX Runtime, CPU or CUDA, chosen batch size) or a user's Python function
of the pruned ``nn.Module`` (:mod:`pruner.search.costs`). Pruning is a **layer-by-layer
constrained MDP** and it is solved with a **Lagrangian PPO** (PPO-Lagrangian) with a reward
critic and a cost critic.

The environment (:class:`LayerEnv`): an episode visits the space's unit groups in order (the
channel groups of a ``PruningSpace``, or, with ``--budget sparsity=F``, the layers of a
``SparsitySpace``: the paper's per-layer weight pruning). At step ``t`` the state is

* the layer's features: position, size (log units), its floor (``max_prune``) and its share of
  each constraint's removable cost;
* what has been pruned so far: the action taken at the previous layer and, per constraint, the
  fraction of the original cost removed by the layers already decided;
* the constraint's remaining slack: per constraint, how much of what the remaining layers
  could still remove must go to meet the limit (``(cost_now - limit) / (cost_now - cost_floor)``).

These state features are computed on an exact *tracker* of each constraint: the constraint itself
when it is exact (MACs, params, density), the exact MACs (density for sparsity) when it is
measured (latency) or foreign (``python:``), since measuring a black-box cost at every layer would
cost a measurement per step. The action is the layer's keep ratio,
``keep_t = floor_t + (1 - floor_t) * sigmoid(b_t + u_t)``, ``u_t ~ N(mu_theta(s_t), sigma_t^2)``
(``b_t``: the starting point's logit, so an untrained actor, whose last layer starts at zero,
proposes the start). The episode ends with a complete structure; it is scored once by the shared
evaluator (one evaluation per episode, counted against ``--search-evals``) and returns the
terminal reward ``R = top1 / 100`` and, per constraint ``k``, the terminal cost
``C_k = c_k / d_k`` (its value over its limit; the black-box cost itself is evaluated here).

The constrained problem ``max E[R]`` s.t. ``E[C_k] <= 1`` is relaxed to the Lagrangian

    L(theta, lambda) = E[R] - sum_k lambda_k * (E[C_k] - 1)

* **primal (PPO)**: each update draws ``batch`` episodes (scored together through
  ``Evaluator.prefetch``), computes GAE advantages of the reward (``A_R``, reward critic) and
  of every cost (``A_Ck``, cost critic, one head per constraint), and takes ``ppo_epochs``
  clipped-surrogate Adam steps on the advantage of the Lagrangian, ``A_R - sum_k lambda_k A_Ck``
  (standardised over the batch: a positive rescaling of the same objective);
* **critics**: the reward critic ``V_R(s)`` and the cost critic ``V_C(s)`` regress the GAE
  returns of ``R`` and ``C_k`` (full-batch L-BFGS with a strong-Wolfe line search, ``ppo_epochs``
  iterations each per update, first step ``critic_lr``);
* **dual**: projected ascent on the same cost signal,
  ``lambda_k <- max(0, lambda_k + dual_lr * (mean C_k - 1))``: the gradient of ``L`` in ``lambda``.
  So ``lambda`` rises while the samples violate on average and falls when they do not.

Every scored candidate carries its Lagrangian value ``R - sum_k lambda_k (C_k - 1)`` as reward.
The answer meets every constraint (measured latencies within ``pruner.budget.LATENCY_TOLERANCE``)
and the run's budget (``Budget.feasible``): the most accurate feasible sample; at the end the
deterministic policy (``u = mu``) is projected onto the constraints along its own pruning
direction and scored too, which also guarantees a feasible answer when no sample was. Then the
most accurate feasible samples that leave budget unused are grown onto the boundary the same way
(``fill``, from the evaluations left): a constrained optimum is met with slack as often as not, and
the slack is channels (or weights) the answer could have kept.

Costs (hyperparameter ``cost``):

``budget``   the run's budget kind (``evaluator.cost_fn()``; measured latency is memoised there)
``flops``    relative MACs, ``params`` relative parameters (exact cost model; with a sparsity
             budget, params counts the non-zero ones and flops is refused: shapes do not change)
``latency``  measured latency relative to the unpruned model, with ``latency_backend``
             (``torch`` or ``ort``), ``latency_device`` (``auto`` = the run's device, ``cpu``,
             ``cuda``) and ``latency_batch`` (0 = the run's latency batch)
``python:FILE.py:FUNCTION``
             ``FUNCTION(model) -> float`` on the pruned model (eval mode, on the run's device).
             With ``cost_scale=relative`` (default) the value is the fraction of the original
             cost; with ``absolute`` it is divided by the function's value on the unpruned model.

The constraint's limit is ``limit`` (0 = the run's budget target; for a sparsity budget the
density that may remain). With a cost other than the run's budget, ``enforce_budget`` (default
true) makes the run's own budget a second learnt constraint with its own multiplier and cost
head; with it false the budget is not learnt, but the answer must still meet it (the final
projection includes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..budget import (KINDS, LATENCY_TOLERANCE, Budget, Solution, floor_counts, floor_ratios, model_cost_fn, solve,
                      within)
from ..errors import PrunerError
from ..settings import DEVICES
from .base import Param, SearchContext, Strategy, register
from .common import logit, mlp, sigmoid
from .costs import latency_cost, python_cost
from .evaluator import Candidate
from .probes import allocate, measure_probes, probe_defaults


# --------------------------------------------------------------------------- constraints


@dataclass
class Constraint:
    name: str
    fn: Callable[[list[int]], float]     # counts -> relative cost
    limit: float
    tolerance: float                      # relative slack when judging feasibility (measured costs)
    multiplier: float = 0.0
    is_budget: bool = False               # exactly the run's budget (cost kind and target)
    tracker: Callable[[list[int]], float] | None = None   # exact cost the state's slack is computed on

    def feasible(self, value: float) -> bool:
        return within(value, self.limit, self.tolerance)


def _exact(space) -> Callable[[list[int]], float]:
    """The exact cost a measured or foreign constraint is tracked with in the state."""
    return model_cost_fn(space, "sparsity" if getattr(space, "kind", None) == "sparsity" else "flops")


def build_constraints(ctx: SearchContext, params: Mapping[str, Any]) -> tuple[list[Constraint], list[Constraint]]:
    """``(learnt, required)``: the constraints with a multiplier and a cost head, and those the
    answer must meet (the learnt ones, plus the run's budget when ``enforce_budget`` is false)."""
    budget = ctx.budget
    ev = ctx.evaluator
    spec = params["cost"]
    limit = float(params["limit"]) or budget.target
    run_tol = budget.tolerance
    exact_kinds = ("flops", "params", "sparsity")
    budget_tracker = ev.cost_fn() if budget.kind in exact_kinds else _exact(ctx.space)
    if spec == "budget" or (spec == budget.kind and spec in ("flops", "params")):
        fn, tol, name, is_budget, tracker = ev.cost_fn(), run_tol, budget.kind, True, budget_tracker
    elif spec in ("flops", "params"):
        fn = model_cost_fn(ctx.space, spec)
        tol, name, is_budget, tracker = 0.0, spec, False, fn
    elif spec == "latency":
        fn, shared = latency_cost(ctx, params["latency_backend"], params["latency_device"], int(params["latency_batch"]))
        tol, is_budget, tracker = LATENCY_TOLERANCE, shared and budget.kind == "latency", _exact(ctx.space)
        name = "latency" if shared else f"latency[{params['latency_backend']},{params['latency_device']},batch={params['latency_batch'] or ev.settings.latency_batch}]"
    else:
        fn, tol, name, is_budget = python_cost(ctx, spec, params["cost_scale"]), 0.0, spec, False
        tracker = _exact(ctx.space)
    if params["tolerance"] is not None:
        tol = float(params["tolerance"])
    lam = float(params["multiplier"])
    first = Constraint(name, fn, limit, tol, lam, is_budget=is_budget and limit == budget.target, tracker=tracker)
    implied = is_budget and limit <= budget.target and tol <= run_tol  # a tighter limit on the run's own cost
    run = Constraint(str(budget), ev.cost_fn(), budget.target, run_tol, lam, is_budget=True, tracker=budget_tracker)
    if implied:
        return [first], [first]
    if bool(params["enforce_budget"]):
        return [first, run], [first, run]
    return [first], [first, run]


def project(ctx: SearchContext, keep: np.ndarray, constraints: list[Constraint]) -> list[int]:
    """Counts on the constraint boundary along the pruning direction of ``keep`` (allocation ``1 - keep``)."""
    alloc = np.clip(1.0 - np.asarray(keep, dtype=float), 0.0, None) + 1e-3
    if len(constraints) == 1 and constraints[0].is_budget:
        return ctx.evaluator.solve(alloc.tolist()).counts
    # several (or foreign) costs: bisect on the worst relative cost (<= 1 means all are met)
    combined = lambda counts: 0.5 * max(c.fn(counts) / c.limit for c in constraints)  # noqa: E731
    measured = ctx.budget.kind == "latency" or any(c.name.startswith(("latency", "python:")) for c in constraints)
    at_floors = ctx.space.counts(floor_ratios(ctx.space).tolist())
    if combined(at_floors) > 0.5:
        raise PrunerError("the constraints " + ", ".join(f"{c.name} <= {c.limit:g}" for c in constraints) +
                          " cannot be met even with every group at its floor; raise the limit or allow more "
                          "pruning (max_prune)")
    return solve(ctx.space, alloc.tolist(), Budget("flops", 0.5), cost_fn=combined,
                 iterations=14 if measured else 40).counts


# --------------------------------------------------------------------------- the environment


class LayerEnv:
    """The layer-by-layer constrained MDP over the space's unit groups (see the module docstring).

    ``rollout`` walks the groups in order with an action per group and returns the states seen,
    the structure (counts) and the keep ratios; it scores nothing (the episode's structure is
    scored by the evaluator afterwards, once)."""

    def __init__(self, ctx: SearchContext, constraints: list[Constraint], base_logits: np.ndarray):
        self.space = ctx.space
        self.groups = list(ctx.space.groups)
        self.n = len(self.groups)
        self.lo = floor_ratios(ctx.space)
        self.base = np.asarray(base_logits, dtype=float)
        self.constraints = constraints
        self.full = [g.channels for g in self.groups]
        self.floor_counts = floor_counts(ctx.space)
        biggest = math.log(max(max(self.full), 2))
        share = []
        for c in constraints:
            t = c.tracker
            whole = t(self.full) - t(self.floor_counts)
            share.append([(t(self.full) - t(self.full[:i] + [self.floor_counts[i]] + self.full[i + 1:]))
                          / max(whole, 1e-12) for i in range(self.n)])
        self.static = np.array([[i / max(1, self.n - 1), math.log(max(g.channels, 1)) / biggest, self.lo[i]]
                                + [s[i] for s in share] for i, g in enumerate(self.groups)], dtype=float)
        self.dim = self.static.shape[1] + 1 + 2 * len(constraints)

    def keep(self, t: int, u: float) -> float:
        return float(self.lo[t] + (1.0 - self.lo[t]) * sigmoid(np.asarray(self.base[t] + u)))

    def state(self, t: int, chosen: list[int], prev_action: float) -> np.ndarray:
        now = chosen + self.full[t:]
        rest_floor = chosen + self.floor_counts[t:]
        dyn = []
        for c in self.constraints:
            cur = c.tracker(now)
            room = cur - c.tracker(rest_floor)
            dyn += [c.tracker(self.full) - cur, float(np.clip((cur - c.limit) / max(room, 1e-6), -1.0, 2.0))]
        return np.concatenate([self.static[t], [prev_action], dyn])

    def rollout(self, act: Callable[[int, np.ndarray], float]) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
        """Run one episode; ``act(t, state) -> u_t``. Returns (states, actions u, counts, keep ratios)."""
        chosen: list[int] = []
        states, us, keeps = [], [], []
        prev = 1.0
        for t in range(self.n):
            s = self.state(t, chosen, prev)
            u = float(act(t, s))
            k = self.keep(t, u)
            states.append(s)
            us.append(u)
            keeps.append(k)
            chosen.append(min(self.full[t], max(self.floor_counts[t], int(round(self.full[t] * k)))))
            prev = k
        return np.asarray(states), np.asarray(us), self.space.align(chosen), keeps


# --------------------------------------------------------------------------- the agent


class LagrangianPPO:
    """Gaussian actor ``mu_theta(s)`` with a per-layer ``log sigma``, a reward critic ``V_R(s)``
    and a cost critic ``V_C(s)`` (one output per constraint), trained by PPO on the advantage
    of the Lagrangian. Float64 on the CPU; initialised from its own seed (the global RNG is
    left as it was), so a replay proposes exactly the same structures."""

    def __init__(self, dim: int, n_layers: int, n_costs: int, p: Mapping[str, Any], seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = mlp(dim, int(p["hidden"]), 1, depth=2, zero_last=True)
            self.reward_critic = mlp(dim, int(p["hidden"]), 1, depth=2, zero_last=True)
            self.cost_critic = mlp(dim, int(p["hidden"]), n_costs, depth=2, zero_last=True)
        self.log_std = nn.Parameter(torch.full((n_layers,), math.log(float(p["sigma"])), dtype=torch.float64))
        self.min_log_std = math.log(float(p["min_sigma"]))
        self.opt_actor = torch.optim.Adam([{"params": self.actor.parameters(), "lr": float(p["lr"])},
                                           {"params": [self.log_std], "lr": float(p["sigma_lr"])}])
        self.critic_lr = float(p["critic_lr"])
        self.epochs = int(p["ppo_epochs"])
        self.clip = float(p["clip"])
        self.gae = float(p["gae"])

    def mean(self, s: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.actor(torch.as_tensor(s, dtype=torch.float64)[None])[0, 0])

    def sigma(self) -> np.ndarray:
        return self.log_std.detach().exp().numpy()

    def _logp(self, states: torch.Tensor, layers: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
        mu = self.actor(states)[:, 0]
        ls = self.log_std[layers]
        return -0.5 * ((us - mu) / ls.exp()) ** 2 - ls - 0.5 * math.log(2 * math.pi)

    def _advantages(self, values: np.ndarray, final: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GAE (gamma = 1) of a terminal signal: ``values`` [episodes, steps], ``final`` [episodes]."""
        e, n = values.shape
        adv = np.zeros((e, n))
        nxt = np.zeros(e)
        run = np.zeros(e)
        for t in reversed(range(n)):
            r = final if t == n - 1 else np.zeros(e)
            delta = r + nxt - values[:, t]
            run = delta + self.gae * run
            adv[:, t] = run
            nxt = values[:, t]
        return adv, adv + values

    def update(self, states: np.ndarray, us: np.ndarray, rewards: np.ndarray, costs: np.ndarray,
               lambdas: np.ndarray) -> dict:
        """One PPO-Lagrangian update on ``batch`` episodes: ``states`` [E, n, D], ``us`` [E, n],
        ``rewards`` [E] (R), ``costs`` [E, K] (C_k = c_k / d_k), ``lambdas`` [K]."""
        e, n, d = states.shape
        k = costs.shape[1]
        s = torch.as_tensor(states.reshape(e * n, d), dtype=torch.float64)
        u = torch.as_tensor(us.reshape(-1), dtype=torch.float64)
        layers = torch.arange(n).repeat(e)
        with torch.no_grad():
            v_r = self.reward_critic(s)[:, 0].numpy().reshape(e, n)
            v_c = self.cost_critic(s).numpy().reshape(e, n, k)
            old_logp = self._logp(s, layers, u)
        a_r, ret_r = self._advantages(v_r, rewards)
        a_c, ret_c = zip(*(self._advantages(v_c[:, :, j], costs[:, j]) for j in range(k)))
        a_c, ret_c = np.stack(a_c, -1), np.stack(ret_c, -1)
        a_l = a_r - (a_c * lambdas).sum(-1)              # the Lagrangian's advantage
        a_l = (a_l - a_l.mean()) / (a_l.std() + 1e-8)
        adv = torch.as_tensor(a_l.reshape(-1), dtype=torch.float64)
        tr = torch.as_tensor(ret_r.reshape(-1), dtype=torch.float64)
        tc = torch.as_tensor(ret_c.reshape(-1, k), dtype=torch.float64)
        before = {}
        with torch.no_grad():
            before["reward_critic_loss"] = float(((self.reward_critic(s) - tr[:, None]) ** 2).mean())
            before["cost_critic_loss"] = float(((self.cost_critic(s) - tc) ** 2).mean())
        for _ in range(self.epochs):
            ratio = (self._logp(s, layers, u) - old_logp).exp()
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv).mean()
            self.opt_actor.zero_grad()
            (-surrogate).backward()
            self.opt_actor.step()
            with torch.no_grad():
                self.log_std.clamp_(self.min_log_std, math.log(5.0))
        # the critics regress their returns on this batch: full-batch L-BFGS with a strong-Wolfe line
        # search (``ppo_epochs`` iterations, initial step ``critic_lr``), which never increases the loss
        for net, target in ((self.reward_critic, tr[:, None]), (self.cost_critic, tc)):
            opt = torch.optim.LBFGS(net.parameters(), lr=self.critic_lr, max_iter=self.epochs,
                                    line_search_fn="strong_wolfe")

            def closure(net=net, target=target, opt=opt):
                opt.zero_grad()
                loss = ((net(s) - target) ** 2).mean()
                loss.backward()
                return loss

            opt.step(closure)
        with torch.no_grad():
            after_r = float(((self.reward_critic(s) - tr[:, None]) ** 2).mean())
            after_c = float(((self.cost_critic(s) - tc) ** 2).mean())
        return {"reward_critic_loss": before["reward_critic_loss"], "reward_critic_loss_after": after_r,
                "cost_critic_loss": before["cost_critic_loss"], "cost_critic_loss_after": after_c}


# --------------------------------------------------------------------------- the strategy


@register
class ConstrainedRL(Strategy):
    name = "constrained"
    budget_kinds = KINDS   # channels (a PruningSpace) or a layer's weights (sparsity=F: the paper's mode)

    param_specs = {
        "cost": Param("budget", str, "the constrained cost: budget (the run's), flops, params, latency, or "
                      "python:FILE.py:FUNCTION (a function of the pruned model)",
                      choices=("budget", "flops", "params", "latency"), prefixes=("python:",)),
        "limit": Param(0.0, float, "the cost's upper limit (fraction of the original); 0 = the run's budget target",
                       low=0.0, high=1.0, high_open=True),
        "cost_scale": Param("relative", str, "python costs: relative (the function returns a fraction) or absolute",
                            choices=("relative", "absolute")),
        "enforce_budget": Param(True, bool, "with a cost other than the run's budget, learn the run's budget as a "
                                "second constraint (the answer meets the budget either way)"),
        "tolerance": Param(None, float, "relative slack when judging feasibility; empty = 5% for latency, 0 otherwise",
                           low=0.0, high=1.0, nullable=True),
        "latency_backend": Param("torch", str, "cost=latency: torch or ort (ONNX Runtime)", choices=("torch", "ort")),
        "latency_device": Param("auto", str, "cost=latency: auto (the run's device), cpu or cuda", choices=DEVICES),
        "latency_batch": Param(0, int, "cost=latency: batch size (0 = the run's latency batch)", low=0, high=4096),
        "iterations": Param(0, int, "PPO updates; 0 = as many as --search-evals allows (20 without a cap)", low=0),
        "batch": Param(6, int, "episodes (scored structures) per PPO update", low=2, high=256),
        "ppo_epochs": Param(8, int, "gradient steps of the actor and of each critic per update", low=1, high=100),
        "clip": Param(0.2, float, "PPO ratio clip", low=0.0, high=1.0, low_open=True),
        "gae": Param(0.95, float, "GAE lambda of the reward and cost advantages (1 = Monte Carlo)", low=0.0, high=1.0),
        "hidden": Param(32, int, "hidden width of the actor and critic networks", low=1, high=1024),
        "lr": Param(0.01, float, "Adam step of the actor", low=0.0, high=10.0, low_open=True),
        "critic_lr": Param(1.0, float, "initial L-BFGS step of the reward and cost critics' fit", low=0.0, high=10.0, low_open=True),
        "sigma": Param(0.5, float, "initial exploration std per layer (logit units)", low=0.0, high=5.0, low_open=True),
        "sigma_lr": Param(0.05, float, "Adam step on each layer's log sigma", low=0.0, high=1.0),
        "min_sigma": Param(0.05, float, "exploration std floor (logit units)", low=0.0, high=5.0, low_open=True),
        "multiplier": Param(1.0, float, "initial Lagrange multiplier of every constraint", low=0.0),
        "dual_lr": Param(1.0, float, "dual ascent step on each multiplier", low=0.0),
        "init": Param("uniform", str, "where the policy starts: uniform (uniform pruning projected onto the "
                      "constraints), sensitivity (the sensitivity strategy's probes and answer, projected onto the "
                      "constraints; the probes count against --search-evals, at most half of them) or full (keep "
                      "95%)", choices=("uniform", "sensitivity", "full")),
        "fill": Param(3, int, "before answering, grow up to this many of the most accurate feasible samples that "
                      "leave part of the budget unused onto the constraint boundary (one evaluation each, from the "
                      "evaluations left; 0 = off)", low=0, high=64),
    }

    @classmethod
    def check_budget(cls, kind: str, params: Mapping[str, Any]) -> None:
        super().check_budget(kind, params)
        cost = params.get("cost", "budget")
        if kind == "sparsity" and cost in ("flops", "latency"):
            raise PrunerError(f"constrained cannot constrain {cost} under a sparsity budget: zeroing weights keeps every "
                              "shape, so MACs and dense latency do not change; use cost=budget, params or python:...")

    # ------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Candidate:
        """Start, PPO-Lagrangian updates while the evaluations allow, then the projected mean (module docstring)."""
        p = self.params
        ev = ctx.evaluator
        batch = int(p["batch"])
        self.check_budget(ctx.budget.kind, p)
        learnt, required = build_constraints(ctx, p)
        rng = ctx.rng(31)
        env, agent, counts0 = self._start(ctx, learnt, required, rng)
        best = _Best(ctx, required)
        if counts0 is not None and (ev.remaining is None or ev.remaining >= 2):
            # the starting point (on the constraint boundary) is a candidate too
            best.consider(ev.evaluate(counts0, step=0, meta={"strategy": self.name, "initial_mean": True,
                                                             "init": p["init"]}))

        # with a cap, run while it leaves room for a batch and the final projection; the bound on
        # iterations only guards against a policy whose samples are all served from the memo
        max_iters = int(p["iterations"]) or (3 * max(1, ev.remaining // batch) if ev.remaining is not None else 20)
        it = 0
        while it < max_iters and (ev.remaining is None or ev.remaining >= batch + 1):
            self._iteration(ctx, env, agent, learnt, best, rng, it)
            it += 1
        return self._finish(ctx, env, agent, learnt, required, best, it)

    def _start(self, ctx: SearchContext, learnt: list[Constraint], required: list[Constraint],
               rng: np.random.Generator) -> tuple[LayerEnv, LagrangianPPO, list[int] | None]:
        """The environment and the agent, from where the policy starts: uniform pruning or the
        sensitivity strategy's answer, projected onto the constraints (its counts are returned too),
        or (almost) the full model."""
        p = self.params
        space = ctx.space
        n = len(space)
        lo = floor_ratios(ctx.space)
        counts0 = None
        if p["init"] == "uniform":
            counts0 = project(ctx, np.full(n, 0.5), required)
        elif p["init"] == "sensitivity":
            sol = self._sensitivity_answer(ctx)
            only_budget = len(required) == 1 and required[0].is_budget   # then the answer is on the boundary
            counts0 = sol.counts if only_budget else project(ctx, np.asarray(sol.keep_ratios), required)
        keep0 = (np.full(n, 0.95) if counts0 is None
                 else np.array([c / g.channels for c, g in zip(counts0, space.groups)]))
        env = LayerEnv(ctx, learnt, logit((keep0 - lo) / np.maximum(1e-9, 1 - lo)))
        agent = LagrangianPPO(env.dim, n, len(learnt), p, seed=int(rng.integers(2 ** 31)))
        return env, agent, counts0

    def _sensitivity_answer(self, ctx: SearchContext) -> Solution:
        """The ``sensitivity`` strategy's answer, through :mod:`pruner.search.probes`: the unpruned model and
        the groups probed (in chunks when evaluations are short, at most half of those left), its
        allocation (its default ``per_cost``) solved onto the run's budget."""
        d = probe_defaults()
        left = ctx.evaluator.remaining
        cap = None if left is None else max(1, left // 2 - 1)
        probes = measure_probes(ctx, float(d["probe_ratio"]), max_probes=cap, tag=self.name)
        alloc, how = allocate(ctx, probes, float(d["floor"]), float(d["power"]), d["per_cost"])
        ctx.emit("prior", strategy=self.name, **probes.summary(), allocation=how)
        return ctx.evaluator.solve(alloc.tolist())

    def _iteration(self, ctx: SearchContext, env: LayerEnv, agent: LagrangianPPO, learnt: list[Constraint],
                   best: "_Best", rng: np.random.Generator, it: int) -> None:
        """One PPO-Lagrangian update: a batch of episodes scored together, the primal and dual steps, the events."""
        p = self.params
        ev = ctx.evaluator
        batch, n = int(p["batch"]), len(ctx.space)
        sigma = agent.sigma()
        noise = rng.standard_normal((batch, n))
        episodes = [env.rollout(lambda t, s, e=e: agent.mean(s) + sigma[t] * noise[e, t]) for e in range(batch)]
        proposals = [ep[2] for ep in episodes]
        ev.prefetch(proposals)  # scored in parallel with --workers
        lams = np.array([c.multiplier for c in learnt])
        R, C, tops = self._score(ctx, proposals, learnt, lams, best, it)
        # primal: PPO on the Lagrangian's advantage; both critics regress their returns
        stats = agent.update(np.stack([ep[0] for ep in episodes]), np.stack([ep[1] for ep in episodes]), R, C, lams)
        # dual: projected ascent on the gradient of the same Lagrangian in lambda (same C_k)
        for j, c in enumerate(learnt):
            c.multiplier = max(0.0, c.multiplier + float(p["dual_lr"]) * (float(C[:, j].mean()) - 1.0))
        greedy = env.rollout(lambda t, s: agent.mean(s))
        _emit_iteration(ctx, it, agent, learnt, best.best, lams, R, C, tops, stats, greedy)

    def _score(self, ctx: SearchContext, proposals: list[list[int]], learnt: list[Constraint], lams: np.ndarray,
               best: "_Best", it: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Evaluate the batch's structures (each with its Lagrangian value as reward): ``(R, C, top-1s)``."""
        ev = ctx.evaluator
        rewards, costs, tops = [], [], []
        for k, counts in enumerate(proposals):
            values = [c.fn(counts) for c in learnt]
            ratios = np.array([v / c.limit for v, c in zip(values, learnt)])
            penalty = float((lams * (ratios - 1.0)).sum())

            def reward_fn(cand: Candidate, penalty=penalty) -> float:
                return cand.score / 100.0 - penalty   # the sample's Lagrangian value

            cand = ev.evaluate(counts, step=it, reward_fn=reward_fn, meta={
                "strategy": self.name, "iteration": it, "sample": k,
                "costs": {c.name: v for c, v in zip(learnt, values)}})
            rewards.append(cand.score / 100.0)
            costs.append(ratios)
            tops.append(cand.top1)
            best.consider(cand)
        return np.asarray(rewards), np.asarray(costs), tops

    def _finish(self, ctx: SearchContext, env: LayerEnv, agent: LagrangianPPO, learnt: list[Constraint],
                required: list[Constraint], best: "_Best", it: int) -> Candidate:
        """Score the deterministic policy projected onto the constraints (feasible by construction) and
        return the most accurate feasible candidate."""
        ev = ctx.evaluator
        if ev.remaining is None or ev.remaining >= 1:
            greedy = env.rollout(lambda t, s: agent.mean(s))
            counts = project(ctx, np.asarray(greedy[3]), required)
            cand = ev.evaluate(counts, step=it, meta={"strategy": self.name, "projected_mean": True,
                                                      "fallback": best.best is None})
            best.consider(cand)
        self._fill(ctx, required, best, it)
        if best.best is None:
            raise PrunerError("constrained found no structure meeting the constraints "
                              f"({', '.join(f'{c.name} <= {c.limit:g}' for c in required)}); "
                              "raise the limit or --search-evals")
        best.best.meta["multipliers"] = {c.name: c.multiplier for c in learnt}
        return best.best

    def _fill(self, ctx: SearchContext, required: list[Constraint], best: "_Best", it: int) -> None:
        """Grow the most accurate feasible samples that leave part of the budget unused onto the
        constraint boundary along their own pruning direction (``project`` of their keep ratios:
        every group prunes in proportion to what the sample pruned, less of it), and score them.
        A constraint is met with slack as often as not, and the unused budget is accuracy left
        behind; one evaluation each, at most ``fill``, only from the evaluations left."""
        ev = ctx.evaluator
        limit = int(self.params["fill"])
        if limit < 1 or best.best is None:
            return
        pool = {tuple(c.counts): c for c in ev.candidates if best.feasible(c)}
        grown_from = 0
        for cand in sorted(pool.values(), key=lambda c: (-c.score, c.cost, c.id)):
            if grown_from >= limit or (ev.remaining is not None and ev.remaining < 1):
                break
            try:
                counts = project(ctx, np.asarray(cand.keep_ratios), required)
            except PrunerError:  # this direction cannot reach the boundary: leave the sample as it is
                continue
            if tuple(counts) in pool or sum(counts) <= sum(cand.counts):  # already on the boundary
                continue
            grown = ev.evaluate(counts, step=it, meta={"strategy": self.name, "filled_from": cand.id})
            pool.setdefault(tuple(grown.counts), grown)
            best.consider(grown)
            grown_from += 1


class _Best:
    """The highest-scoring (then cheapest) candidate that meets the run's budget and every required constraint."""

    def __init__(self, ctx: SearchContext, required: list[Constraint]):
        self.ctx = ctx
        self.required = required
        self.best: Candidate | None = None

    def feasible(self, cand: Candidate) -> bool:
        return self.ctx.feasible(cand) and all(c.feasible(c.fn(cand.counts)) for c in self.required)

    def consider(self, cand: Candidate) -> None:
        best = self.best
        if self.feasible(cand) and (best is None or (cand.score, -cand.cost) > (best.score, -best.cost)):
            self.best = cand


def _emit_iteration(ctx: SearchContext, it: int, agent: LagrangianPPO, learnt: list[Constraint],
                    best: Candidate | None, lams: np.ndarray, R: np.ndarray, C: np.ndarray, tops: list[float],
                    stats: dict, greedy) -> None:
    """The update's ``constrained`` and ``step`` events."""
    first = learnt[0]
    ok = [all(c.feasible(r * c.limit) for r, c in zip(row, learnt)) for row in C]
    ctx.emit("constrained", step=it, multiplier=first.multiplier, mean_cost=float(C[:, 0].mean() * first.limit),
             budget=first.limit, cost=first.name, best_feasible_top1=None if best is None else best.top1,
             mean_reward=float(R.mean() - (lams * (C - 1.0)).sum(1).mean()), mean_top1=float(np.mean(tops)),
             lagrangian=float(R.mean() - (lams * (C.mean(0) - 1.0)).sum()), feasible_fraction=float(np.mean(ok)),
             sigma=float(agent.sigma().mean()), **stats,
             multipliers={c.name: c.multiplier for c in learnt},
             mean_costs={c.name: float(C[:, j].mean() * c.limit) for j, c in enumerate(learnt)},
             mean_keep_ratios=[float(k) for k in greedy[3]])
    ctx.emit("step", step=it, best_top1=None if best is None else best.top1,
             best_reward=float((R - (lams * (C - 1.0)).sum(1)).max()),
             mean_reward=float((R - (lams * (C - 1.0)).sum(1)).mean()),
             keep_ratios=(best.keep_ratios if best is not None else [float(k) for k in greedy[3]]))

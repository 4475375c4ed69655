"""Joint training and pruning with learnable agent guidance and alignment
(Ganjdanesh, Gao and Huang, CVPR 2024, arXiv 2403.19490), scaled down to run on a CPU.

The model's weights are trained for ``epochs`` epochs (at most ``batches_per_epoch``
batches each) while an agent chooses the structure, and the weights are pushed to agree
with it. Every epoch ``e``:

1. **observation**: statistics ``s_e`` of the current weights (per group: log mean channel
   norm relative to epoch 0 and the norms' coefficient of variation; the cross-entropy on a
   fixed fit-split batch) are encoded into the embedding ``x_e = tanh(A s_e + a)``; a GRU over
   ``x_0 .. x_e`` gives ``h_e``, the agent's representation of how the environment (the model
   being trained) has drifted. No parameter is per-epoch, so ``h_e`` comes from an encoder,
   GRU and decoder already trained on epochs ``0..e-1``.
2. **agent** (:mod:`pruner.search.joint_agent`): the paper's per-layer MDP (one keep ratio per
   group in turn; the state holds ``h_e``, the group's features, the previous actions and the
   cost left against the budget); the shared solver puts the structure on the budget. ``samples`` structures are drawn (the first is the policy mean), each scored on
   the *current* weights (physical pruning + BN recalibration + search-split top-1 = the reward).
3. **drift model**: a decoder ``D(h, keep ratios) -> reward`` is trained with the encoder and
   the GRU (``wm_steps`` Adam steps, MSE) to reconstruct every reward observed so far.
4. **policy update** (``policy_steps`` Adam steps on the agent's parameters): REINFORCE at
   ``h_e`` with the batch-mean baseline over this epoch's samples *and* (``reuse``) every
   earlier one, its reward corrected for the drift, ``r' = r - D(h_e', k) + D(h_e, k)``, and its
   term weighted by the truncated importance ratio ``min(reuse_clip, pi(u|h_e) / mu(u))``
   (``mu``: the policy that drew it). The best sample of this epoch is its structure.
5. **alignment**: the channels the structure removes (the space's own choice for the counts
   and the current ranking, :meth:`PruningSpace.kept_masks`, so each concatenated part keeps
   its best channel) get a group-lasso penalty
   ``align_weight * sum_g sum_{c removed} ||W_{g,c}||_2`` (all out-channel filters, biases,
   BN affine parameters and next-layer input slices of channel ``c``, via Torch-Pruning's
   dependency groups) added to the cross-entropy while the weights train (SGD, Nesterov,
   cosine schedule, augmentation).
6. the ranking is recomputed on the trained weights by the run's importance criterion
   (``SearchContext.importance``: l1, l2, taylor on fixed fit batches, random) and the
   evaluator switches to them (``evaluator.set_model``), so the next epoch's rewards are
   observed on the drifted model.

``init=scratch`` (the paper's setting) re-initialises every layer of the copy first (seeded);
``init=checkpoint`` trains the loaded weights.

After the last epoch the policy mean (at ``h_E``, from the trained weights' statistics) and
the last epoch's structure are scored on the trained model; the better one is returned. The
evaluator then holds the *trained* model and its ranking: the job must prune
``evaluator.model`` with ``evaluator.ranking`` (not the loaded weights) for the chosen counts.

Resume: weight training is not memoised; an interrupted run is resumed by recomputation
(the strategy is deterministic on CPU: seeded batches, agent and networks), while every
evaluation already made is served from the evaluator's memo (keys include the model
version, which replays identically).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import batches
from ..errors import CancelledError, PrunerError
from ..pruning.importance import CRITERIA, channel_scores, ranking_from_scores
from ..pruning.space import build_graph
from ..settings import native_bf16
from .base import Param, SearchContext, Strategy, register
from .evaluator import Candidate
from .joint_agent import LayerAgent


class DriftModel(nn.Module):
    """The agent's view of the drift: a GRU over per-epoch embeddings of *observed* statistics of
    the weights, and a reward decoder ``D(h, keep ratios)``.

    Epoch ``e``'s embedding is ``x_e = tanh(A s_e + a)``, with ``s_e`` the statistics observed at the
    start of epoch ``e`` (:meth:`JointPruning._observe`). There is no free per-epoch parameter: the
    encoder, GRU and decoder are trained on the rewards of epochs ``0..e-1``, so ``h_e`` is meaningful
    before any of epoch ``e``'s rewards is seen.
    """

    def __init__(self, features: int, groups: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(features, hidden, dtype=torch.float64), nn.Tanh())
        self.gru = nn.GRU(hidden, hidden, batch_first=True, dtype=torch.float64)
        self.decoder = nn.Sequential(nn.Linear(hidden + groups, hidden, dtype=torch.float64), nn.Tanh(),
                                     nn.Linear(hidden, 1, dtype=torch.float64))

    def states(self, stats: torch.Tensor) -> torch.Tensor:
        """GRU states ``h_0 .. h_T`` (one row per epoch) for the statistics ``stats`` (``T+1`` rows)."""
        out, _ = self.gru(self.encoder(stats).unsqueeze(0))
        return out[0]

    def predict(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([h, keep], -1)).squeeze(-1)


@dataclass
class Sample:
    """One scored structure: the epoch it was drawn in, the agent's raw actions ``u`` and its step
    features, its keep ratios, the observed reward and the log-density of
    ``u`` under the policy that drew it."""

    epoch: int
    u: np.ndarray
    feats: np.ndarray
    keep: np.ndarray
    reward: float
    logp: float


class GroupLasso:
    """Per-channel L2 norms over every parameter slice a channel group touches."""

    def __init__(self, model: nn.Module, space, device: torch.device):
        graph = build_graph(model, torch.randn(1, *space.input_size, device=device))
        modules = dict(model.named_modules())
        self.parts: list[list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]] = []
        self.channels = [g.channels for g in space.groups]
        for g in space.groups:
            root = modules[g.name]
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                            list(range(g.channels)))
            parts, seen = [], set()
            for item in group:
                dep, idxs = item.dep, item.idxs
                root_idxs = getattr(item, "root_idxs", None) or idxs
                mod = dep.target.module
                if len(idxs) != len(root_idxs):
                    continue
                tidx = torch.tensor([int(i) for i in idxs], device=device)
                ridx = torch.tensor([int(i) for i in root_idxs], device=device)
                if graph.is_out_channel_pruning_fn(dep.handler):
                    if isinstance(mod, (nn.Conv2d, nn.Conv1d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                        for p in (mod.weight, getattr(mod, "bias", None)):
                            if p is not None and p.requires_grad and (id(p), 0) not in seen:
                                seen.add((id(p), 0))
                                parts.append((p, 0, tidx, ridx))
                elif graph.is_in_channel_pruning_fn(dep.handler):
                    if isinstance(mod, (nn.Conv2d, nn.Conv1d)) and mod.groups == 1 or isinstance(mod, nn.Linear):
                        if (id(mod.weight), 1) not in seen and int(tidx.max()) < mod.weight.shape[1]:
                            seen.add((id(mod.weight), 1))
                            parts.append((mod.weight, 1, tidx, ridx))
            self.parts.append(parts)

    def norms(self, gi: int) -> torch.Tensor:
        sq = None
        for p, dim, tidx, ridx in self.parts[gi]:
            sl = p.index_select(dim, tidx).pow(2)
            other = [d for d in range(sl.dim()) if d != dim]
            v = sl.sum(dim=other) if other else sl
            if sq is None:
                sq = torch.zeros(self.channels[gi], device=v.device, dtype=v.dtype)
            sq = sq.index_add(0, ridx, v)
        if sq is None:
            return torch.zeros(self.channels[gi])
        return torch.sqrt(sq + 1e-12)

    def penalty(self, removed: list[torch.Tensor]) -> torch.Tensor:
        total = None
        for gi, idx in enumerate(removed):
            if len(idx) == 0 or not self.parts[gi]:
                continue
            term = self.norms(gi)[idx].sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())


@dataclass
class _Run:
    """What one joint search carries from epoch to epoch."""

    model: nn.Module
    drift: DriftModel
    agent: LayerAgent
    wm_opt: torch.optim.Optimizer
    pi_opt: torch.optim.Optimizer
    min_log_sigma: float
    lasso: GroupLasso
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    per_epoch: int
    ranking: list[torch.Tensor]
    probe: tuple[torch.Tensor, torch.Tensor]          # fixed fit-split batch: the loss statistic
    taylor: list | None                                # fixed batches for a taylor re-ranking
    base_log_norm: torch.Tensor | None = None         # per-group log mean channel norm at epoch 0
    stats: list[torch.Tensor] = field(default_factory=list)   # s_0 .. s_e, observed at each epoch's start


@register
class JointPruning(Strategy):
    name = "joint"
    #: structures scored on the trained weights at the end: the policy mean and the last epoch's structure
    FINAL_STRUCTURES: ClassVar[int] = 2

    param_specs = {
        "epochs": Param(3, int, "training epochs (one agent decision per epoch)", low=1, high=1000),
        "batches_per_epoch": Param(20, int, "cap on training batches per epoch (0 = the whole fit split)", low=0),
        "batch_size": Param(64, int, "training batch size", low=1, high=65536),
        "lr": Param(0.01, float, "SGD (Nesterov, cosine) learning rate for the weights", low=0.0, high=10.0,
                    low_open=True),
        "momentum": Param(0.9, float, "SGD momentum", low=0.0, high=1.0, high_open=True),
        "weight_decay": Param(5e-4, float, "SGD weight decay", low=0.0, high=1.0),
        "align_weight": Param(0.1, float, "group-lasso weight on the channels the agent removes", low=0.0),
        "init": Param("checkpoint", str, "checkpoint: train the loaded weights; scratch: re-initialise them first "
                      "(the paper's setting)", choices=("checkpoint", "scratch")),
        "samples": Param(0, int, "structures scored per epoch; 0 = spread --search-evals (at most 8)", low=0,
                         high=256),
        "hidden": Param(16, int, "GRU / embedding / decoder width", low=1, high=1024),
        "wm_steps": Param(50, int, "Adam steps of the drift model per epoch", low=0, high=100000),
        "wm_lr": Param(0.01, float, "Adam learning rate of the drift model", low=0.0, high=1.0, low_open=True),
        "policy_steps": Param(5, int, "Adam steps of the policy per epoch", low=0, high=10000),
        "policy_lr": Param(0.1, float, "Adam learning rate of the policy", low=0.0, high=10.0, low_open=True),
        "sigma": Param(0.5, float, "initial exploration std of the agent's actions a "
                       "(keep = floor + (1 - floor) sigmoid(3a))", low=0.0, high=5.0, low_open=True),
        "min_sigma": Param(0.05, float, "exploration std floor", low=0.0, high=5.0, low_open=True),
        "reuse": Param(True, bool, "policy updates also use earlier epochs' samples, rewards drift-corrected "
                       "(false: the current epoch's samples only)"),
        "reuse_clip": Param(2.0, float, "cap on an earlier sample's importance weight pi(u|h_e)/mu(u) "
                            "(0 = no importance weighting)", low=0.0, high=100.0),
    }

    @classmethod
    def check_evaluations(cls, evals, params) -> None:
        """One structure per epoch and one on the trained model: at least ``epochs + 1`` evaluations."""
        epochs = int(params.get("epochs", cls.param_specs["epochs"].default))
        if evals is not None and evals < epochs + 1:
            raise PrunerError(f"joint needs at least epochs + 1 = {epochs + 1} evaluations (one structure per epoch "
                              f"and one on the trained model); raise --search-evals to {epochs + 1} or lower "
                              f"epochs (now {evals})")

    # ------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Candidate:
        """Train the weights for ``epochs`` epochs under the agent's structures, then score the final ones."""
        ev = ctx.evaluator
        E = int(self.params["epochs"])
        if ctx.importance not in CRITERIA:
            raise PrunerError(f"joint cannot re-rank channels by {ctx.importance!r}; use one of {', '.join(CRITERIA)}")
        K = self._samples_per_epoch(ev, E)
        rng = ctx.rng(53)
        run = self._setup(ctx, E)
        history: list[Sample] = []
        chosen: Candidate | None = None
        for epoch in range(E):
            chosen = self._epoch(ctx, run, epoch, K, rng, history)
        return self._final(ctx, run, E, chosen)

    def _samples_per_epoch(self, ev, E: int) -> int:
        """Structures scored per epoch (``samples``, or spread over the evaluations left)."""
        remaining = ev.remaining
        if remaining is not None and remaining < E + 1:
            raise PrunerError(f"joint needs at least epochs + 1 = {E + 1} evaluations (one structure per epoch and "
                              f"one on the trained model); raise --search-evals or lower epochs (now {remaining} left)")
        return self.samples_per_epoch({**self.params, "epochs": E}, remaining)

    @classmethod
    def samples_per_epoch(cls, params: dict, evals: int | None) -> int:
        """The one rule for the structures scored per epoch (``params``: all of joint's parameters):
        ``samples``, or with ``samples=0`` the evaluations ``evals`` spread over the epochs (at most 8
        each, two kept for the final scoring); always leaving one evaluation for the final scoring."""
        E = int(params["epochs"])
        K = int(params["samples"]) or (max(1, min(8, (evals - 2) // E)) if evals is not None else 4)
        if evals is not None:
            K = max(1, min(K, (evals - 1) // E))
        return K

    @classmethod
    def training_batches(cls, params: dict, fit_images: int) -> int:
        """Training batches per epoch: ceil(fit images / ``batch_size``), capped by ``batches_per_epoch``
        when it is not 0 (``params``: all of joint's parameters)."""
        per_epoch = math.ceil(int(fit_images) / int(params["batch_size"]))
        if int(params["batches_per_epoch"]):
            per_epoch = min(per_epoch, int(params["batches_per_epoch"]))
        return per_epoch

    def _setup(self, ctx: SearchContext, E: int) -> "_Run":
        """The model being trained (a copy), the drift model, the policy, the optimisers and the ranking."""
        p = self.params
        ev = ctx.evaluator
        space = ctx.space
        n = len(space)
        device = ev.device
        data = ev.data
        # the model being trained: a copy (the loaded model stays untouched)
        model = copy.deepcopy(ev.model).to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed) * 1000 + 53)
            if p["init"] == "scratch":
                for m in model.modules():
                    if hasattr(m, "reset_parameters") and m is not model:
                        m.reset_parameters()
            drift = DriftModel(2 * n + 1, n, int(p["hidden"]))
            agent = LayerAgent(space, ctx.budget, hidden=int(p["hidden"]), sigma=float(p["sigma"]))
        wm_opt = torch.optim.Adam(drift.parameters(), lr=float(p["wm_lr"]))
        pi_opt = torch.optim.Adam(agent.parameters(), lr=float(p["policy_lr"]))
        min_log_sigma = math.log(float(p["min_sigma"]))

        lasso = GroupLasso(model, space, device)
        opt = torch.optim.SGD(model.parameters(), lr=float(p["lr"]), momentum=float(p["momentum"]),
                              weight_decay=float(p["weight_decay"]), nesterov=float(p["momentum"]) > 0)
        per_epoch = self.training_batches(p, len(data.fit))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, E * per_epoch))
        probe = next(batches(data.fit.subset(min(128, len(data.fit))), 128, mean=data.mean, std=data.std,
                             device=device))
        taylor = None
        if ctx.importance == "taylor":   # the session's recipe: 256 shuffled fit images, batches of 64
            gen = torch.Generator().manual_seed(int(ctx.seed))
            taylor = list(batches(data.fit.subset(min(256, len(data.fit))), 64, mean=data.mean, std=data.std,
                                  device=device, shuffle=True, generator=gen))
        run = _Run(model, drift, agent, wm_opt, pi_opt, min_log_sigma, lasso, opt, sched, per_epoch,
                   [r.clone() for r in ev.ranking], probe, taylor)
        if p["init"] == "scratch":
            run.ranking = self._rank(ctx, run)
            ev.set_model(model, run.ranking)
        return run

    def _rank(self, ctx: SearchContext, run: "_Run") -> list[torch.Tensor]:
        """The channel ranking of the weights being trained, by the run's importance criterion."""
        scores = channel_scores(run.model, ctx.space, ctx.importance, batches=run.taylor, seed=int(ctx.seed))
        return ranking_from_scores(scores)

    @staticmethod
    def _observe(run: "_Run") -> torch.Tensor:
        """Statistics of the current weights, the drift model's input for this epoch: per group the log
        mean channel norm (relative to epoch 0) and the norms' coefficient of variation, and the
        cross-entropy on a fixed fit-split batch."""
        model = run.model
        with torch.no_grad():
            norms = [run.lasso.norms(gi).double().cpu() for gi in range(len(run.lasso.channels))]
            log_norm = torch.stack([n.mean().clamp_min(1e-12).log() for n in norms])
            if run.base_log_norm is None:
                run.base_log_norm = log_norm
            cv = torch.stack([n.std(unbiased=False) / n.mean().clamp_min(1e-12) for n in norms])
            was = model.training
            model.eval()
            ce = F.cross_entropy(model(run.probe[0]), run.probe[1]).double().cpu().reshape(1)
            model.train(was)
        return torch.cat([log_norm - run.base_log_norm, cv, ce])

    def _epoch(self, ctx: SearchContext, run: "_Run", epoch: int, K: int, rng, history: list) -> Candidate:
        """One epoch: observe the weights, score ``K`` structures, fit the drift model and the policy, train
        the weights towards the best structure, switch the evaluator to them; returns that structure."""
        p = self.params
        ev = ctx.evaluator
        run.stats.append(self._observe(run))
        with torch.no_grad():
            h = run.drift.states(torch.stack(run.stats))[epoch]
        draws, logps, cands, rewards = self._score_samples(ctx, run, h, epoch, K, rng)
        best_k = int(np.argmax(rewards))
        chosen = cands[best_k]
        with torch.no_grad():
            predicted = float(run.drift.predict(h, torch.tensor(chosen.keep_ratios, dtype=torch.float64)))
        history.extend(Sample(epoch, d.u, d.feats, np.array(c.keep_ratios), float(r), lp)
                       for d, lp, c, r in zip(draws, logps, cands, rewards))
        wm_loss = self._fit_drift(run.drift, run.wm_opt, history, torch.stack(run.stats), int(p["wm_steps"]))
        reused = self._update_policy(run, history, epoch)
        ce_mean, pen_mean, removed_norm = self._train_weights(ctx, run, chosen, epoch)
        ctx.emit("joint", epoch=epoch, predicted_reward=predicted, observed_reward=float(rewards[best_k]),
                 loss=ce_mean + float(p["align_weight"]) * pen_mean, ce=ce_mean, penalty=pen_mean,
                 removed_norm_after=removed_norm, keep_ratios=chosen.keep_ratios, samples=K, reused=reused,
                 mean_reward=float(rewards.mean()), sigma=float(run.agent.log_sigma.detach().exp().mean()),
                 drift_loss=wm_loss, model_version=ev.model_version)
        ctx.emit("step", step=epoch, best_top1=chosen.top1, best_reward=float(rewards.max()),
                 mean_reward=float(rewards.mean()), keep_ratios=chosen.keep_ratios)
        return chosen

    def _score_samples(self, ctx: SearchContext, run: "_Run", h: torch.Tensor, epoch: int, K: int, rng):
        """Draw ``K`` structures from the agent (the first is the policy mean) and score them on the current
        weights; returns the draws, their log-densities under the policy, the candidates and the rewards."""
        ev = ctx.evaluator
        draws = run.agent.draw(h, rng, K)
        with torch.no_grad():
            U = torch.tensor(np.stack([d.u for d in draws]), dtype=torch.float64)
            logps = run.agent.log_prob(h, U, [d.feats for d in draws]).tolist()
        batch = [ev.solve(d.allocation).counts for d in draws]
        cands = ev.evaluate_many(batch, step=epoch, metas=[{"strategy": self.name, "epoch": epoch, "sample": k}
                                                           for k in range(len(batch))])
        rewards = np.array([c.score / 100.0 for c in cands])
        return draws, logps, cands, rewards

    def _policy_batch(self, run: "_Run", history: list, epoch: int):
        """The samples the policy update at epoch ``epoch`` learns from: (actions, step features, rewards,
        behaviour log-densities, whether each is from an earlier epoch).

        With ``reuse``, every earlier sample comes back with its reward corrected for the drift the
        model has learnt: ``r' = r - D(h_e', k) + D(h_e, k)`` (what it would have scored now, by the
        decoder); without it, only this epoch's samples."""
        mine = [s for s in history if s.epoch == epoch or (self.params["reuse"] and s.epoch < epoch)]
        U = torch.tensor(np.stack([s.u for s in mine]), dtype=torch.float64)
        R = torch.tensor([s.reward for s in mine], dtype=torch.float64)
        old = torch.tensor([s.epoch < epoch for s in mine])
        logmu = torch.tensor([s.logp for s in mine], dtype=torch.float64)
        if bool(old.any()):
            with torch.no_grad():
                H = run.drift.states(torch.stack(run.stats))
                keep = torch.tensor(np.stack([s.keep for s in mine]), dtype=torch.float64)
                then = H[torch.tensor([s.epoch for s in mine])]
                shift = run.drift.predict(H[epoch].expand_as(then), keep) - run.drift.predict(then, keep)
            R = torch.where(old, R + shift, R)
        return U, [s.feats for s in mine], R, logmu, old

    def _update_policy(self, run: "_Run", history: list, epoch: int) -> int:
        """REINFORCE on the GRU state ``h_e`` with the batch-mean baseline, over :meth:`_policy_batch`.

        An earlier epoch's sample was drawn by an earlier policy: its term is weighted by
        ``min(reuse_clip, pi(u | h_e) / mu(u))`` (truncated importance sampling; 1 for this epoch's
        samples, and for all with ``reuse_clip = 0``), the weights normalised to sum to the batch size.
        Returns how many earlier samples took part."""
        U, feats, R, logmu, old = self._policy_batch(run, history, epoch)
        r = R.numpy()
        if len(r) < 2 or r.std() <= 1e-12:
            return 0
        adv = torch.tensor((r - r.mean()) / r.std(), dtype=torch.float64)
        with torch.no_grad():
            h = run.drift.states(torch.stack(run.stats))[epoch]
        clip = float(self.params["reuse_clip"])
        for _ in range(int(self.params["policy_steps"])):
            logp = run.agent.log_prob(h, U, feats)
            w = torch.ones_like(logp)
            if clip > 0 and bool(old.any()):
                ratio = (logp.detach() - logmu).clamp(max=math.log(clip)).exp()
                w = torch.where(old, ratio, w)
            loss = -(w * adv * logp).sum() / w.sum()
            run.pi_opt.zero_grad()
            loss.backward()
            run.pi_opt.step()
            with torch.no_grad():
                run.agent.log_sigma.clamp_(run.min_log_sigma, math.log(5.0))
        return int(old.sum())

    @staticmethod
    def removed_channels(space, ranking, counts) -> list[torch.Tensor]:
        """Per group, the channels the surgery removes for ``counts`` with ``ranking``: the space's own
        choice (:meth:`PruningSpace.kept_masks`), so the protection of each concatenated part's best
        channel holds here too."""
        space.set_ranking(ranking)
        return [(~kept).nonzero().flatten() for kept in space.kept_masks(counts)]

    def _train_weights(self, ctx: SearchContext, run: "_Run", chosen: Candidate, epoch: int):
        """Train the weights towards the chosen structure (cross-entropy + group lasso on the channels it
        removes), re-rank and switch the evaluator to them; returns (mean ce, mean penalty, removed norm)."""
        p = self.params
        ev = ctx.evaluator
        device = ev.device
        data = ev.data
        model = run.model
        removed = [idx.to(device) for idx in self.removed_channels(ctx.space, run.ranking, chosen.counts)]
        ce_sum, pen_sum, seen = 0.0, 0.0, 0
        amp = native_bf16(device)   # bf16 autocast where it is native, as fine-tuning does
        model.train()
        gen = torch.Generator().manual_seed(int(ctx.seed) * 1000 + epoch)
        for i, (x, y) in enumerate(batches(data.fit, int(p["batch_size"]), mean=data.mean, std=data.std,
                                           device=device, shuffle=True, augment=True, generator=gen,
                                           drop_last=len(data.fit) > int(p["batch_size"]))):
            if i >= run.per_epoch:
                break
            if ev.should_stop():
                raise CancelledError("search cancelled")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                ce = F.cross_entropy(model(x).float(), y)
            pen = run.lasso.penalty(removed) if float(p["align_weight"]) > 0 else torch.zeros((), device=device)
            loss = ce + float(p["align_weight"]) * pen
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
            run.sched.step()
            ce_sum += float(ce.detach()) * y.numel()
            pen_sum += float(pen.detach()) * y.numel()
            seen += y.numel()
        model.eval()
        run.ranking = self._rank(ctx, run)
        ev.set_model(model, run.ranking)
        with torch.no_grad():
            removed_norm = float(sum(run.lasso.norms(gi)[idx].sum() for gi, idx in enumerate(removed) if len(idx)))
        return ce_sum / max(1, seen), pen_sum / max(1, seen), removed_norm

    def _final(self, ctx: SearchContext, run: "_Run", E: int, chosen: Candidate | None) -> Candidate:
        """The final structure, scored on the trained weights: the policy mean at ``h_E`` (the state of
        the trained weights' statistics) and the last epoch's structure; the better feasible one."""
        ev = ctx.evaluator
        run.stats.append(self._observe(run))
        with torch.no_grad():
            h = run.drift.states(torch.stack(run.stats))[E]
        finals = [ev.solve(run.agent.draw(h, None, 1)[0].allocation).counts]
        if chosen is not None and chosen.counts != finals[0]:
            finals.append(chosen.counts)
        out: list[Candidate] = []
        for k, counts in enumerate(finals):
            if ev.remaining is not None and ev.remaining < 1:
                break
            out.append(ev.evaluate(counts, step=E, meta={"strategy": self.name, "epoch": E, "final": True,
                                                         "source": "policy mean" if k == 0 else "last structure"}))
        feasible = [c for c in out if ctx.feasible(c)]
        if not feasible:
            raise PrunerError("joint found no structure meeting the budget on the trained model; raise --search-evals")
        return max(feasible, key=lambda c: (c.score, -c.cost))

    @staticmethod
    def _fit_drift(drift: DriftModel, opt, history: list, stats: torch.Tensor, steps: int) -> float:
        """Fit encoder, GRU and decoder to every reward seen so far (MSE)."""
        ep = torch.tensor([s.epoch for s in history])
        keep = torch.tensor(np.stack([s.keep for s in history]), dtype=torch.float64)
        target = torch.tensor([s.reward for s in history], dtype=torch.float64)
        loss_v = float("nan")
        for _ in range(steps):
            H = drift.states(stats)
            loss = F.mse_loss(drift.predict(H[ep], keep), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_v = loss.item()
        return loss_v

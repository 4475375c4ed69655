"""Channel importance inside each group: L1, L2, first-order Taylor, random.

Scores come from Torch-Pruning's group importance estimators, which aggregate over every
layer of a dependency group (so a residual channel is judged by all convs that share it).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import PrunerError
from .space import PruningSpace, build_graph

CRITERIA = ("l1", "l2", "taylor", "random")


def _estimator(criterion: str, seed: int) -> Callable:
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=None)
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return lambda group: torch.rand(len(group[0].idxs), generator=gen)
    raise PrunerError(f"unknown importance criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def channel_scores(model: nn.Module, space: PruningSpace, criterion: str = "l1", *,
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                   seed: int = 0) -> list[torch.Tensor]:
    """One score per channel for every group of ``space`` (higher = more important).

    ``taylor`` needs ``batches`` of (inputs, labels): gradients of the cross-entropy are
    accumulated on them first. The model's parameters are left unchanged (gradients are
    cleared afterwards).
    """
    estimator = _estimator(criterion, seed)
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters())).device
    try:
        if criterion == "taylor":
            if batches is None:
                raise PrunerError("the taylor criterion needs data: pass a few training batches")
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                for x, y in batches:
                    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        graph = build_graph(model, torch.randn(1, *space.input_size, device=device))
        modules = dict(model.named_modules())
        scores = []
        for g in space.groups:
            root = modules[g.name]
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(range(g.channels)))
            with torch.no_grad():
                s = estimator(group)
            if s is None:  # Torch-Pruning returns None for groups it cannot score
                s = torch.zeros(g.channels)
            scores.append(torch.nan_to_num(s.detach().float().cpu(), nan=0.0))
        return scores
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def ranking_from_scores(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Channel indices of each group from least to most important (stable order for ties)."""
    return [torch.argsort(s, stable=True) for s in scores]

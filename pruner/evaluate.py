"""Accuracy and batch-norm recalibration of a (pruned) model on uint8 image tensors."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from .data import ImageTensors, batches


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.inference_mode()
def accuracy(model: nn.Module, data: ImageTensors, *, mean, std, device="cpu", batch_size: int = 500) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent; the model is put in eval mode (and restored)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    try:
        for x, y in batches(data, batch_size, mean=mean, std=std, device=device):
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                logits = model(x)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top.eq(y.view(-1, 1))
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        return {"top1": 0.0, "top5": 0.0}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


@contextmanager
def bn_recalibration(model: nn.Module) -> Iterator[bool]:
    """Inside: every BatchNorm of ``model`` has fresh running statistics, accumulated as a
    cumulative average over the forward passes made (train mode for BN only, no weight
    updates); afterwards momentum and the model's mode are restored. Yields whether the model
    has BatchNorms at all."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the recalibration batches
    model.eval()
    for m in bns:
        m.train()
    try:
        with torch.no_grad():
            yield bool(bns)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        model.train(was_training)


def recalibrate_bn(model: nn.Module, data: ImageTensors, *, mean, std, device="cpu",
                   images: int = 512, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images`` training images.

    Physical pruning removes channels that downstream layers' statistics were computed
    with, so stale running means/vars cost a lot of accuracy; a forward pass over a few
    hundred images in train mode (cumulative averaging, no weight updates) restores most
    of it.
    """
    if images <= 0:
        return model
    device = torch.device(device)
    with bn_recalibration(model) as has_bn:
        if has_bn:
            for x, _ in batches(data.subset(min(images, len(data))), batch_size, mean=mean, std=std, device=device):
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                model(x)
    return model
